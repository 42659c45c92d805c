#!/bin/bash
set -euo pipefail
python3 - <<'EOF'
import sqlite3
db = sqlite3.connect("shop.db")
db.executescript(open("schema.sql").read())
db.commit()
(total,) = db.execute(
    "SELECT SUM(o.amount) FROM orders o JOIN customers c ON c.id = o.customer_id "
    "WHERE c.name = 'alice'"
).fetchone()
open("alice.txt", "w").write(f"{total}\n")
EOF
