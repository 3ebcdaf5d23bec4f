"""mqlink.Publisher and mqlink.Subscriber against a real Mosquitto."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import mqlink
from mqlink.errors import FlushTimeout, PublishFailed

WORKER = Path(__file__).with_name("sub_worker.py")


def test_publish_and_subscribe(mosquitto, uid):
    sub = mqlink.Subscriber(mosquitto.url, [(f"{uid}/a/#", 1), (f"{uid}/b", 2)])
    with mqlink.Publisher(mosquitto.url, client_id=f"p-{uid}") as pub:
        deliveries = [pub.publish(f"{uid}/a/{i % 3}", f"m{i}") for i in range(300)]
        deliveries.append(pub.publish(f"{uid}/b", b"\x00\xff", qos=2))
        pub.flush(10)
        assert all(d.done() for d in deliveries)
        assert deliveries[0].result(0) == 0
        assert pub.in_flight == 0
    got = []
    while len(got) < 301:
        msg = sub.next(10)
        assert msg is not None, f"only {len(got)} arrived"
        got.append(msg)
        msg.ack()
    assert [m.payload for m in got[:300]] == [f"m{i}".encode() for i in range(300)]
    assert got[300].payload == b"\x00\xff" and got[300].qos == 2
    assert sub.next(0.2) is None
    sub.close()


def test_v5_properties_round_trip(mosquitto, uid):
    sub = mqlink.Subscriber(mosquitto.url, f"{uid}/#", protocol="5")
    pub = mqlink.Publisher(mosquitto.url, protocol="5")
    pub.publish(
        f"{uid}/x", "{}", properties={
            "content_type": "application/json",
            "user_properties": [("a", "1"), ("a", "2")],
            "correlation_data": b"\x01",
        },
    ).result(10)
    msg = sub.next(10)
    assert msg.properties["content_type"] == "application/json"
    assert msg.properties["user_properties"] == [("a", "1"), ("a", "2")]
    assert msg.properties["correlation_data"] == b"\x01"
    msg.ack()
    with pytest.raises(ValueError, match='unknown MQTT 5 publish property "colour"'):
        pub.publish(f"{uid}/x", "{}", properties={"colour": "red"})
    with pytest.raises(ValueError, match="topic"):
        pub.publish(f"{uid}/#", "x")
    pub.close()
    sub.close()


def test_asyncio(mosquitto, uid):
    async def main():
        sub = mqlink.Subscriber(mosquitto.url, f"{uid}/#")
        async with mqlink.Publisher(mosquitto.url) as pub:
            codes = await asyncio.gather(*(pub.publish(f"{uid}/t", str(i)) for i in range(50)))
            assert codes == [0] * 50
            await pub.flush_async(10)
        got = []
        async for msg in sub:
            got.append(int(msg.payload))
            msg.ack()
            if len(got) == 50:
                break
        assert got == list(range(50))
        # A cancelled wait loses nothing: the next message is still handed out.
        waiter = asyncio.ensure_future(sub.next_async())
        await asyncio.sleep(0.1)
        waiter.cancel()
        pub2 = mqlink.Publisher(mosquitto.url)
        pub2.publish(f"{uid}/t", "after").result(10)
        msg = await sub.next_async(10)
        assert msg is not None and msg.payload == b"after"
        msg.ack()
        pub2.close()
        sub.close()

    asyncio.run(asyncio.wait_for(main(), 60))


def test_flush_timeout_and_delivery_failure(mosquitto, uid):
    pub = mqlink.Publisher(mosquitto.url, client_id=f"p-{uid}")
    pub.publish(f"{uid}/t", "x").result(10)
    mosquitto.stop()
    try:
        d = pub.publish(f"{uid}/t", "y")
        t0 = time.monotonic()
        with pytest.raises(FlushTimeout) as err:
            pub.flush(0.5)
        assert time.monotonic() - t0 < 1.5
        assert err.value.unconfirmed == 1
        with pytest.raises(TimeoutError):
            d.result(0.1)
    finally:
        mosquitto.cont()
    pub.flush(10)
    assert d.result(0) == 0
    # A session that ends fails what it had not confirmed, and flush says so.
    mosquitto.stop()
    late = pub.publish(f"{uid}/t", "z")
    pub._native.disconnect()
    mosquitto.cont()
    with pytest.raises(PublishFailed):
        late.result(10)
    with pytest.raises(PublishFailed, match="1 messages"):
        pub.flush(10)


def read_lines(path: Path) -> list:
    return path.read_bytes().decode().splitlines() if path.exists() else []


def wait_lines(path: Path, pred, timeout: float = 60) -> list:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = read_lines(path)
        if pred(lines):
            return lines
        time.sleep(0.05)
    raise AssertionError(f"timed out; {len(read_lines(path))} lines")


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
def test_subscriber_ordered_acks_through_sigkill(mosquitto, uid, tmp_path, protocol):
    """A persistent-session subscriber acknowledges every message after
    writing it, except message HOLD. SIGKILLed, then restarted: HOLD and
    every message after it come again (their acknowledgements were held back
    behind HOLD's), and every message is in the file: nothing lost."""
    n, hold = 2000, 300
    out = tmp_path / "received.txt"
    topic = f"{uid}/stream"
    client_id = f"sub-{uid}"

    def worker(*extra):
        return subprocess.Popen(
            [sys.executable, str(WORKER), mosquitto.url, client_id, topic, str(out),
             "--protocol", protocol, *extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )

    w = worker("--hold", str(hold))
    try:
        wait_lines(out, lambda l: "START" in l, 30)
        with mqlink.Publisher(mosquitto.url) as pub:
            for i in range(n):
                pub.publish(topic, str(i))
            pub.flush(30)
        # Past HOLD: the later messages were received and acknowledged by
        # the application, their acknowledgements held behind HOLD's.
        wait_lines(out, lambda l: str(hold + 10) in l, 60)
    finally:
        w.send_signal(signal.SIGKILL)
        w.wait(10)
    first_run = [l for l in read_lines(out) if l != "START"]
    assert first_run[: hold + 1] == [str(i) for i in range(hold + 1)]
    w = worker()
    try:
        lines = wait_lines(out, lambda l: str(n - 1) in l or f"{n - 1} dup" in l, 120)
    finally:
        w.send_signal(signal.SIGKILL)
        w.wait(10)
    second_run = lines[lines.index("START", 1) + 1 :]
    values = [int(l.split()[0]) for l in second_run]
    # Acknowledgements given just before the kill may not have left yet, so
    # the second run may start a little before HOLD, never after it; and
    # everything the first run received after HOLD comes again: its
    # acknowledgements were held back behind HOLD's.
    assert values[0] <= hold, second_run[:5]
    last_first = max(int(l) for l in first_run)
    assert set(range(hold, last_first + 1)) <= set(values)
    seen = {int(l.split()[0]) for l in lines if l != "START"}
    missing = [i for i in range(n) if i not in seen]
    assert not missing, f"lost: {missing[:20]}"
    assert values == sorted(values), "out of order"
