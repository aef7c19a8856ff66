"""The chaos table's arithmetic: duplicates, one-to-one mismatches, and which figures decide the exit status."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from omni_erp.chaos.report import ChaosReport, Figure, _extras, _mismatch_figure


@settings(max_examples=50, deadline=None)
@given(st.lists(st.sampled_from(["SO-1", "SO-2", "SO-3", "SO-4"]), max_size=12))
def test_extras_count_every_entry_beyond_the_first_of_its_key(keys: list[str]) -> None:
    assert _extras(keys) == len(keys) - len(set(keys))


@settings(max_examples=50, deadline=None)
@given(st.sets(st.integers(0, 20)), st.sets(st.integers(0, 20)))
def test_one_to_one_mismatch_is_the_symmetric_difference(left: set[int], right: set[int]) -> None:
    value, must_be_zero, detail = _mismatch_figure(left, right)

    assert must_be_zero
    assert value == len(left - right) + len(right - left)
    assert (detail == "") == (left == right)


def test_only_a_nonzero_must_be_zero_figure_fails_the_run() -> None:
    informative = Figure("identical re-sends Omni received", 7)
    clean = ChaosReport([("Must be zero", [Figure("duplicate ERP documents", 0, True)]), ("Info", [informative])], [])
    broken = ChaosReport([("Must be zero", [Figure("duplicate ERP documents", 2, True, "sales orders per order 2")])], [])

    assert clean.ok and "OK: every zero is zero." in clean.render()
    assert not broken.ok
    assert "FAIL duplicate ERP documents" in broken.render()
    assert broken.render().endswith("FAILED: duplicate ERP documents")
