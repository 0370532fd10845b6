"""A stable device fingerprint: the same value on every run on one machine, another on the next machine.

`device_fingerprint()` hashes what identifies the machine and survives reboots and reinstalls of your
program: the OS machine id (Linux `/etc/machine-id`, macOS `IOPlatformUUID`, Windows `MachineGuid`),
falling back to the host name and the MAC address of the first network interface.  Only the hash is
sent, so the server never learns the raw identifiers.  Pass `salt` (e.g. your product's name) so two
vendors' fingerprints of one machine differ.

It is a fingerprint, not a proof: a determined user can copy a machine id.  Heartline's limits (devices,
concurrent sessions) hold whatever the fingerprint; the fingerprint only decides which device a session
counts as.
"""

from __future__ import annotations

import hashlib
import platform
import socket
import subprocess
import sys
import uuid
from pathlib import Path

LINUX_MACHINE_ID = (Path("/etc/machine-id"), Path("/var/lib/dbus/machine-id"))


def machine_id() -> str:
    """The OS's own identifier of this installation, or '' when there is none to read."""
    if sys.platform.startswith("linux"):
        for path in LINUX_MACHINE_ID:
            try:
                value = path.read_text().strip()
            except OSError:
                continue
            if value:
                return value
    elif sys.platform == "darwin":
        out = _run(["ioreg", "-rd1", "-c", "IOPlatformExpertDevice"])
        for line in out.splitlines():
            if "IOPlatformUUID" in line:
                return line.split('"')[-2]
    elif sys.platform == "win32":
        out = _run(["reg", "query", r"HKLM\SOFTWARE\Microsoft\Cryptography", "/v", "MachineGuid"])
        for line in out.splitlines():
            if "MachineGuid" in line:
                return line.split()[-1]
    return ""


def device_fingerprint(salt: str = "") -> str:
    """64 hex characters identifying this machine (see the module's docstring for what goes in)."""
    parts = [machine_id() or f"{socket.gethostname()}|{uuid.getnode():012x}", platform.system(), salt]
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()


def _run(argv: list[str]) -> str:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=5, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return ""
