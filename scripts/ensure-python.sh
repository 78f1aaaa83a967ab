#!/usr/bin/env bash
# The Python packages the end-to-end suite uses as a department's own tooling.
set -euo pipefail
if python3 -c 'import confluent_kafka, cryptography' 2>/dev/null; then
  exit 0
fi
python3 -m pip install --quiet --disable-pip-version-check 'confluent-kafka>=2.6' 'cryptography>=42'
