"""Security headers on every admin answer (deploy/nginx sets the static ones again in front).

Content-Security-Policy allows scripts from the admin itself and inline ones only with this request's
nonce (Flask-AppBuilder's templates ask for `csp_nonce()`); no framing anywhere; pages are never
cached — they show license keys, customers and one-time secrets — static files are.
"""

from __future__ import annotations

import secrets

from flask import Flask, g, request
from werkzeug.wrappers import Response

STATIC_HEADERS = {
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}


def content_security_policy(nonce: str) -> str:
    return "; ".join([
        "default-src 'self'",
        f"script-src 'self' 'nonce-{nonce}'",
        # FAB's widgets (select2, datepicker) and our templates set style attributes
        "style-src 'self' 'unsafe-inline'",
        "img-src 'self' data:",
        "font-src 'self' data:",
        "object-src 'none'",
        "base-uri 'self'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ])


def _nonce() -> str:
    if "csp_nonce" not in g:
        g.csp_nonce = secrets.token_urlsafe(16)
    return str(g.csp_nonce)


def install(app: Flask) -> None:
    app.jinja_env.globals["csp_nonce"] = _nonce

    @app.after_request
    def _security_headers(response: Response) -> Response:
        for name, value in STATIC_HEADERS.items():
            response.headers.setdefault(name, value)
        response.headers["Content-Security-Policy"] = content_security_policy(_nonce())
        if not (request.endpoint or "").endswith("static"):
            response.headers["Cache-Control"] = "no-store"
            response.headers.pop("Expires", None)
        return response
