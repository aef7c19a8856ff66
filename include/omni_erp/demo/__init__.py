"""``make demo``: every flow on one machine, on the embedded defaults, ending in reconciliations and invariants."""
