"""Admin screens; each module has `register(appbuilder)` (see admin.app.VIEW_MODULES)."""
