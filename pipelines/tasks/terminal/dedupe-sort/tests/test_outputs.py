"""Tests for the dedupe-sort task."""


def test_unique():
    assert open("unique.txt").read().split("\n")[:-1] == [
        "ada",
        "alan",
        "barbara",
        "grace",
        "linus",
    ]
