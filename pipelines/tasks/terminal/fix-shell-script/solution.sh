#!/bin/bash
set -euo pipefail
sed -i 's/\$TARGET_DIR/$DEST/' backup.sh
bash backup.sh
