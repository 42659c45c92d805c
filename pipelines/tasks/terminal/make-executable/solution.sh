#!/bin/bash
set -euo pipefail
printf '#!/bin/sh\necho "Hello, r2vcal"\n' > hello.sh
chmod +x hello.sh
