"""A borrowed seat's lease: the server's signed answer to the borrow, kept so that it can be verified
again with no network at all (docs/client.md, "Borrowing a seat").

Store it with `to_json()` where your program keeps its state, load it with `Lease.from_json()`, and call
`check(keys)` at start when the server cannot be reached: it verifies the signature against the pinned
keys, that the lease is for this device, and that it has not run out.  Offline, "run out" can only be
judged by this machine's clock; the server ends the borrow at `until` by its own clock whatever the
client believes.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
from dataclasses import dataclass

from heartline_client.client import Answer, Evidence, parse_time
from heartline_client.verify import KeySet, SignatureError


class LeaseError(Exception):
    """The lease does not verify, is for another device, or has run out."""


@dataclass(frozen=True)
class Lease:
    borrow_id: str
    session_token: str
    hardware_fingerprint: str
    until: dt.datetime
    evidence: Evidence

    @classmethod
    def from_answer(cls, answer: Answer) -> Lease:
        if answer.evidence is None:
            raise LeaseError("the borrow answer carries no evidence to keep")
        data = answer.data
        return cls(borrow_id=data["borrow_id"], session_token=data["session_token"],
                   hardware_fingerprint=data["hardware_fingerprint"], until=parse_time(data["until"]),
                   evidence=answer.evidence)

    def check(self, keys: KeySet, fingerprint: str | None = None, now: dt.datetime | None = None) -> None:
        """Raise LeaseError unless the lease verifies against `keys`, names `fingerprint` (when given)
        and runs until after `now` (this machine's clock by default)."""
        try:
            self.evidence.verify(keys)
        except SignatureError as exc:
            raise LeaseError(f"the lease does not verify: {exc}") from None
        signed = json.loads(self.evidence.body)
        if (signed.get("borrow_id"), signed.get("hardware_fingerprint"), parse_time(signed["until"])) != (
                self.borrow_id, self.hardware_fingerprint, self.until):
            raise LeaseError("the lease's fields differ from what was signed")
        if fingerprint is not None and fingerprint != self.hardware_fingerprint:
            raise LeaseError("the lease is for another device")
        if (now or dt.datetime.now(dt.UTC)) >= self.until:
            raise LeaseError(f"the lease ran out at {self.until.isoformat()}")

    def to_json(self) -> str:
        e = self.evidence
        return json.dumps({"status": e.status, "headers": e.headers, "body": base64.b64encode(e.body).decode(),
                           "method": e.method, "path": e.path, "nonce": e.nonce})

    @classmethod
    def from_json(cls, text: str) -> Lease:
        raw = json.loads(text)
        evidence = Evidence(status=int(raw["status"]), headers=dict(raw["headers"]),
                            body=base64.b64decode(raw["body"]), method=raw["method"], path=raw["path"],
                            nonce=raw["nonce"])
        data = json.loads(evidence.body)
        return cls(borrow_id=data["borrow_id"], session_token=data["session_token"],
                   hardware_fingerprint=data["hardware_fingerprint"], until=parse_time(data["until"]),
                   evidence=evidence)
