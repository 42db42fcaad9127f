"""stages.python_env."""
