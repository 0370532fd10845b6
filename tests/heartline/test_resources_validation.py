"""Validation and parsing of pool values, without a database: canonical forms are stable, the import
parser reads pasted text and CSV alike."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from heartline import resources
from heartline.resources import InvalidResource

LABEL = st.from_regex(r"\A[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?\Z")


@settings(max_examples=200, deadline=None)
@given(labels=st.lists(LABEL, min_size=1, max_size=4), tld=st.from_regex(r"\A[a-z]{2,10}\Z"))
def test_a_canonical_domain_is_its_own_canonical_form(labels: list[str], tld: str) -> None:
    name = ".".join([*labels, tld])
    try:
        canonical = resources.normalize_domain(name.upper())
    except InvalidResource:
        # e.g. "ab--cd" labels that are not valid A-labels: refused, never crashing
        return
    assert canonical == name
    assert resources.normalize_domain(canonical) == canonical


@settings(max_examples=300, deadline=None)
@given(address=st.ip_addresses(v=4))
def test_every_ipv4_is_either_refused_or_kept_verbatim(address: ipaddress.IPv4Address) -> None:
    text = str(address)
    try:
        value = resources.normalize_ipv4(text)
    except InvalidResource:
        assert not address.is_global or address.is_multicast
        return
    assert value == text and address.is_global


@settings(max_examples=200, deadline=None)
@given(digits=st.from_regex(r"\A[1-9][0-9]{6,13}\Z"))
def test_phone_numbers_in_e164_stay_as_they_are(digits: str) -> None:
    try:
        value = resources.normalize_phone("+" + digits)
    except InvalidResource:
        return
    assert resources.normalize_phone(value) == value
    assert value.startswith("+") and value[1:].isdigit()


def test_parse_import_reads_csv_cells_comments_and_a_header_row() -> None:
    text = '\ufeffvalue,comment\n"a.example","first, quoted"\n\n# skipped\n  b.example  \n,empty\nvalue\n'
    assert resources.parse_import(text) == [(2, "a.example"), (5, "b.example"), (7, "value")]


@pytest.mark.parametrize("raw", ["", "   ", "http://a.example", "a.example/path", "a" * 64 + ".example",
                                 ".".join(["a" * 60] * 5) + ".example"])
def test_domains_that_are_not_host_names_are_refused(raw: str) -> None:
    with pytest.raises(InvalidResource):
        resources.normalize_domain(raw)
