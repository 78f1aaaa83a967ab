#!/usr/bin/env python3
"""A department system built from Confluent's stock parts: AvroSerializer (schema
fetched from the hub's registry, Confluent wire format), Ed25519 signature per
docs/signing.md (v3: over the whole value), published with confluent-kafka's Producer;
then AvroDeserializer reads the records back from the topic. Used by the end-to-end
suite.

Reads a JSON job on stdin:
  {"bootstrap", "topic", "registry_url", "token", "key_file", "key_id", "department",
   "record_type", "records": [{"record_id", "subject", "fields": {...}}],
   "reader_schema": optional, the schema to read back with (default: the writer's)}
Dates in "fields" are ISO strings (YYYY-MM-DD); they are sent as Avro dates.
Prints {"published": n, "read_back": [{"record_id", "schema_id", "fields"}]}.
"""
import datetime
import json
import struct
import sys
import time

from confluent_kafka import Consumer, Producer
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from publish_signed import load_key, signing_input  # docs/signing.md, written once

DATE_FIELDS = {"date_of_birth", "issue_date"}


def as_avro(fields: dict) -> dict:
    return {
        name: datetime.date.fromisoformat(value) if name in DATE_FIELDS and value else value
        for name, value in fields.items()
    }


def as_json(fields: dict) -> dict:
    return {
        name: value.isoformat() if isinstance(value, datetime.date) else value
        for name, value in fields.items()
    }


def main() -> int:
    job = json.load(sys.stdin)
    key = load_key(job["key_file"])
    registry = SchemaRegistryClient({
        "url": job["registry_url"],
        "bearer.auth.credentials.source": "STATIC_TOKEN",
        "bearer.auth.token": job["token"],
        "bearer.auth.logical.cluster": "datarun",
    })
    # The schema comes from the registry (the subject's latest version), as a
    # department's serializer configured not to register schemas itself gets it.
    serializer = AvroSerializer(
        registry,
        schema_str=None,
        conf={"auto.register.schemas": False, "use.latest.version": True},
    )
    producer = Producer({"bootstrap.servers": job["bootstrap"], "enable.idempotence": True, "acks": "all"})
    failures = []

    def delivered(error, message):
        if error is not None:
            failures.append(str(error))

    context = SerializationContext(job["topic"], MessageField.VALUE)
    for record in job["records"]:
        value = serializer(as_avro(record["fields"]), context)
        envelope = {
            "record_id": record["record_id"],
            "department": job["department"],
            "record_type": job["record_type"],
            "subject": record["subject"],
            "signed_at_millis": int(time.time() * 1000),
            "key_id": job["key_id"],
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
        producer.produce(job["topic"], key=record["subject"].encode(), value=value,
                         headers=headers, on_delivery=delivered)
    producer.flush(30)
    if failures:
        print(json.dumps({"failures": failures}))
        return 1

    # A reader of a newer version (job["reader_schema"]) gets older records resolved to
    # it: the writer's schema comes from the registry by the id in the value.
    deserializer = AvroDeserializer(registry, schema_str=job.get("reader_schema"))
    consumer = Consumer({
        "bootstrap.servers": job["bootstrap"],
        "group.id": f"python-reader-{time.time_ns()}",
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
    })
    consumer.subscribe([job["topic"]])
    wanted = {record["record_id"] for record in job["records"]}
    read_back = []
    deadline = time.time() + 60
    while wanted and time.time() < deadline:
        message = consumer.poll(1.0)
        if message is None or message.error():
            continue
        headers = dict(message.headers() or [])
        record_id = headers.get("datarun-record-id", b"").decode()
        if record_id not in wanted:
            continue
        wanted.discard(record_id)
        value = message.value()
        fields = deserializer(value, SerializationContext(message.topic(), MessageField.VALUE))
        read_back.append({
            "record_id": record_id,
            "schema_id": struct.unpack(">I", value[1:5])[0],
            "fields": as_json(fields),
        })
    consumer.close()
    print(json.dumps({"published": len(job["records"]), "read_back": read_back}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
