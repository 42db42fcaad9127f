"""stages.nvidia."""
