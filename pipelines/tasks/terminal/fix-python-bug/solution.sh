#!/bin/bash
set -euo pipefail
python3 - <<'EOF'
src = open("fizzbuzz.py").read()
src = src.replace(
    '    if i % 3 == 0:\n        return "Fizz"\n    if i % 15 == 0:\n        return "FizzBuzz"\n',
    '    if i % 15 == 0:\n        return "FizzBuzz"\n    if i % 3 == 0:\n        return "Fizz"\n',
)
open("fizzbuzz.py", "w").write(src)
EOF
