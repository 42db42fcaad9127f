"""stages.network."""
