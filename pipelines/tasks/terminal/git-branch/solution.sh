#!/bin/bash
set -euo pipefail
cd app
git init -q
git add -A
git -c user.name=agent -c user.email=agent@example.org commit -q -m base
git checkout -q -b feature
echo on > feature.txt
git add feature.txt
git -c user.name=agent -c user.email=agent@example.org commit -q -m feature
