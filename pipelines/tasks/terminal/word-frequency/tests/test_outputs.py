"""Tests for the word-frequency task."""


def test_top3():
    lines = open("top3.txt").read().split("\n")
    assert [ln for ln in lines if ln] == ["the 5", "cat 3", "a 2"]
