#!/usr/bin/env python3
"""The spoofed-source flood of docs/reliability.md row 3, as a measurement (not a test).

Produces N JSON flows to TOPIC (4 partitions, created if missing), each from its own address
counted up from 198.18.0.0, all to 10.77.0.1:443 as unanswered SYNs, spread over SPAN seconds of
event time ending now. Then run the pipeline on it and read its peak RSS, e.g.

    pip install confluent-kafka
    tests/bench/spoofed_sources.py 127.0.0.1:19092 spoof.1m.flows 1000000 200
    /usr/bin/time -v target/release/peergraph --config spoof.toml --log warn run --stop-at-end

with spoof.toml naming the topic (topics.flows), its own output topics and group id, and
input.max_sources (0: no cap).
"""
import json
import sys
import time

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

brokers, topic, n, span = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
for future in AdminClient({"bootstrap.servers": brokers}).create_topics([NewTopic(topic, 4, 1)]).values():
    try:
        future.result()
    except Exception as error:  # already there
        print(error, file=sys.stderr)
producer = Producer({"bootstrap.servers": brokers, "linger.ms": 50, "queue.buffering.max.messages": 1000000})
start = int(time.time() * 1000) - span * 1000
base = (198 << 24) | (18 << 16)
for i in range(n):
    a = base + i
    end = start + (i * span * 1000) // n
    flow = {
        "sensor_id": "edge", "start_ms": end - 10, "end_ms": end,
        "src_addr": f"{(a >> 24) & 255}.{(a >> 16) & 255}.{(a >> 8) & 255}.{a & 255}", "src_port": 40000 + i % 20000,
        "dst_addr": "10.77.0.1", "dst_port": 443, "protocol": 6, "bytes_out": 60, "bytes_in": 0,
        "packets_out": 1, "packets_in": 0, "tcp_flags": 2, "conn_state": "S0",
    }
    while True:
        try:
            producer.produce(topic, json.dumps(flow).encode(), partition=i % 4)
            break
        except BufferError:
            producer.poll(0.1)
producer.flush(60)
print(f"produced {n} flows from {n} sources to {topic}")
