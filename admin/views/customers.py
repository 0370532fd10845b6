"""Customers: the companies or people licenses belong to."""

from __future__ import annotations

from flask_appbuilder import AppBuilder, ModelView
from wtforms.validators import DataRequired, Email, Optional

from admin import permissions
from admin.models.core import Customer
from admin.views.base import ReadableInterface, timestamps
from admin.views.license_screens import LicenseView


class CustomerView(ModelView):
    datamodel = ReadableInterface(Customer)
    class_permission_name = permissions.CUSTOMERS
    list_title = show_title = add_title = edit_title = "Customers"
    related_views = [LicenseView]

    list_columns = ["name", "company", "email", "phone", "created_at"]
    show_columns = ["name", "company", "email", "phone", "notes", "created_at", "updated_at"]
    add_columns = edit_columns = ["name", "company", "email", "phone", "notes"]
    search_columns = ["name", "company", "email"]
    order_columns = ["name", "company", "created_at"]
    base_order = ("name", "asc")
    validators_columns = {"name": [DataRequired()], "email": [Optional(), Email()]}
    label_columns = {"created_at": "Created", "updated_at": "Updated"}
    formatters_columns = timestamps("created_at", "updated_at")


def register(appbuilder: AppBuilder) -> None:
    appbuilder.add_view(CustomerView, "Customers", icon="fa-building", category="Licensing",
                        category_icon="fa-key")
