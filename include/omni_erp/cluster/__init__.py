"""Scale-out on the CeleryExecutor: the shared deployment settings (``config``) and ``make cluster`` (``python -m omni_erp.cluster``)."""
