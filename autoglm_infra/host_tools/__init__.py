"""Programs shipped to hosts and run there with the host's own python3 (stdlib only)."""
