"""Tests for the fix-python-script task."""

import subprocess
import sys


def test_mean_is_printed():
    out = subprocess.run(
        [sys.executable, "stats.py"], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "5.00"


def test_other_input():
    with open("numbers.txt", "w") as fh:
        fh.write("1\n2\n")
    out = subprocess.run(
        [sys.executable, "stats.py"], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "1.50"
