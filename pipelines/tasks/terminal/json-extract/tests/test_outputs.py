"""Tests for the json-extract task."""


def test_active():
    assert open("active.txt").read() == "ann@example.org\ncy@example.org\n"
