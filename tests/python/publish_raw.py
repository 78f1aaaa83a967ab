#!/usr/bin/env python3
"""A hostile (or merely broken) department: publishes messages byte for byte as given,
with the real third-party Kafka client confluent-kafka, to a chosen partition. Used by
the end-to-end suite to send poison shapes that the hub's own publisher would refuse
to build (giant or repeated headers, oversized keys and values, null values).

Reads a JSON job on stdin:
  {"bootstrap": "...", "topic": "...",
   "messages": [{"partition": 0, "key_hex": "..." | null, "value_hex": "..." | null,
                 "headers": [["name", "value hex"], ...]}]}
Messages are delivered in the order given (one in flight at a time per partition).
"""
import json
import sys

from confluent_kafka import Producer


def main() -> int:
    job = json.load(sys.stdin)
    producer = Producer(
        {
            "bootstrap.servers": job["bootstrap"],
            "acks": "all",
            "enable.idempotence": True,
            # Poison is the point: let the client send what the hub must refuse.
            "message.max.bytes": 8 * 1024 * 1024,
        }
    )
    failures = []

    def delivered(error, message):
        if error is not None:
            failures.append(str(error))

    for message in job["messages"]:
        key = bytes.fromhex(message["key_hex"]) if message.get("key_hex") is not None else None
        value = bytes.fromhex(message["value_hex"]) if message.get("value_hex") is not None else None
        headers = [(name, bytes.fromhex(value_hex)) for name, value_hex in message["headers"]]
        producer.produce(
            job["topic"],
            key=key,
            value=value,
            headers=headers,
            partition=message["partition"],
            on_delivery=delivered,
        )
        producer.poll(0)
    remaining = producer.flush(60)
    if remaining or failures:
        print(f"not delivered: {remaining} pending, errors {failures}", file=sys.stderr)
        return 1
    print(json.dumps({"published": len(job["messages"])}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
