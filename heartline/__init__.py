"""Heartline kernel: settings, the Redis session plane, database access, the dev stack and the CLI."""

__version__ = "0.1.0"
