"""Typed configuration: pydantic models, YAML loading, ${VAR} expansion, precise errors."""
