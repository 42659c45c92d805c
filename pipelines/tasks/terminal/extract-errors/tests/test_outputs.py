"""Tests for the extract-errors task."""


def test_errors():
    assert open("errors.txt").read().split("\n")[:-1] == [
        "connection reset",
        "disk full",
    ]
