"""Shared counters, semaphores and budgets: in-memory (default) or Redis (cluster-wide)."""
