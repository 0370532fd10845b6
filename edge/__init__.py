"""The HTTP edge: Starlette on uvicorn, stateless, serving the client API of DESIGN.md §4."""
