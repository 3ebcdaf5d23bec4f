"""The exceptions of mqlink: one hierarchy, rooted at :class:`MqlinkError`."""

from __future__ import annotations


class MqlinkError(Exception):
    """Base class of every mqlink error."""


class ConnectFailed(MqlinkError, ConnectionError):
    """The broker could not be reached, or refused the connection (the
    message names the broker and its reason, e.g. ``not authorized``)."""


class PublishFailed(MqlinkError):
    """The broker did not take one or more messages (rejected them, or the
    session ended before they were confirmed). ``failed`` is how many, when
    raised by ``flush``."""

    failed: int = 0


class FlushTimeout(MqlinkError, TimeoutError):
    """``flush(timeout)`` ran out of time. ``unconfirmed`` is how many
    messages the broker has not confirmed yet; they stay in flight and are
    sent again after a reconnect."""

    unconfirmed: int = 0


class SessionStopped(MqlinkError):
    """The subscriber's session ended (closed, or a fatal error)."""


__all__ = ["MqlinkError", "ConnectFailed", "PublishFailed", "FlushTimeout", "SessionStopped"]
