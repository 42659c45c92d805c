#!/bin/bash
set -euo pipefail
python - <<'EOF'
import re
text = open('app.ini').read()
head, sep, tail = text.partition('[db]')
head = re.sub(r'(?m)^port = .*$', 'port = 8080', head)
head = re.sub(r'(?m)^debug = .*$', 'debug = false', head)
open('app.ini', 'w').write(head + sep + tail)
EOF
