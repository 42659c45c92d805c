"""Tests for the git-commit task."""

import subprocess


def git(*args):
    return subprocess.run(
        ["git", "-C", "project", *args], capture_output=True, text=True, check=True
    ).stdout


def test_one_commit():
    assert git("log", "--format=%s").split("\n")[:-1] == ["initial import"]


def test_all_files_committed():
    assert sorted(git("ls-files").split()) == ["README.md", "src/app.py"]
    assert git("status", "--porcelain") == ""
