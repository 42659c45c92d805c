"""Tests for the rename-extensions task."""

import os


def test_renamed():
    assert sorted(os.listdir("photos")) == ["a.jpg", "b.jpg", "c.png", "notes.txt"]
    assert open("photos/a.jpg").read() == "A"
