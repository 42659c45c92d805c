#!/bin/bash
set -euo pipefail
find docs -name '*.txt' -type f -exec cat {} + | wc -l > count.txt
