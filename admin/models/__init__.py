"""SQLAlchemy 2 models mapped onto the tables that sql/ creates (never used to create them)."""
