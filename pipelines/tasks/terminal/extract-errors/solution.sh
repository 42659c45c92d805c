#!/bin/bash
set -euo pipefail
grep -o 'ERROR: .*' server.log | sed 's/^ERROR: //' | sort -u > errors.txt
