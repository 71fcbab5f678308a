"""History catch-up (``history_catchup = true``): conversations.history after downtime.

"Down" is a stopped gateway; the restart is a new instance on the same context (same kv),
as a process restart with the same store would be."""

from __future__ import annotations

import asyncio
import logging
import time

import claudemesh_gateway.plugins.slack.history as history_mod
from claudemesh_gateway import GatewayState
from claudemesh_gateway.plugins.slack.history import CURSORS_KEY, RateBucket
from claudemesh_gateway.testing import wait_until

FAST = {"history_catchup": True, "history_rate_per_min": 60000.0}  # no bucket waits in tests


async def caught_up(gw, within: float = 10.0) -> None:
    """Connected, and the catch-up task has finished."""
    h = gw._history
    await wait_until(
        lambda: gw.state == GatewayState.CONNECTED and h._task is not None and h._task.done(),
        within,
        "the catch-up to finish",
    )


async def first_run(make_gateway, **cfg):
    """A first enable, then a stop: the kv holds a cursor; returns the stopped gateway."""
    gw = await make_gateway(**{**FAST, **cfg})
    await caught_up(gw)
    await gw.stop()
    return gw


def msg_id(sk, channel: str, ts: str) -> str:
    return f"slack:slack:{sk.TEAM}:{channel}:{ts}"


async def test_first_enable_fetches_nothing_and_records_a_cursor(make_gateway, fake_slack):
    fake_slack.add_history("C1", "old news", ts=f"{time.time() - 600:.6f}")
    before = time.time()
    gw = await make_gateway(**FAST)
    await caught_up(gw)
    await gw.stop()
    assert fake_slack.history_calls == []
    assert gw.ctx.submitted == []
    cursor = gw.ctx.kv[CURSORS_KEY]["C1"]
    assert before - 1 <= float(cursor) <= time.time()


async def test_messages_posted_while_down_are_submitted_once_oldest_first(make_gateway, fake_slack, sk):
    gw = await first_run(make_gateway)
    cursor = gw.ctx.kv[CURSORS_KEY]["C1"]
    fake_slack.add_history("C1", "before the outage", ts=f"{float(cursor) - 60:.6f}")
    a = fake_slack.add_history("C1", "first")
    fake_slack.add_history("C1", "our own post", user=sk.BOT_USER, bot_id=sk.BOT_ID, app_id=sk.APP_ID)
    fake_slack.add_history("C1", "joined", subtype="channel_join")
    b = fake_slack.add_history("C1", "second <@U2>")
    c = fake_slack.add_history("C1", "broadcast from a thread", subtype="thread_broadcast", thread_ts=a["ts"])

    gw2 = await make_gateway(ctx=gw.ctx, **FAST)
    await caught_up(gw2)
    assert [m.text for m in gw2.ctx.submitted] == ["first", "second @Bob B", "broadcast from a thread"]
    assert [m.id for m in gw2.ctx.submitted] == [msg_id(sk, "C1", x["ts"]) for x in (a, b, c)]
    assert gw2.ctx.submitted[0].sender == "alice" and gw2.ctx.submitted[0].native_id == a["ts"]
    assert gw2.ctx.submitted[2].reply_to == a["ts"]  # a broadcast keeps its thread, as live
    [(_, call)] = fake_slack.history_calls
    assert call == {"channel": "C1", "oldest": cursor, "inclusive": "0", "limit": "15"}

    # Slack redelivering the same message live: the same id, so the core drops it
    late = sk.event_callback(sk.message_event("second <@U2>", ts=b["ts"]), event_id="EvLate")
    await fake_slack.push(late)
    assert gw2.ctx.attempts[-1] == gw2.ctx.submitted[1].id
    assert len(gw2.ctx.submitted) == 3

    await gw2.stop()
    assert gw.ctx.kv[CURSORS_KEY]["C1"] == c["ts"]  # newest seen
    # and a further restart fetches from there: nothing is submitted twice
    gw3 = await make_gateway(ctx=gw.ctx, **FAST)
    await caught_up(gw3)
    assert fake_slack.history_calls[-1][1]["oldest"] == c["ts"]
    assert len(gw3.ctx.submitted) == 3


async def test_catch_up_message_has_the_id_a_live_event_gets(make_gateway, fake_slack, sk):
    """One message, through history on one instance and as a live event on another: equal."""
    gw = await first_run(make_gateway)
    m = fake_slack.add_history("C1", "seen live just before the stop")
    gw2 = await make_gateway(ctx=gw.ctx, **FAST)
    await caught_up(gw2)
    [msg] = gw2.ctx.submitted
    live_gw = await make_gateway(**FAST)  # a separate instance: what the live event would produce
    await caught_up(live_gw)
    await fake_slack.push(sk.event_callback(sk.message_event("seen live just before the stop", ts=m["ts"])))
    [live] = live_gw.ctx.submitted
    assert live.id == msg.id == msg_id(sk, "C1", m["ts"])
    assert (live.text, live.sender, live.origin) == (msg.text, msg.sender, msg.origin)


async def test_paging_with_limit(make_gateway, fake_slack):
    gw = await first_run(make_gateway)
    cursor = gw.ctx.kv[CURSORS_KEY]["C1"]
    posted = [fake_slack.add_history("C1", f"m{i}") for i in range(7)]
    gw2 = await make_gateway(ctx=gw.ctx, history_page_limit=3, **FAST)
    await caught_up(gw2)
    calls = [p for _, p in fake_slack.history_calls]
    assert [c.get("cursor") for c in calls] == [None, "page:3", "page:6"]
    assert {c["limit"] for c in calls} == {"3"}
    assert {c["oldest"] for c in calls} == {cursor}
    assert [m.text for m in gw2.ctx.submitted] == [f"m{i}" for i in range(7)]
    assert [m.native_id for m in gw2.ctx.submitted] == [p["ts"] for p in posted]


async def test_low_rate_makes_the_second_call_wait(make_gateway, fake_slack):
    gw = await first_run(make_gateway)
    for i in range(3):
        fake_slack.add_history("C1", f"m{i}")
    # 60 calls/min: one per second (the default 1/min is shown with a fake clock below)
    gw2 = await make_gateway(
        ctx=gw.ctx, history_catchup=True, history_rate_per_min=60.0, history_page_limit=2
    )
    await caught_up(gw2)
    (t1, _), (t2, _) = fake_slack.history_calls
    assert t2 - t1 >= 0.8
    assert [m.text for m in gw2.ctx.submitted] == ["m0", "m1", "m2"]


async def test_default_rate_waits_a_minute_between_calls(make_gateway, fake_slack):
    """Default history_rate_per_min = 1 with an injected clock: the bucket asks for ~60 s."""
    gw = await first_run(make_gateway)
    for i in range(20):
        fake_slack.add_history("C1", f"m{i}")
    gw2 = await make_gateway(ctx=gw.ctx, start=False, history_catchup=True)  # defaults: 1/min, 15
    now = [1000.0]
    sleeps: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        sleeps.append(seconds)
        now[0] += seconds
        await asyncio.sleep(0)

    gw2._history.bucket = RateBucket(gw2.config.history_rate_per_min, clock=lambda: now[0], sleep=fake_sleep)
    await gw2.start()
    await caught_up(gw2)
    assert [p["limit"] for _, p in fake_slack.history_calls] == ["15", "15"]
    assert len(sleeps) == 1 and 59.0 <= sleeps[0] <= 60.0
    assert [m.text for m in gw2.ctx.submitted] == [f"m{i}" for i in range(20)]


async def test_429_retry_after_is_honoured_and_the_same_page_retried(make_gateway, fake_slack):
    gw = await first_run(make_gateway)
    fake_slack.add_history("C1", "a")
    fake_slack.add_history("C1", "b")
    fake_slack.history_429.append(1)
    gw2 = await make_gateway(ctx=gw.ctx, **FAST)
    await caught_up(gw2)
    (t1, first), (t2, second) = fake_slack.history_calls
    assert first == second
    assert t2 - t1 >= 0.8  # Retry-After: 1
    assert [m.text for m in gw2.ctx.submitted] == ["a", "b"]


async def test_catch_up_off_makes_no_history_calls(make_gateway, fake_slack, sk):
    gw = await make_gateway()  # history_catchup defaults to false
    await gw.stop()
    fake_slack.add_history("C1", "posted while down")
    gw2 = await make_gateway(ctx=gw.ctx)
    await fake_slack.wait_socket()
    await fake_slack.push(sk.event_callback(sk.message_event("live", ts=f"{time.time():.6f}")))
    await asyncio.sleep(0.2)
    await fake_slack.wait_socket()
    first = fake_slack.sockets[-1]
    await first.send_json({"type": "disconnect", "reason": "refresh_requested"})  # a reconnect, too
    await wait_until(lambda: fake_slack.connections_opened >= 3, 5, "the reconnect")
    await asyncio.sleep(0.2)
    await gw2.stop()
    assert fake_slack.history_calls == []
    assert [m.text for m in gw2.ctx.submitted] == ["live"]
    assert CURSORS_KEY not in gw.ctx.kv


async def test_turning_it_off_forgets_the_cursor(make_gateway, fake_slack):
    """Off, then on again weeks later: a first enable (no flood of history_max_age)."""
    gw = await first_run(make_gateway)
    assert CURSORS_KEY in gw.ctx.kv
    gw2 = await make_gateway(ctx=gw.ctx)  # off
    await gw2.stop()
    assert CURSORS_KEY not in gw.ctx.kv
    fake_slack.add_history("C1", "while it was off")
    gw3 = await make_gateway(ctx=gw.ctx, **FAST)
    await caught_up(gw3)
    assert fake_slack.history_calls == [] and gw3.ctx.submitted == []


async def test_max_age_caps_oldest(make_gateway, fake_slack):
    now = time.time()
    gw = await make_gateway(start=False, **FAST, history_max_age=3600)
    three_days_ago = f"{now - 3 * 86400:.6f}"
    gw.ctx.kv[CURSORS_KEY] = {"C1": three_days_ago}
    fake_slack.add_history("C1", "two hours ago", ts=f"{now - 7200:.6f}")
    fake_slack.add_history("C1", "ten minutes ago", ts=f"{now - 600:.6f}")
    await gw.start()
    await caught_up(gw)
    [(_, call)] = fake_slack.history_calls
    assert now - 3600 - 5 <= float(call["oldest"]) <= time.time() - 3600
    assert [m.text for m in gw.ctx.submitted] == ["ten minutes ago"]


async def test_reconnect_catches_up_what_the_socket_missed(make_gateway, fake_slack):
    gw = await make_gateway(**FAST)
    await caught_up(gw)
    assert fake_slack.history_calls == []
    cursor = gw._history.cursors["C1"]
    fake_slack.add_history("C1", "posted while the socket was gone")  # never pushed live
    first = await fake_slack.wait_socket()
    await first.send_json({"type": "disconnect", "reason": "refresh_requested"})
    await gw.ctx.wait_for(1, timeout=10)
    [(_, call)] = fake_slack.history_calls
    assert call["oldest"] == cursor
    assert [m.text for m in gw.ctx.submitted] == ["posted while the socket was gone"]


async def test_reconnect_during_a_catch_up_runs_it_again(make_gateway, fake_slack):
    gw = await first_run(make_gateway)
    fake_slack.add_history("C1", "a")
    fake_slack.history_delay = 0.3
    gw2 = await make_gateway(ctx=gw.ctx, **FAST)
    await wait_until(lambda: fake_slack.history_calls, 5, "the first history call")
    fake_slack.add_history("C1", "b")  # after the first page was read
    gw2._history.connected(reconnect=True)  # what a second hello does
    gw2._history.connected(reconnect=True)  # twice: still one more run, not two in parallel
    await caught_up(gw2)
    calls = fake_slack.history_calls
    assert len(calls) == 2
    assert calls[1][0] - calls[0][0] >= 0.3  # one at a time
    assert [m.text for m in gw2.ctx.submitted] == ["a", "b"]


async def test_not_in_channel_logged_once_and_skipped(make_gateway, fake_slack, sk, caplog):
    binds = [sk.binding("C1"), sk.binding("C2")]
    gw = await first_run(make_gateway, bindings=binds)
    saved = gw.ctx.kv[CURSORS_KEY]["C1"]
    fake_slack.history_error["C1"] = "not_in_channel"
    fake_slack.add_history("C1", "invisible")
    fake_slack.add_history("C2", "in C2")
    caplog.set_level(logging.INFO, logger="claudemesh_gateway.plugins.slack")
    gw2 = await make_gateway(ctx=gw.ctx, bindings=binds, **FAST)
    await caught_up(gw2)
    assert [m.text for m in gw2.ctx.submitted] == ["in C2"]
    assert float(gw2._history.cursors["C1"]) > float(saved)  # skipped: from now on
    gw2._history.gaps["C1"] = gw2._history.cursors["C1"]  # as a reconnect would
    gw2._history.request()
    await caught_up(gw2)
    assert [p["channel"] for _, p in fake_slack.history_calls] == ["C1", "C2", "C1"]
    warned = [r for r in caplog.records if "not_in_channel" in r.getMessage()]
    assert len(warned) == 1 and warned[0].levelno == logging.WARNING
    assert gw2.state == GatewayState.CONNECTED


async def test_bad_credentials_during_catch_up(make_gateway, fake_slack, sk):
    binds = [sk.binding("C1"), sk.binding("C2")]
    gw = await first_run(make_gateway, bindings=binds)
    fake_slack.history_error["C1"] = "token_revoked"
    fake_slack.add_history("C1", "x")
    fake_slack.add_history("C2", "y")
    gw2 = await make_gateway(ctx=gw.ctx, bindings=binds, **FAST)
    await wait_until(lambda: gw2._history._task is not None and gw2._history._task.done(), 5, "the catch-up")
    assert gw2.state == GatewayState.BAD_CREDENTIALS
    assert [p["channel"] for _, p in fake_slack.history_calls] == ["C1"]  # no other channel, no retry
    assert gw2.ctx.submitted == []


async def test_failed_submit_keeps_the_gap_and_retries(make_gateway, fake_slack):
    gw = await first_run(make_gateway)
    cursor = gw.ctx.kv[CURSORS_KEY]["C1"]
    fake_slack.add_history("C1", "a")
    fake_slack.add_history("C1", "b")
    gw2 = await make_gateway(ctx=gw.ctx, start=False, **FAST)
    gw2.ctx.fail_submit = RuntimeError("store down")
    backoffs: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        backoffs.append(seconds)
        assert gw2._history.gaps["C1"] == cursor  # nothing submitted: the gap has not moved
        gw2.ctx.fail_submit = None
        await asyncio.sleep(0)

    gw2._history.sleep = fake_sleep
    await gw2.start()
    await gw2.ctx.wait_for(2)
    await caught_up(gw2)
    assert backoffs == [history_mod.RETRY_MIN]
    assert [p["oldest"] for _, p in fake_slack.history_calls] == [cursor, cursor]
    assert [m.text for m in gw2.ctx.submitted] == ["a", "b"]


async def test_stop_cancels_a_waiting_catch_up_and_keeps_the_gap(make_gateway, fake_slack, sk):
    gw = await first_run(make_gateway)
    cursor = gw.ctx.kv[CURSORS_KEY]["C1"]
    for i in range(3):
        fake_slack.add_history("C1", f"m{i}")
    # default rate (1/min): the second page waits a minute
    gw2 = await make_gateway(ctx=gw.ctx, history_catchup=True, history_page_limit=2)
    await wait_until(lambda: fake_slack.history_calls, 5, "the first history call")
    # a live message meanwhile moves the newest-seen cursor, not the saved gap
    live_ts = f"{time.time() + 1:.6f}"
    await fake_slack.push(sk.event_callback(sk.message_event("live", ts=live_ts)))
    assert gw2._history.cursors["C1"] == live_ts
    started = time.monotonic()
    await gw2.stop()
    assert time.monotonic() - started < 4.0  # cancelled, not waited out (stop waits 5 s at most)
    attempts = list(gw2.ctx.attempts)
    await asyncio.sleep(0.2)
    assert gw2.ctx.attempts == attempts == [msg_id(sk, "C1", live_ts)]  # no catch-up submit
    assert len(fake_slack.history_calls) == 1
    assert gw.ctx.kv[CURSORS_KEY]["C1"] == cursor  # the rest of the gap is fetched next time


async def test_live_events_move_the_cursor_with_a_debounced_save(make_gateway, fake_slack, sk, monkeypatch):
    monkeypatch.setattr(history_mod, "SAVE_DELAY", 0.05)
    gw = await make_gateway(**FAST)
    await caught_up(gw)
    await asyncio.sleep(0.2)
    first = gw.ctx.kv[CURSORS_KEY]["C1"]
    newest = f"{time.time() + 5:.6f}"
    for i, ts in enumerate((f"{time.time() + 1:.6f}", newest, f"{time.time() + 2:.6f}")):
        await fake_slack.push(sk.event_callback(sk.message_event(f"m{i}", ts=ts), event_id=f"E{i}"))
    await wait_until(lambda: gw.ctx.kv[CURSORS_KEY]["C1"] != first, 5, "the debounced save")
    assert gw.ctx.kv[CURSORS_KEY]["C1"] == newest  # newest, not the last to arrive
    assert len(gw.ctx.submitted) == 3
