"""stages.docker."""
