#!/bin/bash
set -euo pipefail
find src -name '*.py' -exec sed -i 's/\bfetch_data\b/load_data/g' {} +
