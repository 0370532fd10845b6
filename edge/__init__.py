"""The HTTP edge: Starlette on uvicorn, stateless, serving the client API (docs/api.md)."""
