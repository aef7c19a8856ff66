"""HTTP hooks, one per external system: OmniHook (Increff ajio-vms) and ErpHook (the seller's ERP)."""
