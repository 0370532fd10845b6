"""Resource pools and their allocation history (sql/0003), mapped for the admin's list screens.

Writes go through heartline.resources (validation, quotas, SKIP LOCKED, quarantine); these models only
list, filter and edit notes.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import BigInteger, ForeignKey, Text, text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from admin.models.base import Base
from admin.models.core import NOW, TZ, License


class ResourcePool(Base):
    __tablename__ = "resource_pools"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    resource_type: Mapped[str] = mapped_column(Text)
    value: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(Text, server_default=text("'available'"))
    license_id: Mapped[int | None] = mapped_column(
        BigInteger, ForeignKey("licenses.id", ondelete="SET NULL"))
    allocated_at: Mapped[dt.datetime | None] = mapped_column(TZ)
    quarantined_until: Mapped[dt.datetime | None] = mapped_column(TZ)
    notes: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(TZ, server_default=NOW)

    license: Mapped[License | None] = relationship()

    def __repr__(self) -> str:
        return f"{self.resource_type} {self.value}"


class ResourceAllocation(Base):
    __tablename__ = "resource_allocations"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    resource_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("resource_pools.id", ondelete="CASCADE"))
    license_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("licenses.id", ondelete="CASCADE"))
    allocated_at: Mapped[dt.datetime] = mapped_column(TZ, server_default=NOW)
    released_at: Mapped[dt.datetime | None] = mapped_column(TZ)
    allocated_by: Mapped[str | None] = mapped_column(Text)
    released_by: Mapped[str | None] = mapped_column(Text)

    resource: Mapped[ResourcePool] = relationship()
    license: Mapped[License] = relationship()
