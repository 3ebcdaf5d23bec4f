"""A drop-in ``MQTTSink`` for Quix Streams, on mqlink's Rust MQTT session.

Change one import::

    # from quixstreams.sinks.community.mqtt import MQTTSink
    from mqlink.quix import MQTTSink

The constructor is Quix's (``client_id, server, port, topic_root, username,
password, version, tls_enabled, key_serializer, value_serializer, qos,
mqtt_flush_timeout_seconds, retain, properties, on_client_connect_success,
on_client_connect_failure``), plus keyword-only TLS files. Each record is
published to ``{topic_root}/{key_serializer(key)}``, in order per topic.
Where Quix's sink (3.28.1) goes wrong, this one does what its docs say:

- ``flush()`` waits for every PUBACK/PUBCOMP and, after
  ``mqtt_flush_timeout_seconds``, raises :class:`MqttPublishAckTimeout`
  naming how many messages are unconfirmed (Quix's timeout never fires);
- QoS 2 works (Quix refuses it);
- ``properties`` work, as a paho ``Properties``, a dict, or a callable of the
  value (Quix raises for any properties, and calls an instance as a function);
- ``ca_file``, ``cert_file``, ``key_file`` (Quix has no CA option);
- a broker that refuses the connection is an error in ``setup()`` naming the
  broker and the reason.

``add()`` hands the message to the session and returns; it waits (with the
GIL released) only while ``max_inflight`` messages are unconfirmed and as
many more are queued behind them.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Callable, Optional, Union

from . import _mqlink
from .client import _connection, publish_properties
from .errors import FlushTimeout, PublishFailed

logger = logging.getLogger(__name__)

try:
    from quixstreams.sinks import BaseSink as _BaseSink
except ImportError:  # quixstreams not installed: the same interface, standalone.

    class _BaseSink:  # type: ignore[no-redef]
        """Quix's ``BaseSink`` interface, for use without quixstreams."""

        def __init__(
            self,
            on_client_connect_success: Optional[Callable[[], None]] = None,
            on_client_connect_failure: Optional[Callable[[Optional[Exception]], None]] = None,
        ) -> None:
            self._on_client_connect_success = on_client_connect_success or (
                lambda: logger.info("CONNECTED!")
            )
            self._on_client_connect_failure = on_client_connect_failure or _reraise

        def setup(self) -> None:
            pass

        def start(self) -> None:
            """``setup()``, then the success callback, or the failure
            callback with the exception (as Quix's ``BaseSink.start``)."""
            try:
                self.setup()
                self._on_client_connect_success()
            except Exception as e:
                self._on_client_connect_failure(e)

        def on_paused(self) -> None:
            pass


def _reraise(e: Optional[Exception]) -> None:
    logger.error(f"ERROR! - Failed while connecting to client: {e}")
    if e is not None:
        raise e


class MqttPublishEnqueueFailed(PublishFailed):
    """Kept for code that catches Quix's name; mqlink raises it when the
    session has ended and cannot take a message."""


class MqttPublishAckTimeout(FlushTimeout):
    """``flush()`` did not see every message confirmed within
    ``mqtt_flush_timeout_seconds``; ``unconfirmed`` says how many are
    missing. (Quix's name, so existing ``except`` clauses keep working.)"""


RetainHandler = Union[bool, Callable[[Any], bool]]
PropertiesHandler = Union[Any, Callable[[Any], Any]]


def _is_properties_object(p: Any) -> bool:
    # A paho Properties instance (not callable, whatever Quix thought) or a dict.
    return isinstance(p, dict) or (hasattr(p, "names") and hasattr(p, "packetType"))


class MQTTSink(_BaseSink):
    """Publishes each record to ``{topic_root}/{key}`` with the broker's
    confirmation; ``flush()`` (Quix's checkpoint) waits for all of them.

    :param client_id: MQTT client identifier.
    :param server: broker host name or address.
    :param port: broker port.
    :param topic_root: topics are ``{topic_root}/{key_serializer(key)}``.
    :param username: user name, if the broker wants one.
    :param password: password (never printed).
    :param version: ``"3.1"``, ``"3.1.1"`` or ``"5"``.
    :param tls_enabled: connect with TLS (default ``True``, as Quix).
    :param key_serializer: record key -> topic suffix (default ``bytes.decode``).
    :param value_serializer: record value -> payload, ``str`` or ``bytes``
        (default ``json.dumps``).
    :param qos: 0, 1 or 2.
    :param mqtt_flush_timeout_seconds: how long ``flush()`` waits for the
        confirmations before raising :class:`MqttPublishAckTimeout`.
    :param retain: a bool, or a callable of the record value returning one.
    :param properties: MQTT 5 publish properties: a paho ``Properties``, a
        dict (see :func:`mqlink.publish_properties`), or a callable of the
        record value returning either. Only with ``version="5"``.
    :param on_client_connect_success: called after ``setup()`` connected.
    :param on_client_connect_failure: called with the exception when
        ``setup()`` failed (should re-raise it).
    :param ca_file: PEM CA certificates to trust instead of the system's.
    :param cert_file: PEM client certificate, for mutual TLS.
    :param key_file: PEM private key of ``cert_file``.
    :param tls_insecure: skip certificate verification (tests only).
    :param tls_server_name: name to verify the certificate against.
    :param max_inflight: unconfirmed messages at most; ``add()`` waits when
        as many more are queued behind them.
    :param keep_alive: MQTT keep-alive, seconds.
    :param connect_timeout: seconds allowed for TCP, TLS and CONNACK.
    """

    def __init__(
        self,
        client_id: str,
        server: str,
        port: int,
        topic_root: str,
        username: Optional[str] = None,
        password: Optional[str] = None,
        version: str = "3.1.1",
        tls_enabled: bool = True,
        key_serializer: Callable[[Any], str] = bytes.decode,
        value_serializer: Callable[[Any], Union[str, bytes]] = json.dumps,
        qos: int = 1,
        mqtt_flush_timeout_seconds: float = 10,
        retain: RetainHandler = False,
        properties: Optional[PropertiesHandler] = None,
        on_client_connect_success: Optional[Callable[[], None]] = None,
        on_client_connect_failure: Optional[Callable[[Optional[Exception]], None]] = None,
        *,
        ca_file: Optional[str] = None,
        cert_file: Optional[str] = None,
        key_file: Optional[str] = None,
        tls_insecure: bool = False,
        tls_server_name: Optional[str] = None,
        max_inflight: int = 1000,
        keep_alive: float = 60,
        connect_timeout: float = 10,
    ) -> None:
        super().__init__(
            on_client_connect_success=on_client_connect_success,
            on_client_connect_failure=on_client_connect_failure,
        )
        if version not in ("3.1", "3.1.1", "5"):
            raise ValueError(f"version: {version!r} is not supported; use '3.1', '3.1.1' or '5'")
        if qos not in (0, 1, 2):
            raise ValueError(f"qos: {qos!r} is not a QoS (0, 1 or 2)")
        if properties is not None and version != "5":
            raise ValueError("properties: MQTT properties can only be used with version '5'")
        if isinstance(mqtt_flush_timeout_seconds, bool) or not (
            isinstance(mqtt_flush_timeout_seconds, (int, float)) and mqtt_flush_timeout_seconds >= 0
        ):
            raise ValueError(
                f"mqtt_flush_timeout_seconds: {mqtt_flush_timeout_seconds!r} is not a number >= 0"
            )
        if not isinstance(retain, bool) and not callable(retain):
            raise TypeError(f"retain: must be a bool or a callable, not {type(retain).__name__}")
        host = f"[{server}]" if ":" in server and not server.startswith("[") else server
        self._conn = _connection(
            f"{'mqtts' if tls_enabled else 'mqtt'}://{host}:{int(port)}",
            client_id, username, password, version, True, None, keep_alive,
            connect_timeout, ca_file, cert_file, key_file, tls_insecure,
            tls_server_name, max_inflight, 1000,
        )
        self._topic_root = topic_root
        self._key_serializer = key_serializer
        self._value_serializer = value_serializer
        # The default json.dumps runs in Rust (same bytes, several times faster).
        self._json = value_serializer is json.dumps
        self._qos = qos
        self._flush_timeout = float(mqtt_flush_timeout_seconds)
        self._retain_fn = None if isinstance(retain, bool) else retain
        self._retain = bool(retain) if isinstance(retain, bool) else False
        if properties is None or _is_properties_object(properties):
            self._properties_fn = None
            self._properties = publish_properties(properties)
        elif callable(properties):
            self._properties_fn = properties
            self._properties = None
        else:
            raise TypeError(
                "properties: must be a paho Properties, a dict or a callable, "
                f"not {type(properties).__name__}"
            )
        self._publisher: Any = None
        self._confirmed_at_flush = 0

    def __repr__(self) -> str:
        return f"<MQTTSink (mqlink): {self._topic_root}/{{key}}>"

    def setup(self) -> None:
        """Connects and waits for the broker's CONNACK. Raises
        :class:`mqlink.errors.ConnectFailed` naming the broker and why (not
        reachable, TLS, refused: not authorized …)."""
        if self._publisher is None:
            self._publisher = _mqlink.Publisher(self._conn)

    def add(
        self,
        value: Any,
        key: Any,
        timestamp: int,
        headers: Any,
        topic: str,
        partition: int,
        offset: int,
    ) -> None:
        """Publishes one record; returns once it is queued for the session."""
        publisher = self._publisher
        if publisher is None:
            raise RuntimeError("MQTTSink.add() before setup(): start the sink first")
        retain_fn = self._retain_fn
        properties_fn = self._properties_fn
        json_value = self._json
        try:
            publisher.publish(
                f"{self._topic_root}/{self._key_serializer(key)}",
                value if json_value else self._value_serializer(value),
                self._qos,
                bool(retain_fn(value)) if retain_fn is not None else self._retain,
                publish_properties(properties_fn(value))
                if properties_fn is not None
                else self._properties,
                False,
                json_value,
            )
        except PublishFailed as e:
            raise MqttPublishEnqueueFailed(str(e)) from None

    def flush(self) -> None:
        """Waits until the broker confirmed every record added so far, at
        most ``mqtt_flush_timeout_seconds``. Raises
        :class:`MqttPublishAckTimeout` (with ``unconfirmed``) on timeout, or
        :class:`mqlink.errors.PublishFailed` when the broker did not take
        records added since the previous flush. Unconfirmed records stay in
        flight: the session sends them again after a reconnect."""
        publisher = self._publisher
        if publisher is None:
            return
        try:
            publisher.flush(self._flush_timeout)
        except FlushTimeout as e:
            err = MqttPublishAckTimeout(
                f"Mqtt acknowledgement timeout of {self._flush_timeout}s reached: {e}"
            )
            err.unconfirmed = e.unconfirmed
            raise err from None
        _, confirmed, _ = publisher.counts()
        logger.info(f"{confirmed - self._confirmed_at_flush} MQTT messages published.")
        self._confirmed_at_flush = confirmed

    def on_paused(self) -> None:
        """Nothing to drop: records are already with the broker or in flight."""

    def close(self, timeout: Optional[float] = None) -> None:
        """Flushes (at most ``timeout``, default the flush timeout) and
        disconnects. Not part of Quix's interface; for scripts and tests."""
        publisher, self._publisher = self._publisher, None
        if publisher is not None:
            try:
                publisher.flush(self._flush_timeout if timeout is None else timeout)
            finally:
                publisher.disconnect()


__all__ = ["MQTTSink", "MqttPublishAckTimeout", "MqttPublishEnqueueFailed"]
