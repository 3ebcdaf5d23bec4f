"""mqlink: MQTT that never loses a message, on mqlink's Rust core.

- :class:`Publisher`: publish with the broker's confirmation (a
  :class:`Delivery` per message, ``flush(timeout)`` for all of them).
- :class:`Subscriber`: iterate messages, ``msg.ack()`` each once it is safe;
  acknowledgements reach the broker in arrival order.
- :mod:`mqlink.quix`: ``MQTTSink``, a drop-in replacement for
  ``quixstreams.sinks.community.mqtt.MQTTSink``.

Errors are in :mod:`mqlink.errors`.
"""

from ._mqlink import Message
from .client import Delivery, Publisher, Subscriber, publish_properties
from .errors import ConnectFailed, FlushTimeout, MqlinkError, PublishFailed, SessionStopped

__all__ = [
    "Publisher",
    "Subscriber",
    "Delivery",
    "Message",
    "publish_properties",
    "MqlinkError",
    "ConnectFailed",
    "PublishFailed",
    "FlushTimeout",
    "SessionStopped",
]
