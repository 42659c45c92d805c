"""Tests for the git-branch task."""

import subprocess


def git(*args):
    return subprocess.run(
        ["git", "-C", "app", *args], capture_output=True, text=True, check=True
    ).stdout.strip()


def test_branches():
    assert git("rev-parse", "--abbrev-ref", "HEAD") == "feature"
    assert git("show", "feature:feature.txt") == "on"
    base = git("rev-parse", "feature~1")
    files = git("ls-tree", "--name-only", base).split()
    assert "feature.txt" not in files and "main.py" in files
    assert git("rev-list", "--count", "feature") == "2"
