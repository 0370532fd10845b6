"""The admin web interface: Flask-AppBuilder screens over the tables that sql/ creates, with TOTP login."""
