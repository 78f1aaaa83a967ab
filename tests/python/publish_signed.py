#!/usr/bin/env python3
"""A department system in another language: builds the signing input exactly as
docs/signing.md specifies, signs it with Ed25519, and publishes with the real
third-party Kafka client confluent-kafka. Used by the end-to-end suite.

Reads a JSON job on stdin:
  {"bootstrap": "...", "topic": "...",
   "payload_hex": "<the Kafka value: 0x00, 4-byte schema id, Avro body>",
   "seed_hex": "..." or "key_file": "<PKCS#8 file, DER or PEM, as `datarun key generate` writes>",
   "envelope": {record_id, department, record_type, subject, signed_at_millis, key_id},
   "variants": ["valid", "payload_flipped", "signature_flipped"]}
Each variant is published with record id "<record_id>-<variant>".
"""
import json
import pathlib
import sys

from confluent_kafka import Producer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

# The signing input as docs/signing.md specifies it, written once in Python: in the
# department example that departments copy, so the suite tests what they run.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "connectors/examples/python"))
from publish import load_key, signing_input  # noqa: E402


def main() -> int:
    job = json.load(sys.stdin)
    if "key_file" in job:
        key = load_key(job["key_file"])
    else:
        key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(job["seed_hex"]))
    producer = Producer({"bootstrap.servers": job["bootstrap"], "enable.idempotence": True, "acks": "all"})
    failures = []

    def delivered(error, message):
        if error is not None:
            failures.append(str(error))

    for variant in job["variants"]:
        envelope = dict(job["envelope"])
        envelope["record_id"] = f'{envelope["record_id"]}-{variant}'
        payload = bytearray.fromhex(job["payload_hex"])
        signature = bytearray(key.sign(signing_input(envelope, bytes(payload))))
        if variant == "payload_flipped":
            payload[len(payload) // 2] ^= 0x01
        elif variant == "signature_flipped":
            signature[10] ^= 0x01
        headers = [
            ("datarun-record-id", envelope["record_id"]),
            ("datarun-department", envelope["department"]),
            ("datarun-record-type", envelope["record_type"]),
            ("datarun-subject", envelope["subject"]),
            ("datarun-signed-at", str(envelope["signed_at_millis"])),
            ("datarun-key-id", envelope["key_id"]),
            ("datarun-signature", bytes(signature).hex()),
        ]
        producer.produce(job["topic"], key=envelope["subject"], value=bytes(payload), headers=headers, on_delivery=delivered)
    remaining = producer.flush(30)
    if remaining or failures:
        print(f"not delivered: {remaining} pending, errors {failures}", file=sys.stderr)
        return 1
    print(json.dumps({"published": len(job["variants"])}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
