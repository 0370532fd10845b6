"""Admin login security: a small FAB security-manager subclass and TOTP two-factor authentication."""
