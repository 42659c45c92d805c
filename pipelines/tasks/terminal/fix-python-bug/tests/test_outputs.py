"""Tests for the fix-python-bug task."""

import subprocess
import sys


def run(n):
    out = subprocess.run(
        [sys.executable, "fizzbuzz.py", str(n)],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.split()


def test_fifteen():
    assert run(15)[-1] == "FizzBuzz"
    assert run(30)[14] == "FizzBuzz"


def test_others():
    assert run(5) == ["1", "2", "Fizz", "4", "Buzz"]
