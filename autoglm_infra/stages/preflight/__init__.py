"""stages.preflight."""
