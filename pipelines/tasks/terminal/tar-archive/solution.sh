#!/bin/bash
set -euo pipefail
tar -czf logs.tar.gz logs/*.log
