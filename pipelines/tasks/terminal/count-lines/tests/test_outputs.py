"""Tests for the count-lines task."""


def test_count():
    assert open("count.txt").read().strip() == "9"
