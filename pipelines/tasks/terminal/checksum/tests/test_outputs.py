"""Tests for the checksum task."""

import hashlib


def test_checksum():
    digest = hashlib.sha256(open("payload.bin", "rb").read()).hexdigest()
    assert open("payload.sha256").read().split() == [digest, "payload.bin"]
