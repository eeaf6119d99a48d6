"""HTTP server: routes, auth, validation, error mapping. Knows HTTP, not providers."""
