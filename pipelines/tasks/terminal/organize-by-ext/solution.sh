#!/bin/bash
set -euo pipefail
for f in inbox/*.*; do
  ext="${f##*.}"
  mkdir -p "$ext"
  mv "$f" "$ext/"
done
