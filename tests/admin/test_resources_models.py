"""The SQLAlchemy models of the resource tables match what sql/ creates: same columns, nullability and
foreign keys (the models never create tables, so a drift would only show as errors at run time)."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from sqlalchemy import Table

from admin.models.resources import ResourceAllocation, ResourcePool


def assert_model_matches_table(pg: psycopg.Connection[Any], table: Table) -> None:
    """Columns, NOT NULL and foreign-key targets of `table` (a model's) equal the database's."""
    db_columns = {name: nullable == "YES" for name, nullable in pg.execute(
        "SELECT column_name, is_nullable FROM information_schema.columns"
        " WHERE table_schema = 'public' AND table_name = %s", (table.name,)).fetchall()}
    model_columns = {c.name: bool(c.nullable) for c in table.columns}
    assert model_columns == db_columns
    db_fks = set(pg.execute(
        "SELECT kcu.column_name, ccu.table_name FROM information_schema.table_constraints tc"
        " JOIN information_schema.key_column_usage kcu USING (constraint_schema, constraint_name)"
        " JOIN information_schema.constraint_column_usage ccu USING (constraint_schema, constraint_name)"
        " WHERE tc.constraint_type = 'FOREIGN KEY' AND tc.table_name = %s", (table.name,)).fetchall())
    model_fks = {(fk.parent.name, fk.column.table.name) for fk in table.foreign_keys}
    assert model_fks == db_fks


@pytest.mark.parametrize("model", [ResourcePool, ResourceAllocation], ids=lambda m: m.__tablename__)
def test_resource_models_match_the_schema(pg: psycopg.Connection[Any], model: Any) -> None:
    assert_model_matches_table(pg, model.__table__)
