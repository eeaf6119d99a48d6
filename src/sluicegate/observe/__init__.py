"""Metrics, usage records and structured logs, kept off the hot path."""
