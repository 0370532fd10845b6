"""`heartline create-admin`: make an admin user (FAB's ab_user, role Admin) from flags or prompts.

`--demo` (used by `heartline dev`) creates the user 'admin' with a random password the first time only
and prints that password once; later runs say the user exists.
"""

from __future__ import annotations

import argparse
import getpass
import secrets
import sys

from heartline import services
from heartline.settings import Settings

DEMO_USERNAME = "admin"
ADMIN_ROLE = "Admin"


def create_admin(settings: Settings, *, username: str, email: str, password: str,
                 first_name: str = "Admin", last_name: str = "User") -> bool:
    """Create the admin; False when the user name or e-mail is taken."""
    from flask import current_app

    from admin.app import create_app

    # users only: no screens, no sessions, no TOTP secrets (so no keys needed)
    app = create_app(settings, view_modules=[], update_permissions=False, require_keys=False)
    with app.app_context():
        sm = current_app.appbuilder.sm  # type: ignore[attr-defined]
        sm.session.info["heartline_actor"] = "admin:cli"
        if sm.find_user(username=username) or sm.find_user(email=email):
            return False
        user = sm.add_user(username, first_name, last_name, email, sm.find_role(ADMIN_ROLE), password)
        return bool(user)


def ensure_demo_admin(settings: Settings) -> str | None:
    """Create the demo admin 'admin' with a random password if it does not exist; the password, or None."""
    password = secrets.token_urlsafe(12)
    if create_admin(settings, username=DEMO_USERNAME, email="admin@example.com", password=password):
        return password
    return None


def create_admin_main(settings: Settings, argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="heartline create-admin")
    parser.add_argument("--username")
    parser.add_argument("--email")
    parser.add_argument("--password", help="prompted for when omitted (preferred: keeps it out of history)")
    parser.add_argument("--first-name", default="Admin")
    parser.add_argument("--last-name", default="User")
    parser.add_argument("--demo", action="store_true",
                        help="create the user 'admin' with a random password once, and print it once")
    args = parser.parse_args(argv)
    settings = services.resolve(settings, need_redis=False)

    if args.demo:
        password = ensure_demo_admin(settings)
        if password:
            print(f"Demo admin:       user '{DEMO_USERNAME}', password '{password}'   (shown once; "
                  "you will set up two-factor login at the first sign-in)")
        else:
            print(f"Demo admin:       user '{DEMO_USERNAME}' exists (its password was shown at the first "
                  "run; `heartline create-admin` makes another)")
        return 0

    username = args.username or input("Username: ").strip()
    email = args.email or input("E-mail: ").strip()
    password = args.password
    if password is None:
        password = getpass.getpass("Password: ")
        if password != getpass.getpass("Repeat password: "):
            print("heartline create-admin: the passwords differ", file=sys.stderr)
            return 1
    if not username or not email or len(password) < 8:
        print("heartline create-admin: a username, an e-mail and a password of at least 8 characters "
              "are needed", file=sys.stderr)
        return 1
    if not create_admin(settings, username=username, email=email, password=password,
                        first_name=args.first_name, last_name=args.last_name):
        print(f"heartline create-admin: user '{username}' or e-mail '{email}' exists already",
              file=sys.stderr)
        return 1
    print(f"Admin '{username}' created; two-factor login is set up at the first sign-in.")
    return 0
