#!/bin/bash
set -eu
DEST=backup
mkdir -p "$DEST"
cp data.txt "$TARGET_DIR/data.txt.bak"
