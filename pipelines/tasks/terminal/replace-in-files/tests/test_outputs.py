"""Tests for the replace-in-files task."""

from pathlib import Path


def test_renamed():
    for p in Path("src").rglob("*.py"):
        text = p.read_text()
        assert "fetch_data" not in text
    assert "def load_data" in Path("src/io.py").read_text()
    assert "load_data()" in Path("src/app/main.py").read_text()
    assert "fetch_data" in Path("src/CHANGES.txt").read_text()
