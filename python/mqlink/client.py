"""Publisher and Subscriber: a small MQTT client on mqlink's Rust session.

Both take the connection options of ``mqlink pub`` / ``mqlink sub``: a
broker URL (``mqtt://host:1883``, ``mqtts://host:8883``), client id,
username/password, TLS files, protocol (``"3.1.1"`` or ``"5"``), clean
session or a persistent one, session expiry. Each works from plain threads
(blocking calls release the GIL) and from asyncio (``await``, ``async for``).
"""

from __future__ import annotations

import asyncio
import collections
import threading
from typing import Any, Iterable, Iterator, Mapping, Optional, Sequence, Tuple, Union

from . import _mqlink
from .errors import SessionStopped

Payload = Union[bytes, bytearray, memoryview, str]
Topics = Union[str, Sequence[Union[str, Tuple[str, int]]]]

_PAHO_NAMES = {
    "PayloadFormatIndicator": "payload_format_indicator",
    "MessageExpiryInterval": "message_expiry_interval",
    "ContentType": "content_type",
    "ResponseTopic": "response_topic",
    "CorrelationData": "correlation_data",
    "UserProperty": "user_properties",
    "TopicAlias": "topic_alias",
}


def publish_properties(properties: Any) -> Optional[dict]:
    """MQTT 5 publish properties as the native layer takes them.

    Accepts ``None``, a dict with the snake_case names
    (``message_expiry_interval``, ``content_type``, ``response_topic``,
    ``correlation_data``, ``user_properties`` as ``[(key, value)]``,
    ``payload_format_indicator``, ``topic_alias``), or a
    ``paho.mqtt.properties.Properties`` instance (what Quix users have).
    """
    if properties is None:
        return None
    if isinstance(properties, Mapping):
        return dict(properties)
    if hasattr(properties, "names") and hasattr(properties, "packetType"):
        out = {}
        for paho_name, name in _PAHO_NAMES.items():
            if hasattr(properties, paho_name):
                out[name] = getattr(properties, paho_name)
        return out
    raise TypeError(
        "properties must be a dict or a paho.mqtt.properties.Properties, "
        f"not {type(properties).__name__}"
    )


def _connection(
    broker: Union[str, Sequence[str]],
    client_id: Optional[str],
    username: Optional[str],
    password: Optional[str],
    protocol: str,
    clean_session: bool,
    session_expiry_interval: Optional[int],
    keep_alive: float,
    connect_timeout: float,
    ca_file: Optional[str],
    cert_file: Optional[str],
    key_file: Optional[str],
    tls_insecure: bool,
    tls_server_name: Optional[str],
    max_inflight: int,
    receive_maximum: int,
) -> dict:
    return {
        "broker": broker,
        "client_id": client_id,
        "username": username,
        "password": password,
        "protocol": str(protocol),
        "clean_session": clean_session,
        "session_expiry_interval": session_expiry_interval,
        "keep_alive": float(keep_alive),
        "connect_timeout": float(connect_timeout),
        "ca_file": None if ca_file is None else str(ca_file),
        "cert_file": None if cert_file is None else str(cert_file),
        "key_file": None if key_file is None else str(key_file),
        "tls_insecure": tls_insecure,
        "tls_server_name": tls_server_name,
        "max_inflight": max_inflight,
        "receive_maximum": receive_maximum,
    }


class Delivery:
    """The broker's confirmation of one published message.

    ``result(timeout)`` blocks (GIL released) until the PUBACK/PUBCOMP and
    returns its MQTT 5 reason code (0 on 3.1.1); ``await delivery`` does the
    same in asyncio. Raises :class:`~mqlink.errors.PublishFailed` when the
    broker did not take the message.
    """

    __slots__ = ("_native",)

    def __init__(self, native: Any) -> None:
        self._native = native

    def done(self) -> bool:
        """Whether the broker answered (or the publish failed)."""
        return self._native.done()

    def result(self, timeout: Optional[float] = None) -> int:
        """Waits at most ``timeout`` seconds (``None``: no limit); raises
        ``TimeoutError`` when the broker has not answered by then."""
        return self._native.result(timeout)

    def __await__(self):
        if self._native.done():
            return self._native.result(0.0)
        loop = asyncio.get_running_loop()
        return (yield from loop.run_in_executor(None, self._native.result, None).__await__())


class Publisher:
    """Publishes with the broker's confirmation.

    ``publish`` returns at once with a :class:`Delivery`; it waits (GIL
    released) only while ``max_inflight`` messages are unconfirmed and as
    many more are queued behind them. ``flush(timeout)`` waits
    for every confirmation and raises :class:`~mqlink.errors.FlushTimeout`
    naming how many are missing. The session reconnects by itself and sends
    unconfirmed messages again.

    Connects in the constructor: a broker that cannot be reached or refuses
    raises :class:`~mqlink.errors.ConnectFailed`.

    >>> with Publisher("mqtt://localhost:1883", client_id="p1") as pub:  # doctest: +SKIP
    ...     for i in range(1000):
    ...         pub.publish("sensors/d1", f'{{"i": {i}}}')
    ...     pub.flush(timeout=10)
    """

    def __init__(
        self,
        broker: Union[str, Sequence[str]],
        *,
        client_id: Optional[str] = None,
        username: Optional[str] = None,
        password: Optional[str] = None,
        protocol: str = "3.1.1",
        clean_session: bool = True,
        session_expiry_interval: Optional[int] = None,
        keep_alive: float = 60,
        connect_timeout: float = 10,
        ca_file: Optional[str] = None,
        cert_file: Optional[str] = None,
        key_file: Optional[str] = None,
        tls_insecure: bool = False,
        tls_server_name: Optional[str] = None,
        max_inflight: int = 1000,
        qos: int = 1,
    ) -> None:
        if qos not in (0, 1, 2):
            raise ValueError(f"qos: {qos!r} is not a QoS (0, 1 or 2)")
        self.qos = qos
        self._native = _mqlink.Publisher(
            _connection(
                broker, client_id, username, password, protocol, clean_session,
                session_expiry_interval, keep_alive, connect_timeout, ca_file,
                cert_file, key_file, tls_insecure, tls_server_name, max_inflight, 1000,
            )
        )

    @property
    def client_id(self) -> str:
        """The client id in use (generated when none was given)."""
        return self._native.client_id

    def publish(
        self,
        topic: str,
        payload: Payload,
        *,
        qos: Optional[int] = None,
        retain: bool = False,
        properties: Any = None,
    ) -> Delivery:
        """Publishes ``payload`` (bytes, or str as UTF-8) to ``topic``.

        ``properties`` (MQTT 5): a dict or a paho ``Properties``, see
        :func:`publish_properties`.
        """
        return Delivery(
            self._native.publish(
                topic,
                payload,
                self.qos if qos is None else qos,
                retain,
                publish_properties(properties),
                True,
            )
        )

    def flush(self, timeout: float = 10.0) -> None:
        """Waits until every message published so far is confirmed."""
        self._native.flush(timeout)

    async def flush_async(self, timeout: float = 10.0) -> None:
        """``flush`` for asyncio (waits in a worker thread)."""
        await asyncio.get_running_loop().run_in_executor(None, self._native.flush, timeout)

    @property
    def in_flight(self) -> int:
        """Messages published and not confirmed (or failed) yet."""
        return self._native.in_flight()

    def close(self, timeout: float = 10.0) -> None:
        """Flushes (at most ``timeout`` seconds), then disconnects; the
        flush's error, if any, is raised after the disconnect."""
        try:
            self._native.flush(timeout)
        finally:
            self._native.disconnect()

    async def close_async(self, timeout: float = 10.0) -> None:
        """``close`` for asyncio."""
        await asyncio.get_running_loop().run_in_executor(None, self.close, timeout)

    def __enter__(self) -> "Publisher":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    async def __aenter__(self) -> "Publisher":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close_async()


def _subscriptions(topics: Topics, qos: int) -> list:
    if isinstance(topics, str):
        topics = [topics]
    subs = []
    for t in topics:
        if isinstance(t, str):
            subs.append((t, qos))
        else:
            f, q = t
            subs.append((f, q))
    if not subs:
        raise ValueError("topics: at least one topic filter is needed")
    return subs


class Subscriber:
    """Receives messages; each is acknowledged to the broker only when you
    call ``msg.ack()``, and acknowledgements leave in arrival order (a
    message never acknowledged holds back the acknowledgements of every
    later one, and comes again after a reconnect).

    With ``clean_session=False`` and a ``client_id`` the session persists:
    what arrives while the subscriber is away (or was received but not
    acknowledged when it died) is delivered when it comes back.

    >>> with Subscriber("mqtt://localhost:1883", "sensors/#", client_id="s1",
    ...                 clean_session=False) as sub:  # doctest: +SKIP
    ...     for msg in sub:
    ...         store(msg.topic, msg.payload)
    ...         msg.ack()

    ``async for msg in sub`` works the same in asyncio.
    """

    def __init__(
        self,
        broker: Union[str, Sequence[str]],
        topics: Topics,
        *,
        qos: int = 1,
        client_id: Optional[str] = None,
        username: Optional[str] = None,
        password: Optional[str] = None,
        protocol: str = "3.1.1",
        clean_session: bool = True,
        session_expiry_interval: Optional[int] = None,
        keep_alive: float = 60,
        connect_timeout: float = 10,
        ca_file: Optional[str] = None,
        cert_file: Optional[str] = None,
        key_file: Optional[str] = None,
        tls_insecure: bool = False,
        tls_server_name: Optional[str] = None,
        receive_maximum: int = 1000,
    ) -> None:
        self._native = _mqlink.Subscriber(
            _connection(
                broker, client_id, username, password, protocol, clean_session,
                session_expiry_interval, keep_alive, connect_timeout, ca_file,
                cert_file, key_file, tls_insecure, tls_server_name, 1000, receive_maximum,
            ),
            _subscriptions(topics, qos),
        )
        # Messages a cancelled asyncio wait received: handed out first, so
        # none is left unacknowledged (which would hold back every later ack).
        self._stash: collections.deque = collections.deque()
        self._lock = threading.Lock()

    @property
    def client_id(self) -> str:
        """The client id in use (generated when none was given)."""
        return self._native.client_id

    def next(self, timeout: Optional[float] = None) -> Optional[_mqlink.Message]:
        """The next message, waiting at most ``timeout`` seconds (``None``:
        no limit); ``None`` on timeout. Raises
        :class:`~mqlink.errors.SessionStopped` once the session has ended."""
        if self._stash:
            return self._stash.popleft()
        return self._native.next(timeout)

    def __iter__(self) -> Iterator[_mqlink.Message]:
        return self

    def __next__(self) -> _mqlink.Message:
        msg = None
        try:
            # Slices, so that Ctrl-C is seen between them.
            while msg is None:
                msg = self.next(0.5)
        except SessionStopped:
            raise StopIteration from None
        return msg

    def _fetch(self, timeout: float) -> None:
        with self._lock:
            msg = self._native.next(timeout)
            if msg is not None:
                self._stash.append(msg)

    async def next_async(self, timeout: Optional[float] = None) -> Optional[_mqlink.Message]:
        """``next`` for asyncio; waits in a worker thread in slices of at
        most 0.5 s, so cancelling the awaiting task loses nothing."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            if self._stash:
                return self._stash.popleft()
            msg = self._native.next(0.0)
            if msg is not None:
                return msg
            left = 0.5 if deadline is None else min(0.5, deadline - loop.time())
            if left <= 0:
                return None
            await loop.run_in_executor(None, self._fetch, left)

    def __aiter__(self) -> "Subscriber":
        return self

    async def __anext__(self) -> _mqlink.Message:
        try:
            msg = await self.next_async(None)
        except SessionStopped:
            raise StopAsyncIteration from None
        assert msg is not None
        return msg

    def close(self) -> None:
        """Sends the acknowledgements given so far, then DISCONNECT."""
        self._native.close()

    def __enter__(self) -> "Subscriber":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    async def __aenter__(self) -> "Subscriber":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.close)


__all__ = ["Publisher", "Subscriber", "Delivery", "publish_properties"]
