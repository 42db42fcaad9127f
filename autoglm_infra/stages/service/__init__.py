"""stages.service."""
