"""`heartline signing-key create | list | rotate | retire`: the keys that sign the edge's answers.

Public keys only are ever printed; private keys stay sealed in PostgreSQL.  Edges pick changes up within
`signing_key_refresh_s`.  The rotation procedure is in docs/client.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from heartline import db, services
from heartline.sealing import SIGNING_KEY_SECRET, sealing_secret
from heartline.settings import Settings
from heartline.signing.jwks import b64url, jwks
from heartline.signing.keys import KeyBox, PublicKey, SigningKeyError, create_key, list_keys
from heartline.signing.keys import retire as retire_key
from heartline.signing.keys import rotate as rotate_key


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="heartline signing-key",
                                     description="Manage the Ed25519 keys that sign the edge's answers")
    sub = parser.add_subparsers(dest="action", required=True)
    create = sub.add_parser("create", help="create a key and publish it in the JWKS (it does not sign yet)")
    create.add_argument("--activate", action="store_true", help="make it the signing key at once")
    listing = sub.add_parser("list", help="list the keys")
    listing.add_argument("--jwks", action="store_true", help="print the JWKS (to pin in a client) instead")
    rotate = sub.add_parser("rotate", help="make a new key (or --to KID, a published one) the signing key; "
                                           "the previous one stays published")
    rotate.add_argument("--to", metavar="KID", help="a published key to sign with from now on")
    retire = sub.add_parser("retire", help="take a key out of the JWKS (not the signing key)")
    retire.add_argument("kid")
    return parser


def _line(key: PublicKey) -> str:
    when = f"retired {key.retired_at:%Y-%m-%d %H:%M}" if key.retired_at else \
        f"created {key.created_at:%Y-%m-%d %H:%M}"
    return f"{key.kid:<24} {key.status.value:<10} {when}  x={b64url(key.public_key)}"


def main(settings: Settings, argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    settings = services.resolve(settings, need_redis=False)

    async def run() -> int:
        conn = await db.connect(settings.database_url or "", actor="cli")
        try:
            if args.action == "list":
                keys = await list_keys(conn)
                if args.jwks:
                    print(json.dumps(jwks(keys), indent=2))
                else:
                    for key in keys:
                        print(_line(key))
                return 0
            if args.action == "retire":
                key = await retire_key(conn, args.kid)
                print(f"{_line(key)}\nedges stop publishing it within {settings.signing_key_refresh_s:g}s")
                return 0
            box = KeyBox(sealing_secret(settings, SIGNING_KEY_SECRET))
            if args.action == "create":
                key = await create_key(conn, box, activate=args.activate)
            else:
                key = await rotate_key(conn, box, args.to)
            print(_line(key))
            if key.status.value == "active":
                print(f"edges sign with it within {settings.signing_key_refresh_s:g}s")
            return 0
        except SigningKeyError as exc:
            print(f"heartline signing-key: {exc}", file=sys.stderr)
            return 1
        finally:
            await conn.close()

    return asyncio.run(run())
