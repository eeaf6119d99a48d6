"""One request's life: route -> admit -> attempt(s) -> pump -> account. Knows policies, not formats."""
