"""An MQTT flood of bogus messages from a process of its own (issue 13, part "attacks").

Owns: the hostile traffic of ``tests/e2e/test_attack_flood.py``. It connects over mutual TLS
with the certificate it is given (a province operator's, as stolen from a desk laptop: the only
identity the ACL lets publish on a station's topics) and publishes QoS 0, paced to ``rate``
messages a second for ``seconds``, a seeded mix of:

- ``random-bytes``: 16-600 random bytes;
- ``bad-json``: an envelope's opening cut off mid-document;
- ``bad-signature``: the real accepted envelope with one signature bit flipped, or its body
  changed under the old signature (validly shaped, never validly signed);
- ``replay``: the real accepted envelope itself, again;
- ``retained-junk``: random bytes published *retained* on a few playlist topics;
- ``oversize``: one byte over the 3 MiB envelope cap (a few a second at most: bandwidth).

Everything is decided by ``random.Random(seed)``; nothing sleeps at random. It runs apart from
the test's process so that the paho publishing loop and the test's own threads (the collector,
the RSS sampler) do not share one GIL. At the end it clears the retained junk and writes what it
sent, by kind, to the ``out`` file. Usage: ``python -m tests.harness.flooder SPEC.json``.
"""

from __future__ import annotations

import base64
import json
import random
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from paho.mqtt.client import Client, ConnectFlags, MQTTv5
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

ENVELOPE_CAP = 3 * 1024 * 1024
TICK_S = 0.01  # the pacing step: rate/100 messages every 10 ms
POOL = 64  # distinct payloads made per kind (made before the clock starts)
JUNK_TOPICS = 4
# Relative weights of the kinds; oversize is capped separately (OVERSIZE_PER_S).
WEIGHTS = {"random-bytes": 30, "bad-json": 20, "bad-signature": 30, "replay": 15,
           "retained-junk": 5}  # fmt: skip
OVERSIZE_PER_S = 1.0


def flip_signature(envelope: bytes, rng: random.Random) -> bytes:
    doc = json.loads(envelope)
    raw = bytearray(base64.b64decode(doc["signatures"][0]["sig"]))
    raw[rng.randrange(len(raw))] ^= 1 << rng.randrange(8)
    doc["signatures"][0]["sig"] = base64.b64encode(bytes(raw)).decode()
    return json.dumps(doc).encode()


def change_body(envelope: bytes, rng: random.Random) -> bytes:
    doc = json.loads(envelope)
    body = json.loads(base64.b64decode(doc["payload"]))
    body["version"] = int(body["version"]) + 1 + rng.randrange(1000)
    doc["payload"] = base64.b64encode(json.dumps(body).encode()).decode()
    return json.dumps(doc).encode()


def pools(envelope: bytes, rng: random.Random) -> dict[str, list[bytes]]:
    made: dict[str, list[bytes]] = {
        "random-bytes": [rng.randbytes(rng.randint(16, 600)) for _ in range(POOL)],
        "bad-json": [envelope[: rng.randint(1, len(envelope) - 2)] for _ in range(POOL)],
        "bad-signature": [
            (flip_signature if n % 2 else change_body)(envelope, rng) for n in range(POOL)
        ],
        "replay": [envelope],
        "retained-junk": [rng.randbytes(rng.randint(16, 200)) for _ in range(POOL)],
    }
    return made


def run(spec: dict[str, Any]) -> dict[str, Any]:
    rng = random.Random(spec["seed"])
    envelope = Path(spec["envelope"]).read_bytes()
    payloads = pools(envelope, rng)
    oversize = b"{" + b" " * ENVELOPE_CAP  # one byte over the cap; valid-looking start
    topics: list[str] = spec["topics"]
    junk_topics = [f"{spec['junk_prefix']}/junk-{n}" for n in range(JUNK_TOPICS)]
    client = Client(
        callback_api_version=CallbackAPIVersion.VERSION2, client_id=spec["cn"], protocol=MQTTv5
    )
    client.tls_set(ca_certs=spec["ca"], certfile=spec["cert"], keyfile=spec["key"])
    connected = threading.Event()

    def on_connect(
        c: Client, u: Any, f: ConnectFlags, rc: ReasonCode, p: Properties | None
    ) -> None:
        if not rc.is_failure:
            connected.set()

    client.on_connect = on_connect
    client.connect(spec["host"], spec["port"])
    client.loop_start()
    if not connected.wait(10):
        raise SystemExit("the flooder could not connect")
    kinds = list(WEIGHTS)
    weights = [WEIGHTS[k] for k in kinds]
    sent: Counter[str] = Counter()
    rate, seconds = float(spec["rate"]), float(spec["seconds"])
    oversize_per_s = float(spec.get("oversize_per_s", OVERSIZE_PER_S))
    publish: Callable[..., Any] = client.publish
    started = time.monotonic()
    oversize_sent = 0
    while (now := time.monotonic()) - started < seconds:
        due = int((now - started) * rate) - sum(sent.values())
        for kind in rng.choices(kinds, weights, k=max(0, due)):
            payload = rng.choice(payloads[kind])
            if kind == "retained-junk":
                publish(rng.choice(junk_topics), payload, qos=0, retain=True)
            else:
                publish(rng.choice(topics), payload, qos=0)
            sent[kind] += 1
        if oversize_sent < (now - started) * oversize_per_s:
            publish(topics[0], oversize, qos=0)
            oversize_sent += 1
        time.sleep(TICK_S)
    elapsed = time.monotonic() - started
    for topic in junk_topics:  # a retained message outlives the flood: clear it (QoS 1, acked)
        client.publish(topic, b"", qos=1, retain=True).wait_for_publish(10)
    client.disconnect()
    client.loop_stop()
    total = sum(sent.values()) + oversize_sent
    return {
        "sent": {**dict(sorted(sent.items())), "oversize": oversize_sent},
        "total": total,
        "seconds": round(elapsed, 3),
        "rate_per_s": round(total / elapsed, 1),
    }


def main(argv: list[str]) -> int:
    spec = json.loads(Path(argv[0]).read_text())
    result = run(spec)
    Path(spec["out"]).write_text(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
