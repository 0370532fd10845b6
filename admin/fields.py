"""Form fields shared by the admin's screens.

`UtcDateTimeField`: a timestamp typed and shown as `YYYY-MM-DD HH:MM` (24-hour, UTC), the format every
list and show screen uses.  Not the browser's native date-time picker: Chromium in an English locale shows
that as `11/30/2026, 06:05 PM`, in the browser's own format rather than the admin's.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from flask_appbuilder.fieldwidgets import BS3TextFieldWidget
from wtforms.fields import DateTimeField, IntegerField, StringField

FORMAT = "%Y-%m-%d %H:%M"
# also accepted: with seconds, and the ISO form a browser or a script may send
FORMATS = [FORMAT, "%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S"]


class UtcDateTimeWidget(BS3TextFieldWidget):
    def __call__(self, field: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("placeholder", "YYYY-MM-DD HH:MM (UTC)")
        kwargs.setdefault("autocomplete", "off")
        kwargs.setdefault("class_", "form-control hl-datetime")
        return super().__call__(field, **kwargs)


class UtcDateTimeField(DateTimeField):
    widget = UtcDateTimeWidget()

    def __init__(self, label: str | None = None, validators: Any = None, **kwargs: Any) -> None:
        kwargs.setdefault("format", FORMATS)
        super().__init__(label, validators, **kwargs)

    def _value(self) -> str:
        if self.raw_data:
            return " ".join(self.raw_data)
        if isinstance(self.data, dt.datetime):
            value = self.data.astimezone(dt.UTC) if self.data.tzinfo else self.data
            return value.strftime(FORMAT)
        return ""


class TextField(StringField):
    """A StringField as wide as FAB's own fields (form-control)."""

    widget = BS3TextFieldWidget()


class NumberField(IntegerField):
    """An IntegerField as wide as FAB's own fields (form-control)."""

    widget = BS3TextFieldWidget()
