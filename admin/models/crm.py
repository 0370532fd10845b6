"""Lead CRM tables (sql/0004): institutions, their contacts and activities.

Stage changes and the conversion to a customer go through heartline.crm (timeline note, row lock);
the rest is plain CRUD through Flask-AppBuilder.
"""

from __future__ import annotations

import datetime as dt

from flask import url_for
from markupsafe import Markup
from sqlalchemy import BigInteger, Boolean, ForeignKey, Text, text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from admin.models.base import Base
from admin.models.core import NOW, TZ, Customer


class Institution(Base):
    __tablename__ = "crm_institutions"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    name: Mapped[str] = mapped_column(Text)
    kind: Mapped[str | None] = mapped_column(Text)
    city: Mapped[str | None] = mapped_column(Text)
    country: Mapped[str | None] = mapped_column(Text)
    website: Mapped[str | None] = mapped_column(Text)
    stage: Mapped[str] = mapped_column(Text, server_default=text("'lead'"))
    owner: Mapped[str | None] = mapped_column(Text)
    customer_id: Mapped[int | None] = mapped_column(
        BigInteger, ForeignKey("customers.id", ondelete="SET NULL"), unique=True)
    notes: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(TZ, server_default=NOW)
    updated_at: Mapped[dt.datetime] = mapped_column(TZ, server_default=NOW)

    customer: Mapped[Customer | None] = relationship()
    contacts: Mapped[list[Contact]] = relationship(back_populates="institution", passive_deletes=True)
    activities: Mapped[list[Activity]] = relationship(back_populates="institution", passive_deletes=True)

    def __repr__(self) -> str:
        return self.name

    def page_link(self) -> Markup:
        """The name, linking to the institution's page (timeline, stage, conversion); FAB lists call it."""
        href = url_for("CrmView.institution", institution_id=self.id)
        return Markup('<a href="{}">{}</a>').format(href, self.name)


class Contact(Base):
    __tablename__ = "crm_contacts"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    institution_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("crm_institutions.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(Text)
    email: Mapped[str | None] = mapped_column(Text)
    phone: Mapped[str | None] = mapped_column(Text)
    role: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(TZ, server_default=NOW)

    institution: Mapped[Institution] = relationship(back_populates="contacts")

    def __repr__(self) -> str:
        return self.name


class Activity(Base):
    __tablename__ = "crm_activities"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    institution_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("crm_institutions.id", ondelete="CASCADE"))
    contact_id: Mapped[int | None] = mapped_column(
        BigInteger, ForeignKey("crm_contacts.id", ondelete="SET NULL"))
    kind: Mapped[str] = mapped_column(Text)
    subject: Mapped[str] = mapped_column(Text)
    body: Mapped[str | None] = mapped_column(Text)
    occurred_at: Mapped[dt.datetime] = mapped_column(TZ, server_default=NOW)
    due_at: Mapped[dt.datetime | None] = mapped_column(TZ)
    done: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    owner: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(TZ, server_default=NOW)

    institution: Mapped[Institution] = relationship(back_populates="activities")
    contact: Mapped[Contact | None] = relationship()

    def __repr__(self) -> str:
        return f"{self.kind}: {self.subject}"
