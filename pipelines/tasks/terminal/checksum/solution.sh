#!/bin/bash
set -euo pipefail
sha256sum payload.bin > payload.sha256
