"""``make chaos``: the whole order life cycle through all five DAGs while the ERP, Omni, the ledger and the task processes fail."""
