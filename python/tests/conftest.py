"""A real Mosquitto per test, on a free port, with its own config and
directory; killed in teardown. Never the system's port 1883."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path
from typing import Optional

import pytest

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Mosquitto:
    """One Mosquitto process. ``extra`` is appended to its config."""

    def __init__(self, directory: Path, extra: str = "", tls: Optional[dict] = None) -> None:
        self.dir = directory
        self.extra = extra
        self.tls = tls
        self.proc: Optional[subprocess.Popen] = None
        self.port = 0
        self.start()

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://127.0.0.1:{self.port}"

    def start(self) -> None:
        # A port taken between free_port() and the bind: try another.
        for _ in range(5):
            port = self.port or free_port()
            conf = self.dir / "mosquitto.conf"
            lines = [
                # As root, mosquitto would switch to its own user and could
                # not read or write the test's directory.
                "user root",
                f"listener {port} 127.0.0.1",
                f"allow_anonymous {'false' if 'password_file' in self.extra else 'true'}",
                # Offline persistent sessions keep everything the tests send.
                "max_queued_messages 0",
                "max_queued_bytes 0",
                "persistence false",
                "log_dest file " + str(self.dir / "mosquitto.log"),
            ]
            if self.tls:
                lines += [f"{k} {v}" for k, v in self.tls.items()]
            conf.write_text("\n".join(lines) + "\n" + self.extra)
            self.proc = subprocess.Popen(
                [MOSQUITTO, "-c", str(conf)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and self.proc.poll() is None:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                    self.port = port
                    return
                except OSError:
                    time.sleep(0.02)
            self.kill()
            if self.port:  # a restart on the same port must not move
                break
        raise RuntimeError(f"mosquitto did not start: {self.log()}")

    def log(self) -> str:
        p = self.dir / "mosquitto.log"
        return p.read_text() if p.exists() else ""

    def stop(self) -> None:
        """SIGSTOP: the connection stays open, nothing is answered."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def cont(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait(5)


@pytest.fixture
def mosquitto(tmp_path: Path):
    broker = Mosquitto(tmp_path)
    yield broker
    broker.kill()


@pytest.fixture
def make_mosquitto(tmp_path: Path):
    """Starts brokers with extra config (auth, TLS); all killed at the end."""
    brokers = []

    def make(extra: str = "", tls: Optional[dict] = None) -> Mosquitto:
        d = tmp_path / f"broker{len(brokers)}"
        d.mkdir()
        b = Mosquitto(d, extra, tls)
        brokers.append(b)
        return b

    yield make
    for b in brokers:
        b.kill()


@pytest.fixture
def uid() -> str:
    """A random name: parallel runs never see each other's messages."""
    return uuid.uuid4().hex[:12]


class PahoCollector:
    """An independent receiving side (paho-mqtt): what reached the broker."""

    def __init__(self, port: int, topic: str, qos: int = 2, v5: bool = False) -> None:
        import threading

        import paho.mqtt.client as paho

        self.messages: list = []
        self.lock = threading.Lock()
        self.client = paho.Client(
            callback_api_version=paho.CallbackAPIVersion.VERSION2,
            client_id=f"collector-{uuid.uuid4().hex[:8]}",
            protocol=paho.MQTTv5 if v5 else paho.MQTTv311,
        )
        subscribed = threading.Event()
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.client.subscribe(topic, qos=qos)
        assert subscribed.wait(10), "no SUBACK"

    def _on_message(self, client, userdata, msg) -> None:
        with self.lock:
            self.messages.append(msg)

    def wait_for(self, n: int, timeout: float = 30) -> list:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.messages) >= n:
                    return list(self.messages)
            time.sleep(0.02)
        with self.lock:
            return list(self.messages)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def collector():
    made = []

    def make(port: int, topic: str, qos: int = 2, v5: bool = False) -> PahoCollector:
        c = PahoCollector(port, topic, qos, v5)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


def pytest_configure(config) -> None:
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
