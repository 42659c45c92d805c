#!/bin/bash
set -euo pipefail
python3 - <<'EOF'
import sqlite3
db = sqlite3.connect("inventory.db")
db.executescript(open("inventory.sql").read())
db.execute("UPDATE items SET quantity = 0 WHERE expired = 1")
db.execute("DELETE FROM items WHERE name = 'sample'")
db.commit()
EOF
