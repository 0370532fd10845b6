"""The admin's SQLAlchemy models match the tables that sql/ creates (sql/ is the source of truth)."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from admin.config import sqlalchemy_url
from admin.models import core, webhooks  # noqa: F401 - registers the models on Base
from admin.models.base import Base


def test_every_model_column_exists_with_its_type_and_nullability(database_url: str) -> None:
    engine = sa.create_engine(sqlalchemy_url(database_url))
    try:
        inspector = sa.inspect(engine)
        for table in Base.metadata.sorted_tables:
            db_columns: dict[str, Any] = {c["name"]: c for c in inspector.get_columns(table.name)}
            assert set(db_columns) == {c.name for c in table.columns}, table.name
            for column in table.columns:
                db_column = db_columns[column.name]
                assert column.nullable == db_column["nullable"] or column.primary_key, \
                    (table.name, column.name)
                model_type = column.type.compile(dialect=engine.dialect)
                db_type = db_column["type"].compile(dialect=engine.dialect)
                assert _same_type(model_type, db_type), (table.name, column.name, model_type, db_type)
            db_pk = inspector.get_pk_constraint(table.name)["constrained_columns"]
            assert set(db_pk) == {c.name for c in table.primary_key}, table.name
    finally:
        engine.dispose()


def _same_type(model: str, db: str) -> bool:
    aliases = {"TEXT": "TEXT", "VARCHAR": "TEXT", "BYTEA": "BYTEA", "TIMESTAMP WITH TIME ZONE": "TIMESTAMPTZ",
               "TIMESTAMPTZ": "TIMESTAMPTZ"}
    return aliases.get(model, model) == aliases.get(db, db)


def test_the_admin_never_creates_business_tables() -> None:
    from flask_appbuilder import Model

    assert not set(Base.metadata.tables) & set(Model.metadata.tables)
