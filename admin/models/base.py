"""The declarative base of the business models.

Kept apart from FAB's own `Model` metadata on purpose: FAB runs `create_all` on its metadata for its
ab_* tables, and sql/ alone creates business tables.
"""

from __future__ import annotations

from sqlalchemy.orm import DeclarativeBase


class Base(DeclarativeBase):
    pass
