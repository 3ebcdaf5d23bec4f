"""mqlink.quix.MQTTSink driven the way Quix Streams drives a sink, against
a real Mosquitto, checked on the receiving side with paho-mqtt."""

from __future__ import annotations

import json
import subprocess
import time

import pytest
from quixstreams.sinks import BaseSink
from quixstreams.sinks.base.manager import SinkManager

from mqlink.errors import ConnectFailed, FlushTimeout
from mqlink.quix import MqttPublishAckTimeout, MQTTSink


def make_sink(broker, root, **kw) -> MQTTSink:
    kw.setdefault("tls_enabled", False)
    return MQTTSink(
        client_id=f"quix-{root}", server="127.0.0.1", port=broker.port, topic_root=root, **kw
    )


def add(sink: MQTTSink, value, key: bytes, offset: int) -> None:
    # As StreamingDataFrame.sink()'s callback calls it: keywords only.
    sink.add(
        value=value,
        key=key,
        timestamp=1_700_000_000_000 + offset,
        headers=[],
        partition=0,
        topic="input-topic",
        offset=offset,
    )


def test_checkpointing_as_quix_does(mosquitto, collector, uid):
    """SinkManager.start_sinks() → add() per record → flush() per
    checkpoint; every record at the broker, in order per topic."""
    got = collector(mosquitto.port, f"{uid}/#")
    connected = []
    sink = make_sink(mosquitto, uid, on_client_connect_success=lambda: connected.append(1))
    assert isinstance(sink, BaseSink)
    manager = SinkManager()
    manager.register(sink)
    manager.start_sinks()
    assert connected == [1]
    keys = [b"d1", b"d2", b"d3"]
    offset = 0
    for checkpoint in range(5):
        for i in range(400):
            key = keys[i % 3]
            add(sink, {"checkpoint": checkpoint, "i": i, "key": key.decode()}, key, offset)
            offset += 1
        for s in manager.sinks:  # Checkpoint.commit(): step 1
            s.flush()
    msgs = got.wait_for(2000)
    assert len(msgs) == 2000
    per_topic = {}
    for m in msgs:
        v = json.loads(m.payload)
        assert m.topic == f"{uid}/{v['key']}"
        assert m.qos == 1
        per_topic.setdefault(m.topic, []).append((v["checkpoint"], v["i"]))
    assert sorted(per_topic) == [f"{uid}/d1", f"{uid}/d2", f"{uid}/d3"]
    for seq in per_topic.values():
        assert seq == sorted(seq), "out of order within a topic"
    sink.close()


def test_flush_timeout_fires_against_a_stopped_broker(mosquitto, collector, uid):
    """SIGSTOP the broker: add() still returns at once, flush() raises within
    its timeout naming how many are unconfirmed; after SIGCONT everything
    is delivered and the next flush passes."""
    got = collector(mosquitto.port, f"{uid}/#", qos=1)
    sink = make_sink(mosquitto, uid, mqtt_flush_timeout_seconds=1.5)
    sink.setup()
    for i in range(100):
        add(sink, {"i": i}, b"k", i)
    sink.flush()
    mosquitto.stop()
    try:
        t0 = time.monotonic()
        for i in range(100, 150):
            add(sink, {"i": i}, b"k", i)
        assert time.monotonic() - t0 < 0.5, "add() waited on the network"
        t0 = time.monotonic()
        with pytest.raises(MqttPublishAckTimeout) as err:
            sink.flush()
        elapsed = time.monotonic() - t0
        assert 1.4 < elapsed < 2.5, elapsed
        assert err.value.unconfirmed == 50
        assert "50 messages not confirmed" in str(err.value)
        assert isinstance(err.value, FlushTimeout) and isinstance(err.value, TimeoutError)
    finally:
        mosquitto.cont()
    sink.flush()
    msgs = got.wait_for(150)
    assert [json.loads(m.payload)["i"] for m in msgs] == list(range(150))
    sink.close()


def test_add_waits_only_for_the_in_flight_window(mosquitto, collector, uid):
    """With max_inflight=20 and the broker stopped, adds return until the
    window (20), one waiting for a place and the queue (20) are full, then
    wait, with the GIL released: this thread keeps running meanwhile.
    After SIGCONT the waiting add returns and everything is delivered."""
    import threading

    got = collector(mosquitto.port, f"{uid}/#", qos=1)
    sink = make_sink(mosquitto, uid, max_inflight=20)
    sink.setup()
    add(sink, {"i": -1}, b"k", 0)
    sink.flush()
    added = []

    def adder():
        for i in range(60):
            add(sink, {"i": i}, b"k", i)
            added.append(i)

    mosquitto.stop()
    try:
        t = threading.Thread(target=adder, daemon=True)
        t.start()
        ticks = 0
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:  # runs while the adder waits
            ticks += 1
            time.sleep(0.01)
        assert ticks > 50
        # 20 in flight and one waiting for a place; a full queue (20) takes
        # more only once half of it is free again: 32..=41 accepted.
        assert 32 <= len(added) <= 41, len(added)
        assert t.is_alive()
    finally:
        mosquitto.cont()
    t.join(10)
    assert not t.is_alive() and len(added) == 60
    sink.flush()
    assert len(got.wait_for(61)) == 61
    sink.close()


@pytest.mark.parametrize("qos", [1, 2])
def test_qos(mosquitto, collector, uid, qos):
    got = collector(mosquitto.port, f"{uid}/#", qos=2)
    sink = make_sink(mosquitto, uid, qos=qos)
    sink.setup()
    for i in range(1000):
        add(sink, i, str(i % 7).encode(), i)
    sink.flush()
    msgs = got.wait_for(1000)
    time.sleep(0.2)  # a duplicate would arrive now
    msgs = got.wait_for(1001, timeout=0.1)
    assert len(msgs) == 1000
    assert {m.qos for m in msgs} == {qos}
    assert sorted(int(m.payload) for m in msgs) == list(range(1000))
    sink.close()


def test_version_3_1_as_quix_lists_it(mosquitto, collector, uid):
    # Quix's documentation lists "3.1": the sink speaks MQTT 3.1 itself.
    got = collector(mosquitto.port, f"{uid}/#", qos=1)
    sink = make_sink(mosquitto, uid, version="3.1", qos=1)
    sink.setup()
    for i in range(100):
        add(sink, i, b"k", i)
    sink.flush()
    assert sorted(int(m.payload) for m in got.wait_for(100)) == list(range(100))
    sink.close()
    connects = [l for l in mosquitto.log().splitlines() if f" as quix-{uid} " in l]
    assert connects and "(p1," in connects[0], connects


def test_retain_callable(mosquitto, collector, uid):
    sink = make_sink(mosquitto, uid, retain=lambda v: v["keep"])
    sink.setup()
    for i in range(10):
        add(sink, {"keep": i % 2 == 0, "i": i}, f"t{i}".encode(), i)
    sink.flush()
    late = collector(mosquitto.port, f"{uid}/#", qos=1)  # subscribes after
    msgs = late.wait_for(5, timeout=10)
    time.sleep(0.3)
    msgs = late.wait_for(6, timeout=0.1)
    assert sorted(m.topic for m in msgs) == [f"{uid}/t{i}" for i in (0, 2, 4, 6, 8)]
    assert all(m.retain for m in msgs)
    sink.close()


def test_v5_properties(mosquitto, collector, uid):
    """A paho Properties instance (Quix calls it as a function and fails)
    and a callable returning one per value, seen by a paho v5 subscriber."""
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    got = collector(mosquitto.port, f"{uid}/#", qos=1, v5=True)
    fixed = Properties(PacketTypes.PUBLISH)
    fixed.ContentType = "application/json"
    fixed.MessageExpiryInterval = 3600
    fixed.UserProperty = ("source", "quix")
    s1 = make_sink(mosquitto, uid, version="5", properties=fixed)
    s1.setup()

    def per_value(v):
        p = Properties(PacketTypes.PUBLISH)
        p.UserProperty = ("i", str(v["i"]))
        p.ResponseTopic = f"{uid}/replies"
        p.CorrelationData = b"\x00\x01"
        return p

    s2 = MQTTSink(
        client_id=f"q2-{uid}", server="127.0.0.1", port=mosquitto.port,
        topic_root=f"{uid}/cb", version="5", tls_enabled=False, properties=per_value,
    )
    s2.setup()
    add(s1, {"i": 0}, b"fixed", 0)
    add(s2, {"i": 7}, b"callable", 1)
    s1.flush()
    s2.flush()
    msgs = {m.topic: m for m in got.wait_for(2)}
    a = msgs[f"{uid}/fixed"].properties
    assert a.ContentType == "application/json"
    assert 3500 < a.MessageExpiryInterval <= 3600
    assert a.UserProperty == [("source", "quix")]
    b = msgs[f"{uid}/cb/callable"].properties
    assert b.UserProperty == [("i", "7")]
    assert b.ResponseTopic == f"{uid}/replies"
    assert b.CorrelationData == b"\x00\x01"
    s1.close()
    s2.close()


def test_constructor_errors():
    with pytest.raises(ValueError, match="version"):
        MQTTSink("c", "h", 1, "r", version="4")
    with pytest.raises(ValueError, match="only be used with version '5'"):
        MQTTSink("c", "h", 1, "r", properties={"content_type": "x"})
    with pytest.raises(ValueError, match="qos"):
        MQTTSink("c", "h", 1, "r", qos=3)
    with pytest.raises(ValueError, match="mqtt_flush_timeout_seconds"):
        MQTTSink("c", "h", 1, "r", mqtt_flush_timeout_seconds=-1)
    s = MQTTSink("c", "h", 1, "r")
    with pytest.raises(RuntimeError, match="before setup"):
        add(s, 1, b"k", 0)


def test_bad_records_name_the_problem(mosquitto, uid):
    sink = make_sink(mosquitto, uid, version="5", properties=lambda v: {"colour": "red"})
    sink.setup()
    with pytest.raises(ValueError, match="colour"):
        add(sink, 1, b"k", 0)
    plain = make_sink(mosquitto, uid + "p")
    plain.setup()
    with pytest.raises(ValueError, match=r"\+"):
        add(plain, 1, b"a/+", 0)
    ints = make_sink(mosquitto, uid + "i", value_serializer=lambda v: v)
    ints.setup()
    with pytest.raises(TypeError, match="bytes or str, not int"):
        add(ints, 42, b"k", 0)
    plain.flush()


def test_refused_connection_is_a_clear_error(make_mosquitto, tmp_path, uid):
    pwfile = tmp_path / "passwd"
    subprocess.run(
        ["mosquitto_passwd", "-b", "-c", str(pwfile), "alice", "right"], check=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    pwfile.chmod(0o600)
    broker = make_mosquitto(f"password_file {pwfile}\n")
    failures = []
    sink = make_sink(
        broker, uid, username="alice", password="wrong",
        on_client_connect_failure=lambda e: failures.append(e),
    )
    sink.start()  # BaseSink.start(): setup(), or the failure callback
    assert len(failures) == 1
    e = failures[0]
    assert isinstance(e, ConnectFailed) and isinstance(e, ConnectionError)
    assert f"127.0.0.1:{broker.port}" in str(e)
    assert "refused" in str(e) and "wrong" not in str(e)
    ok = make_sink(broker, uid + "ok", username="alice", password="right")
    ok.setup()
    add(ok, 1, b"k", 0)
    ok.flush()
    ok.close()


def test_quix_default_tls_against_a_plain_port_says_what_to_write(mosquitto, uid):
    # Quix's MQTTSink has TLS on by default; the port here is plain MQTT.
    failures = []
    sink = MQTTSink(
        client_id=f"quix-{uid}", server="127.0.0.1", port=mosquitto.port, topic_root=uid,
        on_client_connect_failure=lambda e: failures.append(e),
    )
    sink.start()
    assert len(failures) == 1
    assert "does not seem to speak TLS" in str(failures[0]), failures[0]
    assert "tls_enabled=False" in str(failures[0]), failures[0]


def make_certs(d) -> dict:
    """A CA, a server certificate for 127.0.0.1 and a client certificate."""

    def run(*args):
        subprocess.run(["openssl", *args], check=True, cwd=d,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
        "-days", "2", "-subj", "/CN=mqlink test CA")
    (d / "san.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name, cn in (("server", "localhost"), ("client", "quix-client")):
        run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
            "-subj", f"/CN={cn}")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", f"{name}.pem", "-days", "2",
            *(["-extfile", "san.cnf"] if name == "server" else []))
    return {k: str(d / v) for k, v in
            {"ca": "ca.pem", "cert": "server.pem", "key": "server.key",
             "client_cert": "client.pem", "client_key": "client.key"}.items()}


def test_tls_with_ca_and_client_certificate(make_mosquitto, collector, tmp_path, uid):
    """Quix's sink has no CA option; this one takes ca_file, cert_file and
    key_file (mutual TLS), and says why when verification fails."""
    certs = make_certs(tmp_path)
    broker = make_mosquitto(tls={
        "cafile": certs["ca"], "certfile": certs["cert"], "keyfile": certs["key"],
        "require_certificate": "true",
    })
    sink = MQTTSink(
        client_id=f"tls-{uid}", server="127.0.0.1", port=broker.port, topic_root=uid,
        ca_file=certs["ca"], cert_file=certs["client_cert"], key_file=certs["client_key"],
    )
    sink.setup()
    for i in range(100):
        add(sink, {"i": i}, b"k", i)
    sink.flush()
    sink.close()
    # The system's CAs do not know the test CA: a clear error, not a hang.
    untrusted = MQTTSink(
        client_id=f"tls2-{uid}", server="127.0.0.1", port=broker.port, topic_root=uid,
        cert_file=certs["client_cert"], key_file=certs["client_key"], connect_timeout=5,
    )
    with pytest.raises(ConnectFailed, match="(?i)certificate|tls"):
        untrusted.setup()
    # Named as Quix's constructor names it.
    with pytest.raises(ValueError, match="cert_file and key_file go together; key_file is missing"):
        MQTTSink(client_id="x", server="127.0.0.1", port=broker.port, topic_root=uid,
                 cert_file=certs["client_cert"]).setup()


def test_flush_from_another_thread_as_quix_revoke_does(mosquitto, collector, uid):
    """Quix flushes in a daemon thread joined with a timeout on partition
    revocation (Checkpoint._flush_sink_bounded): the flush must finish there,
    with the GIL released while it waits, and count everything."""
    import threading

    got = collector(mosquitto.port, f"{uid}/#", qos=1)
    sink = make_sink(mosquitto, uid)
    sink.setup()
    for i in range(3000):
        add(sink, {"i": i}, b"k", i)
    errors = []

    def run():
        try:
            sink.flush()
        except Exception as e:  # as Quix captures it
            errors.append(e)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(10)
    assert not worker.is_alive() and not errors
    assert len(got.wait_for(3000)) == 3000
    sink.close()


def test_without_quixstreams_installed(mosquitto, uid):
    """The sink works without quixstreams (a standalone BaseSink)."""
    code = f"""
import sys
sys.modules["quixstreams"] = None  # import quixstreams -> ImportError
from mqlink.quix import MQTTSink
s = MQTTSink("c-{uid}", "127.0.0.1", {mosquitto.port}, "{uid}", tls_enabled=False)
assert [c.__name__ for c in type(s).__mro__][1] == "_BaseSink"
s.start()
s.add(value={{"a": 1}}, key=b"k", timestamp=0, headers=[], topic="t", partition=0, offset=0)
s.flush()
s.close()
failed = []
bad = MQTTSink("c2", "127.0.0.1", 1, "r", tls_enabled=False,
               on_client_connect_failure=failed.append)
bad.start()
assert len(failed) == 1 and "cannot reach" in str(failed[0]), failed
print("ok")
"""
    import sys as _sys

    out = subprocess.run([_sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "ok", out.stderr
