"""The MongoDB store: one repository module over PyMongo's async client, and the embedded server."""
