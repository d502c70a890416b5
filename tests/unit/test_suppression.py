"""Suppression entries: salted hashes of identifier keys, matched against a batch's keys."""

from __future__ import annotations

from streams.domain.suppression import Suppressions, suppression_hash


def test_a_key_matches_only_its_own_hash_under_the_same_salt() -> None:
    digest = suppression_hash("salt", "email:ann@example.org")
    assert len(digest) == 64 and "ann" not in digest
    assert digest != suppression_hash("other salt", "email:ann@example.org")
    assert digest != suppression_hash("salt", "email:bob@example.org")


def test_an_event_is_suppressed_when_any_of_its_keys_is() -> None:
    suppressions = Suppressions("salt")
    assert not suppressions.hit(["email:ann@example.org"]) and len(suppressions) == 0
    suppressions.replace([suppression_hash("salt", "phone:+447700900123")])
    assert suppressions.hit(["email:ann@example.org", "phone:+447700900123"])
    assert not suppressions.hit(["email:ann@example.org", "web_anonymous_id:a-1"])
    assert not suppressions.hit([])
