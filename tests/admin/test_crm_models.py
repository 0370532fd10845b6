"""The SQLAlchemy models of the CRM tables match what sql/ creates."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from test_resources_models import assert_model_matches_table

from admin.models.crm import Activity, Contact, Institution


@pytest.mark.parametrize("model", [Institution, Contact, Activity], ids=lambda m: m.__tablename__)
def test_crm_models_match_the_schema(pg: psycopg.Connection[Any], model: Any) -> None:
    assert_model_matches_table(pg, model.__table__)
