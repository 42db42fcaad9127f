"""stages.model."""
