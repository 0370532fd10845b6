"""Entitlements (named features) and the defaults every license of a product gets.

A license's own entitlements are chosen on the license form; codes are fixed once created (clients were
given them), names may change.  Every change reaches the edge within HEARTLINE_LICENSE_CACHE_S (its
refresher follows the audit log of these tables), and is audited.
"""

from __future__ import annotations

from flask_appbuilder import AppBuilder, ModelView
from flask_appbuilder.validators import Unique
from wtforms.validators import DataRequired, Regexp

from admin import permissions
from admin.models.entitlements import Entitlement, ProductEntitlement
from admin.views.base import CONSTRAINT_MESSAGES, ReadableInterface, timestamps

CODE_FORMAT = Regexp(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$",
                     message="1 to 64 letters, digits or _ . : - , starting with a letter or digit.")

CONSTRAINT_MESSAGES.update({
    "entitlements_code_unique": "An entitlement with this code exists already.",
    "entitlements_code_format": "Codes are 1 to 64 letters, digits or _ . : - , starting with a letter or digit.",
    "product_entitlements_once": "The product has this entitlement already.",
    "license_entitlements_entitlement_id_fkey": "Licenses still hold this entitlement; take it off them first.",
    "product_entitlements_entitlement_id_fkey": "Products still hold this entitlement; take it off them first.",
})


class EntitlementView(ModelView):
    datamodel = ReadableInterface(Entitlement)
    # FAB's unique check puts the refusal beside the field (the constraint message covers a race)
    class_permission_name = permissions.ENTITLEMENTS
    list_title = show_title = add_title = edit_title = "Entitlements"
    list_columns = ["code", "name", "created_at"]
    show_columns = list_columns
    add_columns = ["code", "name"]
    edit_columns = ["name"]
    search_columns = ["code", "name"]
    order_columns = ["code", "name", "created_at"]
    base_order = ("code", "asc")
    formatters_columns = timestamps("created_at")
    description_columns = {"code": "What clients check for, e.g. EXPORT_PDF; it cannot change later."}
    validators_columns = {"code": [DataRequired(), CODE_FORMAT,
                                   Unique(datamodel, "code", "An entitlement with this code exists already.")],
                          "name": [DataRequired()]}


class ProductEntitlementView(ModelView):
    datamodel = ReadableInterface(ProductEntitlement)
    class_permission_name = permissions.ENTITLEMENTS
    list_title = show_title = add_title = edit_title = "Product defaults"
    list_columns = ["product", "entitlement"]
    add_columns = edit_columns = show_columns = ["product", "entitlement"]
    search_columns = ["product", "entitlement"]
    order_columns = ["product"]
    base_order = ("product", "asc")
    description_columns = {"product": "Every license of this product has the entitlement, on top of its own."}
    validators_columns = {"product": [DataRequired()], "entitlement": [DataRequired()]}


def register(appbuilder: AppBuilder) -> None:
    appbuilder.add_view(EntitlementView, "Entitlements", icon="fa-puzzle-piece", category="Licensing")
    appbuilder.add_view(ProductEntitlementView, "Product defaults", icon="fa-cubes", category="Licensing")
