#!/bin/bash
set -euo pipefail
cd project
git init -q
git add -A
git -c user.name=agent -c user.email=agent@example.org commit -q -m "initial import"
