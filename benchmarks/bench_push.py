"""Micro-benchmark of one Web Push's CPU work on the engine's event loop.

What a push worker does on the loop for each browser before the request goes out
(dispatch/push.py): the payload (JSON), the RFC 8291 encryption (a fresh P-256 key,
ECDH, HKDF, AES-128-GCM: pywebpush + http_ece) and the VAPID signature (ES256:
py-vapid). The request itself waits on the network, off the loop. Compare with
`bench_core.py`'s decision time, measured in the same session.

    .venv/bin/python benchmarks/bench_push.py --pushes 2000
"""

from __future__ import annotations

import argparse
import base64
import os
import statistics
import time

import orjson
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from pywebpush import WebPusher

from dispatch.codec import Codec
from dispatch.config import load_config
from dispatch.effects import SendAlert
from dispatch.metrics import Metrics
from dispatch.push import Pusher, PushKeys, make_keys
from dispatch.store import Store


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pushes", type=int, default=2000)
    args = parser.parse_args()
    stored = orjson.loads(make_keys())
    keys = PushKeys(stored["vapid_pem"].encode(), bytes.fromhex(stored["secret"]))
    pusher = Pusher(load_config(), Store.from_url("redis://127.0.0.1:1/0"), Codec(), Metrics())
    browser = ec.generate_private_key(ec.SECP256R1()).public_key()
    sub = {
        "endpoint": "https://fcm.googleapis.com/fcm/send/bench",
        "keys": {
            "p256dh": _b64(
                browser.public_bytes(
                    serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
                )
            ),
            "auth": _b64(os.urandom(16)),
        },
    }
    alert = SendAlert(
        incident_id="inc-0001", volunteer_id="v-00017", alert_id="al-0001", kind="medical",
        priority=1, lat=30.2591, lon=120.1698, address="小营巷 12 号 3 单元",
        distance_m=412.3, eta_s=296.0, expires_at=time.time() + 90,
        description="老人在楼道里摔倒，意识清醒，腿部疼痛", wave=1, skills=("first_aid",),
        expiry_s=90,
    )  # fmt: skip
    times: dict[str, list[float]] = {
        "payload": [], "encrypt": [], "sign": [], "vapid": [], "total": []
    }  # fmt: skip
    for _ in range(args.pushes):
        t0 = time.perf_counter()
        data = pusher.payload(alert, keys)
        t1 = time.perf_counter()
        WebPusher(sub).encode(data)
        t2 = time.perf_counter()
        keys.vapid.sign(
            {"aud": "https://fcm.googleapis.com", "exp": int(time.time()) + 43200,
             "sub": "mailto:dispatch@example.org"}
        )  # fmt: skip
        t3 = time.perf_counter()
        pusher.vapid_headers(keys, "https://fcm.googleapis.com")  # what a push does: cached
        t4 = time.perf_counter()
        for name, dt in (("payload", t1 - t0), ("encrypt", t2 - t1), ("sign", t3 - t2),
                         ("vapid", t4 - t3), ("total", t2 - t0 + t4 - t3)):  # fmt: skip
            times[name].append(dt * 1e6)
    # sign: one ES256 signature, for reference; vapid: the header as a push gets it
    # (signed once an hour per push service); total = payload + encrypt + vapid.
    print(f"{args.pushes} pushes, µs per push:")
    for name, values in times.items():
        values.sort()
        p99 = values[int(len(values) * 0.99) - 1]
        print(f"  {name:8s} p50 {statistics.median(values):8.1f}  p99 {p99:8.1f}")


if __name__ == "__main__":
    main()
