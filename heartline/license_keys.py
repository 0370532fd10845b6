"""License keys: `HL-XXXXX-XXXXX-XXXXX-XXXXX`, generated for every new license (admin, demo, tests)."""

from __future__ import annotations

import secrets

# No look-alike characters (0/O, 1/I): keys are read out and typed by people.
ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"


def new_license_key() -> str:
    """A fresh license key: four groups of five characters from ALPHABET, 'HL-' in front."""
    groups = ["".join(secrets.choice(ALPHABET) for _ in range(5)) for _ in range(4)]
    return "HL-" + "-".join(groups)
