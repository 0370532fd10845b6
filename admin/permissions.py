"""Permission (view) names of the admin screens, as FAB stores them in ab_view_menu.

FAB grants `can_<method>` on these names; the Admin role gets all of them.  Naming them here keeps the
names stable when a view class is renamed, and lets a deployment build narrower roles (e.g. a support
role with LiveSession and Device only).  They are singular on purpose: FAB keeps the menu entries
("Customers", "Licenses", ...) in the same table, and a view sharing its menu entry's name would have the
entry's menu_access pruned as a permission the view does not know.
"""

CUSTOMERS = "Customer"
LICENSES = "License"
DEVICES = "Device"
LIVE_SESSIONS = "LiveSession"
SESSION_HISTORY = "SessionHistory"
BORROWS = "Borrow"
HEARTBEATS = "Heartbeat"
API_KEYS = "ApiKey"
SYSTEM_ADMINISTRATION = "SystemAdministration"
AUDIT_LOG = "AuditLog"
DASHBOARD = "DashboardPage"
ENTITLEMENTS = "Entitlement"
WEBHOOK_ENDPOINTS = "WebhookEndpoint"
WEBHOOK_DELIVERIES = "WebhookDelivery"
DENIALS = "DenialDashboard"
