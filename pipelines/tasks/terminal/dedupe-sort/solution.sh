#!/bin/bash
set -euo pipefail
sort -u names.txt > unique.txt
