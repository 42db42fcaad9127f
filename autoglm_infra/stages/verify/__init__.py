"""stages.verify."""
