"""Tests for the make-executable task."""

import os
import subprocess


def test_hello():
    assert os.access("hello.sh", os.X_OK)
    out = subprocess.run(["./hello.sh"], capture_output=True, text=True, check=True)
    assert out.stdout == "Hello, r2vcal\n"
