#!/usr/bin/env python3
"""Publish records to the datarun hub from a department system written in Python.

Copy this file into your own system; it needs only `confluent-kafka[avro,schemaregistry]`
and `cryptography` from PyPI. It
  1. loads your department's Ed25519 key, made by `datarun key generate` (PKCS#8, DER or PEM)
     and registered in the hub with `datarun key register`;
  2. serialises each record with confluent-kafka's AvroSerializer against the schema the
     hub's registry holds for the record type (Confluent's wire format);
  3. signs the record exactly as docs/signing.md specifies;
  4. publishes it with confluent-kafka's Producer (acks=all, idempotent) and waits until
     the broker acknowledged every record.

Usage:
  python3 publish.py --bootstrap 127.0.0.1:19092 --registry http://127.0.0.1:8080/registry \
      --token "$DEPARTMENT_TOKEN" --key-file health-2026.pk8 --key-id health-2026 \
      --record-type health.birth_certificate records.jsonl

records.jsonl holds one JSON object per line:
  {"record_id": "health-0001", "subject": "<the subject's ID number>", "fields": {...}}
`record_id` is your own stable id for this version of the record (publishing it again is
harmless: the hub stores it once); it must start with your department's id and a dash.
`fields` follow the record type's schema; dates are "YYYY-MM-DD".

Prints {"published": n} and exits 0 once the broker acknowledged every record; exits 1
with the reason otherwise.
"""
import argparse
import datetime
import json
import struct
import sys
import time

from confluent_kafka import Producer
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

# docs/signing.md: the signing input's format and version.
DOMAIN = b"datarun-record-v3\n"


def field(data: bytes) -> bytes:
    """A length-prefixed field: 4-byte big-endian length, then the bytes."""
    return struct.pack(">I", len(data)) + data


def signing_input(envelope: dict, value: bytes) -> bytes:
    parts = [
        envelope["record_id"],
        envelope["department"],
        envelope["record_type"],
        envelope["subject"],
        str(envelope["signed_at_millis"]),
        envelope["key_id"],
    ]
    return DOMAIN + b"".join(field(p.encode("utf-8")) for p in parts) + field(value)


def load_key(path: str) -> Ed25519PrivateKey:
    with open(path, "rb") as handle:
        document = handle.read()
    if document.startswith(b"-----BEGIN"):
        key = serialization.load_pem_private_key(document, password=None)
    else:
        key = serialization.load_der_private_key(document, password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise SystemExit(f"{path} is not an Ed25519 key")
    return key


def schema_dates(registry: SchemaRegistryClient, subject: str) -> set:
    """The fields the registry's latest schema declares as Avro dates."""
    schema = json.loads(registry.get_latest_version(subject).schema.schema_str)
    dates = set()
    for declared in schema["fields"]:
        types = declared["type"] if isinstance(declared["type"], list) else [declared["type"]]
        if any(isinstance(t, dict) and t.get("logicalType") == "date" for t in types):
            dates.add(declared["name"])
    return dates


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--registry", required=True, help="the hub's registry, http://<hub>/registry")
    parser.add_argument("--token", required=True, help="a department token (datarun token issue --role department)")
    parser.add_argument("--key-file", required=True)
    parser.add_argument("--key-id", required=True)
    parser.add_argument("--record-type", required=True, help="<department>.<record>")
    parser.add_argument("--topic-prefix", default="datarun.", help="the hub's kafka.topic_prefix")
    parser.add_argument("records", help="a JSON-lines file of records")
    args = parser.parse_args()

    department = args.record_type.split(".")[0]
    topic = f"{args.topic_prefix}records.{args.record_type}"
    key = load_key(args.key_file)
    registry = SchemaRegistryClient({
        "url": args.registry,
        "bearer.auth.credentials.source": "STATIC_TOKEN",
        "bearer.auth.token": args.token,
        "bearer.auth.logical.cluster": "datarun",
    })
    # The hub's registry owns the schema: use its latest version, never register one.
    serializer = AvroSerializer(
        registry, schema_str=None, conf={"auto.register.schemas": False, "use.latest.version": True}
    )
    dates = schema_dates(registry, f"{topic}-value")
    producer = Producer({"bootstrap.servers": args.bootstrap, "enable.idempotence": True, "acks": "all"})
    failures = []

    def delivered(error, message):
        if error is not None:
            failures.append(str(error))

    context = SerializationContext(topic, MessageField.VALUE)
    published = 0
    with open(args.records, encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            record = json.loads(line)
            fields = {
                name: datetime.date.fromisoformat(value) if name in dates and value else value
                for name, value in record["fields"].items()
            }
            value = serializer(fields, context)
            envelope = {
                "record_id": record["record_id"],
                "department": department,
                "record_type": args.record_type,
                "subject": record["subject"],
                "signed_at_millis": int(time.time() * 1000),
                "key_id": args.key_id,
            }
            signature = key.sign(signing_input(envelope, value))
            headers = [
                ("datarun-record-id", envelope["record_id"]),
                ("datarun-department", envelope["department"]),
                ("datarun-record-type", envelope["record_type"]),
                ("datarun-subject", envelope["subject"]),
                ("datarun-signed-at", str(envelope["signed_at_millis"])),
                ("datarun-key-id", envelope["key_id"]),
                ("datarun-signature", signature.hex()),
            ]
            producer.produce(topic, key=record["subject"].encode(), value=value,
                             headers=headers, on_delivery=delivered)
            producer.poll(0)
            published += 1
    remaining = producer.flush(60)
    if remaining or failures:
        print(f"not acknowledged: {remaining} pending, errors {failures}", file=sys.stderr)
        return 1
    print(json.dumps({"published": published}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
