"""Entitlements, the license ↔ entitlement link and product defaults (sql/0007_entitlements.sql)."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import BigInteger, Column, ForeignKey, Table, Text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from admin.models.base import Base
from admin.models.core import NOW, TZ

# The link the license form edits through License.entitlements (FAB's many-to-many select).
license_entitlements = Table(
    "license_entitlements", Base.metadata,
    Column("id", BigInteger, primary_key=True),
    Column("license_id", BigInteger, ForeignKey("licenses.id", ondelete="CASCADE"), nullable=False),
    Column("entitlement_id", BigInteger, ForeignKey("entitlements.id"), nullable=False),
)


class Entitlement(Base):
    __tablename__ = "entitlements"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    code: Mapped[str] = mapped_column(Text, unique=True)
    name: Mapped[str] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(TZ, server_default=NOW)

    def __repr__(self) -> str:
        return self.code


class ProductEntitlement(Base):
    """An entitlement every license of `product` has, on top of its own."""

    __tablename__ = "product_entitlements"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    product: Mapped[str] = mapped_column(Text)
    entitlement_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("entitlements.id"))

    entitlement: Mapped[Entitlement] = relationship()
