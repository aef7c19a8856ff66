"""The closed set of DAG tags; a typo raises instead of creating a new tag."""

from __future__ import annotations

from enum import Enum


class InvalidTagError(ValueError):
    """Raised when a tag outside the closed set is requested."""


class _TagEnum(str, Enum):
    def __str__(self) -> str:
        return self.value


class Tag:
    """Namespaced tags: ``Tag.Flow.f1`` is ``"flow/f1"``."""

    class Flow(_TagEnum):
        f1 = "flow/f1"
        f2 = "flow/f2"
        f3 = "flow/f3"
        f4 = "flow/f4"
        f5 = "flow/f5"
        f6 = "flow/f6"
        reconciliation = "flow/reconciliation"  # the reconciliation report and the business SLA watch (issue 10)

    class System(_TagEnum):
        omni = "system/omni"
        erp = "system/erp"

    class Impact(_TagEnum):
        tier_1 = "impact/tier_1"
        tier_2 = "impact/tier_2"

    @classmethod
    def all(cls) -> set[str]:
        return {t.value for group in (cls.Flow, cls.System, cls.Impact) for t in group}

    @classmethod
    def get(cls, value: str) -> str:
        if value not in cls.all():
            raise InvalidTagError(f"unknown tag {value!r}; known: {sorted(cls.all())}")
        return value
