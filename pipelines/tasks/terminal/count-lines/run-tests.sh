#!/bin/bash
# Run the task's tests from the working directory (TerminalBench format).
set -u
python -I -m pytest -q -p no:cacheprovider -rA "$TEST_DIR/test_outputs.py"
