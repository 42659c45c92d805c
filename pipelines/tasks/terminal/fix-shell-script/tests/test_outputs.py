"""Tests for the fix-shell-script task."""

import subprocess


def test_backup_made():
    assert open("backup/data.txt.bak").read() == "important\n"


def test_script_works_again():
    subprocess.run(["bash", "backup.sh"], check=True)
