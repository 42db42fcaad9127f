"""Typed, validated configuration (pure: no pyinfra import)."""
