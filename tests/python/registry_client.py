#!/usr/bin/env python3
"""A department's tooling against the hub's schema registry: Confluent's own Python
SchemaRegistryClient (confluent-kafka), unmodified, pointed at http://<hub>/registry with
a datarun token. Used by the end-to-end suite.

Reads a JSON job on stdin:
  {"url": "http://.../registry", "token": "...", "subject": "...",
   "compatible": "<avsc>", "incompatible": "<avsc>"}
Prints one JSON object with what the client saw.
"""
import json
import sys

from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError


def main() -> int:
    job = json.load(sys.stdin)
    client = SchemaRegistryClient({
        "url": job["url"],
        "bearer.auth.credentials.source": "STATIC_TOKEN",
        "bearer.auth.token": job["token"],
        "bearer.auth.logical.cluster": "datarun",
    })
    subject = job["subject"]
    seen = {"subjects": client.get_subjects()}

    latest = client.get_latest_version(subject)
    seen["latest"] = {"id": latest.schema_id, "version": latest.version}

    schema_id = client.register_schema(subject, Schema(job["compatible"], "AVRO"))
    seen["registered_id"] = schema_id
    seen["registered_again_id"] = client.register_schema(subject, Schema(job["compatible"], "AVRO"))

    fetched = client.get_schema(schema_id)
    seen["fetched_equal"] = json.loads(fetched.schema_str) == json.loads(job["compatible"])
    seen["fetched_type"] = fetched.schema_type

    found = client.lookup_schema(subject, Schema(job["compatible"], "AVRO"))
    seen["lookup"] = {"id": found.schema_id, "version": found.version}
    seen["versions"] = client.get_versions(subject)

    seen["compatible_says"] = client.test_compatibility(subject, Schema(job["incompatible"], "AVRO"))
    try:
        client.register_schema(subject, Schema(job["incompatible"], "AVRO"))
        seen["incompatible"] = "registered"
    except SchemaRegistryError as error:
        seen["incompatible"] = {
            "http_status": error.http_status_code,
            "error_code": error.error_code,
            "message": error.error_message,
        }
    seen["compatibility"] = client.get_compatibility()
    try:
        client.get_schema(999999)
        seen["unknown_id"] = "found"
    except SchemaRegistryError as error:
        seen["unknown_id"] = {"http_status": error.http_status_code, "error_code": error.error_code}
    print(json.dumps(seen))
    return 0


if __name__ == "__main__":
    sys.exit(main())
