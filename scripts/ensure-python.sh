#!/usr/bin/env bash
# The Python packages the end-to-end suite uses as a department's own tooling: the
# confluent-kafka client with its schema-registry and Avro serializer extras, and
# cryptography for Ed25519 signatures.
set -euo pipefail
if python3 -c 'import confluent_kafka, cryptography; from confluent_kafka.schema_registry.avro import AvroSerializer' 2>/dev/null; then
  exit 0
fi
python3 -m pip install --quiet --disable-pip-version-check 'confluent-kafka[avro,schemaregistry]>=2.6' 'cryptography>=42'
