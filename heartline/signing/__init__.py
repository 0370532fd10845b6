"""Signed answers: the Ed25519 key store, the JWKS it publishes and the RFC 9421 signer the edge runs.

See docs/client.md for what a client verifies and how keys are rotated.
"""
