"""The thin pyinfra layer: facts, operations and glue that turn plans into operations."""
