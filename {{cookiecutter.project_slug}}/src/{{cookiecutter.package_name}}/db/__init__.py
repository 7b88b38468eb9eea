"""The database layer: engine, sessions, models, and the embedded PostgreSQL for development."""
