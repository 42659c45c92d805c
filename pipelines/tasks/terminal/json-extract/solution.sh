#!/bin/bash
set -euo pipefail
python3 - <<'EOF'
import json
users = json.load(open("users.json"))
with open("active.txt", "w") as fh:
    for u in users:
        if u["active"]:
            fh.write(u["email"] + "\n")
EOF
