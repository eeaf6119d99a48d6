"""A fast OpenAI-compatible mock upstream for tests, benchmarks and chaos testing."""
