"""Reads hookbus's messages as CloudEvents with the CloudEvents Python SDK, the way a
consumer in another language would, and prints one JSON line per event.

Usage:
  cloudevents_consumer.py kafka BROKERS TOPIC[,TOPIC…] PARTITIONS COUNT
  cloudevents_consumer.py nats URL STREAM COUNT

Kafka messages are parsed with the SDK's Kafka protocol binding (binary mode, ce_ headers);
NATS messages with its HTTP binding, whose binary mode (ce- headers, content-type) the NATS
protocol binding shares. Any message the SDK refuses fails the script.
"""
import asyncio
import json
import sys
import time

from cloudevents.core.bindings import http as ce_http
from cloudevents.core.bindings import kafka as ce_kafka


def line(event):
    data = event.get_data()
    if isinstance(data, (bytes, str)):
        data = json.loads(data)
    return json.dumps(
        {
            "specversion": event.get_specversion(),
            "id": event.get_id(),
            "source": event.get_source(),
            "type": event.get_type(),
            # The SDK parses `time` (RFC 3339) into a datetime; as Unix milliseconds here.
            "time_ms": round(event.get_time().timestamp() * 1000) if event.get_time() else None,
            "subject": event.get_subject(),
            "datacontenttype": event.get_datacontenttype(),
            "dataschema": event.get_dataschema(),
            "data_id": data["id"],
        }
    )


def kafka(brokers, topics, partitions, count):
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer(
        {"bootstrap.servers": brokers, "group.id": "cloudevents-test", "enable.auto.commit": False}
    )
    consumer.assign(
        [TopicPartition(t, p, 0) for t in topics.split(",") for p in range(int(partitions))]
    )
    deadline = time.time() + 60
    seen = 0
    while seen < count:
        if time.time() > deadline:
            sys.exit(f"only {seen} of {count} messages")
        msg = consumer.poll(0.5)
        if msg is None or msg.error():
            continue
        headers = {k: v for k, v in (msg.headers() or [])}
        event = ce_kafka.from_binary_event(
            ce_kafka.KafkaMessage(headers=headers, key=msg.key(), value=msg.value())
        )
        print(line(event), flush=True)
        seen += 1
    consumer.close()


async def nats(url, stream, count):
    import nats as nats_py

    nc = await nats_py.connect(url)
    js = nc.jetstream()
    for seq in range(1, count + 1):
        msg = await js.get_msg(stream, seq)
        headers = dict(msg.headers or {})
        event = ce_http.from_binary_event(ce_http.HTTPMessage(headers=headers, body=msg.data))
        print(line(event), flush=True)
    await nc.close()


if __name__ == "__main__":
    if sys.argv[1] == "kafka":
        kafka(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]))
    else:
        asyncio.run(nats(sys.argv[2], sys.argv[3], int(sys.argv[4])))
