"""Search filters for the PostgreSQL column types Flask-AppBuilder does not know: UUID (session tokens,
borrow ids), INET (client addresses) and ARRAY (a webhook endpoint's event types).

FAB builds filters for every column of a model and logs a warning for each one it cannot handle, on
every screen that uses the model; its search form logs an error for such a column.  `HeartlineInterface`
(admin/views/base.py) uses `FilterConverter` below, whose filters parse what the admin typed and match
nothing when it is not a token / an address (never a database error), and lets forms treat these columns
as text.
"""

from __future__ import annotations

import ipaddress
import uuid
from typing import Any

from flask_appbuilder.models.filters import BaseFilter
from flask_appbuilder.models.sqla.filters import SQLAFilterConverter, get_field_setup_query
from sqlalchemy import String, cast, false
from sqlalchemy.dialects.postgresql import ARRAY, INET, UUID
from sqlalchemy.dialects.postgresql import CIDR as CIDR_TYPE


def column_type(datamodel: Any, col_name: str) -> Any:
    column = datamodel.list_columns.get(col_name)
    return getattr(column, "type", None)


def is_uuid(datamodel: Any, col_name: str) -> bool:
    return isinstance(column_type(datamodel, col_name), UUID)


def is_inet(datamodel: Any, col_name: str) -> bool:
    return isinstance(column_type(datamodel, col_name), INET)


def is_array(datamodel: Any, col_name: str) -> bool:
    return isinstance(column_type(datamodel, col_name), ARRAY)


class FilterUuidEqual(BaseFilter):
    name = "Equal to"
    arg_name = "eq"

    def apply(self, query: Any, value: Any) -> Any:
        query, field = get_field_setup_query(query, self.model, self.column_name)
        try:
            token = uuid.UUID(str(value).strip())
        except ValueError:
            return query.filter(false())
        return query.filter(field == token)


class FilterUuidStartsWith(BaseFilter):
    """The first characters of a token, as support reads them off a customer's screen."""

    name = "Starts with"
    arg_name = "sw"

    def apply(self, query: Any, value: Any) -> Any:
        query, field = get_field_setup_query(query, self.model, self.column_name)
        prefix = "".join(c for c in str(value).strip().lower() if c in "0123456789abcdef-")
        if not prefix:
            return query.filter(false())
        return query.filter(cast(field, String).like(prefix + "%"))


class FilterInetEqual(BaseFilter):
    name = "Equal to"
    arg_name = "eq"

    def apply(self, query: Any, value: Any) -> Any:
        query, field = get_field_setup_query(query, self.model, self.column_name)
        try:
            address = ipaddress.ip_address(str(value).strip())
        except ValueError:
            return query.filter(false())
        return query.filter(field == cast(str(address), INET))


class FilterInetWithin(BaseFilter):
    """Addresses inside a network, e.g. 203.0.113.0/24."""

    name = "In network"
    arg_name = "in_net"

    def apply(self, query: Any, value: Any) -> Any:
        query, field = get_field_setup_query(query, self.model, self.column_name)
        try:
            network = ipaddress.ip_network(str(value).strip(), strict=False)
        except ValueError:
            return query.filter(false())
        return query.filter(field.op("<<=")(cast(str(network), CIDR_TYPE)))


class FilterArrayContains(BaseFilter):
    name = "Contains"
    arg_name = "ct"

    def apply(self, query: Any, value: Any) -> Any:
        query, field = get_field_setup_query(query, self.model, self.column_name)
        return query.filter(field.any(str(value).strip()))


class FilterConverter(SQLAFilterConverter):
    conversion_table = (
        ("is_uuid", [FilterUuidEqual, FilterUuidStartsWith]),
        ("is_inet", [FilterInetEqual, FilterInetWithin]),
        ("is_array", [FilterArrayContains]),
        *SQLAFilterConverter.conversion_table,
    )
