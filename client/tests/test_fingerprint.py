"""The device fingerprint helper: stable on one machine, salted per product, never the raw id."""

from __future__ import annotations

from heartline_client.fingerprint import device_fingerprint, machine_id


def test_fingerprint_is_stable_salted_and_hashed() -> None:
    first = device_fingerprint("product-a")
    assert first == device_fingerprint("product-a")
    assert first != device_fingerprint("product-b")
    assert len(first) == 64 and int(first, 16) >= 0
    raw = machine_id()
    assert not raw or raw not in first
