"""heartline-client: the Python client of the Heartline license server (see docs/client.md).

    keys = KeySet.from_jwks(PINNED_JWKS)
    with Client(URL, api_key=API_KEY, license_key=LICENSE_KEY, keys=keys) as client, \\
            Session(client, device_fingerprint("my-product")) as session:
        while session.valid:
            do_licensed_work()
"""

from heartline_client.answer_keys import AnswerKeyError, SessionKey
from heartline_client.client import Answer, AsyncClient, Client
from heartline_client.errors import HeartlineError, Refused, Unreachable
from heartline_client.fingerprint import device_fingerprint
from heartline_client.lease import Lease, LeaseError
from heartline_client.session import AsyncSession, Callbacks, Session, SessionState, SessionStats
from heartline_client.verify import KeySet, SignatureError, Verified, verify_answer

__all__ = [
    "Answer", "AnswerKeyError", "AsyncClient", "AsyncSession", "Callbacks", "Client", "HeartlineError", "KeySet", "Lease",
    "LeaseError", "Refused",
    "Session", "SessionKey", "SessionState", "SessionStats", "SignatureError", "Unreachable", "Verified",
    "device_fingerprint", "verify_answer",
]
