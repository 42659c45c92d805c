"""Tests for the organize-by-ext task."""

import os


def test_organized():
    assert os.listdir("inbox") == []
    assert sorted(os.listdir("pdf")) == ["a.pdf", "b.pdf"]
    assert sorted(os.listdir("csv")) == ["c.csv"]
    assert sorted(os.listdir("txt")) == ["d.txt"]
    assert open("csv/c.csv").read() == "1,2\n"
