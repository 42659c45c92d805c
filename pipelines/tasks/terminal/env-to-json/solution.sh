#!/bin/bash
set -euo pipefail
python3 - <<'EOF'
import json
out = {}
for line in open("settings.env"):
    line = line.strip()
    if not line or line.startswith("#"):
        continue
    key, _, value = line.partition("=")
    out[key] = int(value) if value.isdigit() else value
json.dump(out, open("settings.json", "w"))
EOF
