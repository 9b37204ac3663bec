"""Amending an incident (PATCH, protocol 1.1) and "I can't go after all" (a withdraw),
driven as an outside client would: the engine as a process, plain paho for the phones
and the observer, plain HTTP for the control room."""

from __future__ import annotations

from e2e_harness import TOKEN, Engine, Field, http, uid

XIAOYING = (30.2591, 120.1698)
SOUTH = (30.2564, 120.1698)  # 300 m south


def patch(engine: Engine, iid: str, body: object, token: str | None = TOKEN) -> tuple[int, dict]:
    result = http("PATCH", f"{engine.base}/api/incidents/{iid}", body, token=token)
    return result.status, result.json


def test_patch_moves_the_incident_for_outside_clients(engine: Engine, field: Field) -> None:
    near, south = uid("near"), uid("south")
    field.status(near, lat=XIAOYING[0] + 0.0006, lon=XIAOYING[1], skills=["first_aid"],
                 mode="walk")  # fmt: skip
    field.status(south, lat=SOUTH[0] - 0.0005, lon=SOUTH[1], skills=["first_aid"], mode="walk")
    field.sync()
    iid = uid("amend")
    field.report({"id": iid, "kind": "fall", "lat": XIAOYING[0], "lon": XIAOYING[1],
                  "address": "小营巷 12 号"})  # fmt: skip
    alert = field.wait_alert(near, iid)
    field.reply(near, alert["alert_id"], "accept")
    field.wait_assignment(near, iid, "go")

    # What an outside client gets wrong is refused with what to fix.
    assert patch(engine, iid, {"address": "x"}, token=None)[0] == 401
    assert patch(engine, iid, {"address": "x"}, token="wrong")[0] == 403
    status, err = patch(engine, iid, b"")
    assert status == 400
    assert "empty" in err["error"]
    status, err = patch(engine, iid, {"kind": "flood"})
    assert (status, "kind" in err["error"]) == (400, True)
    status, err = patch(engine, iid, {"lat": 30.25})
    assert (status, "'lon'" in err["error"]) == (400, True)

    # A cardiac arrest two streets south, two people needed.
    status, body = patch(engine, iid, {"lat": SOUTH[0], "lon": SOUTH[1], "kind": "cardiac_arrest",
                                       "address": "小营巷 40 号", "responders": 2,
                                       "by": "outside"})  # fmt: skip
    assert status == 200, body
    assert (body["kind"], body["priority"], body["responders_needed"]) == ("cardiac_arrest", 1, 2)
    go_topic = field.t("volunteers", near, "assignment")
    update = field.all.wait_for(
        lambda m: m.topic == go_topic and m.json["reason"] == "location updated", 5.0, "(update)"
    ).json
    assert (update["lat"], update["lon"], update["address"]) == (SOUTH[0], SOUTH[1], "小营巷 40 号")
    assert update["role"] == "primary"
    # the search for the second starts again from the new place: south (alerted already
    # for the old place, stood down "incident moved") is asked again, with the new place
    topic = field.t("volunteers", south, "alert")
    moved = field.all.wait_for(
        lambda m: m.topic == topic and m.json["lat"] == SOUTH[0], 5.0, "(alert at the new place)"
    ).json
    assert (moved["incident_id"], moved["lon"]) == (iid, SOUTH[1])
    assert any(a["reason"] == "incident moved" for a in field.assignments(south, iid))
    state = field.wait_state(iid, lambda s: s["lat"] == SOUTH[0] and s["kind"] == "cardiac_arrest")
    assert state["responders_needed"] == 2

    # Ended: 409; the reporter's resend with another body is still a conflict.
    assert engine.post(f"/api/incidents/{iid}/cancel", {"by": "outside"}, token=TOKEN).status == 200
    status, err = patch(engine, iid, {"address": "y"})
    assert status == 409
    assert "ended" in err["error"]
    field.report({"id": iid, "kind": "fall", "lat": XIAOYING[0], "lon": XIAOYING[1],
                  "address": "somewhere else"})  # fmt: skip
    rejected = field.wait_rejected(lambda r: r["id"] == iid)
    assert rejected["code"] == "conflict"


def test_withdraw_for_outside_clients(engine: Engine, field: Field) -> None:
    first, second = uid("wd1"), uid("wd2")
    field.status(first, lat=XIAOYING[0] + 0.0004, lon=XIAOYING[1], skills=["first_aid"],
                 mode="walk")  # fmt: skip
    field.status(second, lat=XIAOYING[0] + 0.0009, lon=XIAOYING[1], skills=["first_aid"],
                 mode="walk")  # fmt: skip
    field.sync()
    iid = uid("wd")
    field.report({"id": iid, "kind": "medical", "lat": XIAOYING[0], "lon": XIAOYING[1]})
    alert = field.wait_alert(first, iid)
    # not accepted yet: rejected, with a reason
    field.reply(first, alert["alert_id"], "withdraw")
    rejected = field.wait_rejected(lambda r: r["id"] == alert["alert_id"])
    assert rejected["code"] == "not_accepted"
    assert "decline" in rejected["reason"]
    # another volunteer's alert: rejected too
    field.reply(second, alert["alert_id"], "withdraw")
    rejected = field.wait_rejected(
        lambda r: r["id"] == alert["alert_id"] and r["code"] == "not_alerted"
    )
    field.reply(first, alert["alert_id"], "accept")
    field.wait_assignment(first, iid, "go")
    field.reply(first, alert["alert_id"], "withdraw")
    down = field.wait_assignment(first, iid, "stand_down")
    assert down["reason"] == "withdrawn"
    state = field.wait_state(iid, lambda s: s["responders"] and s["responders"][0]["released"])
    assert state["responders"][0]["volunteer_id"] == first
    detail = engine.get(f"/api/incidents/{iid}").json
    assert [e["volunteer_id"] for e in detail["events"] if e["type"] == "withdrawn"] == [first]
    # the place is open again: the second (alerted too, or alerted now) can take it
    alert2 = field.wait_alert(second, iid)
    field.reply(second, alert2["alert_id"], "accept")
    assert field.wait_assignment(second, iid, "go")["role"] == "primary"
