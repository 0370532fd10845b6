"""Permission (view) names of the admin screens, as FAB stores them in ab_view_menu.

FAB grants `can_<method>` on these names; the Admin role gets all of them.  Naming them here keeps the
names stable when a view class is renamed, and lets a deployment build narrower roles (e.g. a support
role with Sessions and Devices only).
"""

CUSTOMERS = "Customers"
LICENSES = "Licenses"
DEVICES = "Devices"
LIVE_SESSIONS = "LiveSessions"
SESSION_HISTORY = "SessionHistory"
HEARTBEATS = "Heartbeats"
API_KEYS = "ApiKeys"
SYSTEM_ADMINISTRATION = "SystemAdministration"
AUDIT_LOG = "AuditLog"
DASHBOARD = "Dashboard"
