"""Provider adapters: one per upstream API. They know formats, not policies."""
