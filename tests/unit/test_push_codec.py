"""Web Push's pure parts: the subscription and reply bodies (codec), the reply tokens,
and the payload a push carries (dispatch/push.py).

The push itself: tests/integration/test_push.py.
"""

from __future__ import annotations

import base64
from typing import Any

import orjson
import pytest

from dispatch.codec import Codec
from dispatch.config import load_config
from dispatch.effects import SendAlert
from dispatch.errors import BadMessage, Reason
from dispatch.metrics import Metrics
from dispatch.model import Answer
from dispatch.push import Pusher, PushKeys, make_keys
from dispatch.store import Store

TOPIC = "r/volunteers/v1/push"
P256DH = base64.urlsafe_b64encode(b"\x04" + bytes(range(64))).rstrip(b"=").decode()
AUTH = base64.urlsafe_b64encode(bytes(16)).rstrip(b"=").decode()
GOOD = {
    "endpoint": "https://fcm.googleapis.com/fcm/send/x",
    "keys": {"p256dh": P256DH, "auth": AUTH},
}


def _decode(body: Any, topic: str = TOPIC) -> Any:
    return Codec(root="r").decode_push(topic, orjson.dumps(body))


def test_a_browser_subscription_is_read_as_raw_keys() -> None:
    sub = _decode(GOOD)
    assert sub.volunteer_id == "v1"
    assert sub.endpoint == GOOD["endpoint"]
    assert sub.p256dh[0] == 4
    assert len(sub.p256dh) == 65
    assert sub.auth == bytes(16)
    assert not sub.remove
    gone = _decode({"endpoint": GOOD["endpoint"], "remove": True})
    assert gone.remove
    assert gone.p256dh == b""


@pytest.mark.parametrize(
    ("body", "code", "words"),
    [
        ([], Reason.NOT_OBJECT, "object"),
        ({"keys": GOOD["keys"]}, Reason.MISSING_FIELD, "endpoint"),
        ({**GOOD, "endpoint": 5}, Reason.WRONG_TYPE, "endpoint"),
        ({**GOOD, "endpoint": "mailto:x@y"}, Reason.OUT_OF_RANGE, "endpoint"),
        ({**GOOD, "endpoint": "https://u:p@fcm.googleapis.com/"}, Reason.OUT_OF_RANGE, "endpoint"),
        ({**GOOD, "endpoint": "https://a b/"}, Reason.OUT_OF_RANGE, "endpoint"),
        ({"endpoint": GOOD["endpoint"]}, Reason.MISSING_FIELD, "keys"),
        ({**GOOD, "keys": {"auth": AUTH}}, Reason.MISSING_FIELD, "p256dh"),
        ({**GOOD, "keys": {"p256dh": P256DH[:-4], "auth": AUTH}}, Reason.OUT_OF_RANGE, "65"),
        ({**GOOD, "keys": {"p256dh": "A" + P256DH[1:], "auth": AUTH}}, Reason.OUT_OF_RANGE, "0x04"),
        ({**GOOD, "keys": {"p256dh": P256DH, "auth": AUTH + "AAAA"}}, Reason.OUT_OF_RANGE, "16"),
        ({**GOOD, "remove": "yes"}, Reason.WRONG_TYPE, "remove"),
    ],
)
def test_a_bad_subscription_says_what_to_fix(body: Any, code: Reason, words: str) -> None:
    with pytest.raises(BadMessage) as err:
        _decode(body)
    assert err.value.code == code
    assert words in err.value.reason
    assert err.value.topic == TOPIC


def test_a_subscription_is_bounded_and_on_a_volunteer_topic() -> None:
    codec = Codec(root="r")
    with pytest.raises(BadMessage) as err:
        codec.decode_push(TOPIC, b" " * 5000)
    assert err.value.code == Reason.TOO_LARGE
    with pytest.raises(BadMessage):
        codec.decode_push("r/volunteers/bad id/push", orjson.dumps(GOOD))
    assert codec.push_volunteer("r/volunteers/v1/push") == "v1"
    assert codec.push_volunteer("r/volunteers/v1/status") is None
    assert codec.push_volunteer("other/volunteers/v1/push") is None
    assert codec.push_filter() == ("r/volunteers/+/push", 1)


def test_a_reply_body_names_volunteer_answer_and_token() -> None:
    codec = Codec(root="r")
    body = orjson.dumps({"volunteer_id": "v1", "answer": "decline", "token": "t"})
    assert codec.decode_push_reply(body, "/x") == ("v1", Answer.DECLINE, "t")
    for bad in ({"answer": "accept", "token": "t"}, {"volunteer_id": "v1", "token": "t"},
                {"volunteer_id": "v1", "answer": "accept"},
                {"volunteer_id": "v1", "answer": "accept", "token": "t" * 200}):  # fmt: skip
        with pytest.raises(BadMessage):
            codec.decode_push_reply(orjson.dumps(bad), "/x")


def test_a_reply_token_is_good_for_one_alert_of_one_volunteer() -> None:
    stored = orjson.loads(make_keys())
    keys = PushKeys(stored["vapid_pem"].encode(), bytes.fromhex(stored["secret"]))
    token = keys.token("v1", "a1")
    assert keys.check("v1", "a1", token)
    assert not keys.check("v2", "a1", token)
    assert not keys.check("v1", "a2", token)
    other = PushKeys(stored["vapid_pem"].encode(), b"another secret")
    assert not other.check("v1", "a1", token)
    assert len(base64.urlsafe_b64decode(keys.public_key + "==")) == 65


def test_the_payload_is_the_alert_and_stays_small() -> None:
    config = load_config()
    pusher = Pusher(config, Store.from_url("redis://127.0.0.1:1/0"), Codec(), Metrics())
    stored = orjson.loads(make_keys())
    keys = PushKeys(stored["vapid_pem"].encode(), bytes.fromhex(stored["secret"]))
    alert = SendAlert(
        incident_id="i1", volunteer_id="v1", alert_id="a1", kind="fire", priority=1,
        lat=30.25, lon=120.17, address="小营巷" * 40, distance_m=123.456, eta_s=88.88,
        expires_at=1_800_000_000.0, description="很长的描述" * 400, wave=1,
        skills=("first_aid",), expiry_s=90,
    )  # fmt: skip
    data = pusher.payload(alert, keys)
    assert len(data) <= 3000
    body = orjson.loads(data)
    assert body["alert_id"] == "a1"
    assert body["distance_m"] == 123.5
    assert body["reply_url"] == "/api/alerts/a1/reply"
    assert keys.check("v1", "a1", body["reply_token"])
