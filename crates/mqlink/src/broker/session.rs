//! Sessions: what the broker keeps for a client id across connections —
//! its queue, the deliveries it has not acknowledged (with their packet
//! ids), the QoS 2 packet ids it has sent and not released, and its
//! subscriptions. Each session has its own lock; the router's lock is
//! never held while a session's is.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::Notify;

use super::shown::Shown;
use crate::codec::ByteStr;
use crate::types::QoS;
use crate::PublishProperties;

/// Drops for one session are logged at most this often (with their count).
const DROP_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// A message as the broker accepted it, shared by every subscriber.
#[derive(Debug)]
pub(super) struct Message {
    pub topic: ByteStr,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    /// MQTT 5 properties as published, without topic alias, subscription
    /// identifiers and message expiry (set per delivery).
    pub properties: Option<Box<PublishProperties>>,
    /// From the Message Expiry Interval: not delivered after this.
    pub expires: Option<Instant>,
    /// The publishing session's key (for no-local).
    pub origin: u64,
}

impl Message {
    /// Bytes a queued copy accounts for: topic, payload and bookkeeping.
    pub fn size(&self) -> usize {
        self.topic.len() + self.payload.len() + 64
    }

    pub fn expired(&self, now: Instant) -> bool {
        self.expires.is_some_and(|e| e <= now)
    }
}

/// A message on its way to one session.
#[derive(Clone, Debug)]
pub(super) struct Delivery {
    pub msg: Arc<Message>,
    pub qos: QoS,
    pub retain: bool,
    pub sub_ids: Vec<u32>,
}

/// A delivery sent and not completed: QoS 1 waiting for PUBACK, QoS 2
/// waiting for PUBREC (`released` false) or PUBCOMP (`released` true).
#[derive(Debug)]
pub(super) struct Inflight {
    pub pkid: u16,
    pub delivery: Delivery,
    pub released: bool,
}

/// How much a session may queue, and what happens beyond it.
#[derive(Clone, Copy, Debug)]
pub(super) struct QueueLimits {
    pub messages: usize,
    pub bytes: usize,
    /// A full queue makes its publishers wait (instead of dropping QoS 0
    /// and disconnecting the subscriber at QoS 1/2).
    pub hold: bool,
}

/// Broker-wide counts of what slow subscribers cost.
#[derive(Debug, Default)]
pub(super) struct Counters {
    /// Messages not queued for a session because its queue was full.
    pub dropped: AtomicU64,
    /// Subscribers disconnected because a QoS 1/2 message did not fit their queue.
    pub slow_disconnects: AtomicU64,
}

pub(super) struct Session {
    pub client_id: String,
    /// Unique for the broker's lifetime (a new session under the same
    /// client id gets a new key).
    pub key: u64,
    state: Mutex<SessionState>,
    /// A delivery was queued (one consumer: the owning connection).
    pub ready: Notify,
    /// A full queue has room again, or the session went offline (waiting publishers).
    pub room: Notify,
    counters: Arc<Counters>,
}

pub(super) struct SessionState {
    queue: VecDeque<Delivery>,
    /// Bytes in `queue` (by [`Message::size`]).
    queue_bytes: usize,
    pub limits: QueueLimits,
    /// Deliveries taken off the queue, ever; publishers waiting for room watch it.
    pub taken: u64,
    pub last_taken: Instant,
    /// The connection that owns the session and how to tell it to go.
    pub owner: Option<(u64, Arc<Notify>)>,
    /// Incremented on every attach: timers (session expiry, will delay)
    /// started by an earlier connection check it.
    pub generation: u64,
    pub inflight: VecDeque<Inflight>,
    /// QoS 2 packet ids received and not released yet (de-duplication).
    pub qos2_in: HashSet<u16>,
    pub next_pkid: u16,
    /// Filters as subscribed (`$share/…` included), to leave the tree when the session ends.
    pub subs: HashSet<String>,
    /// Removed from the router: queue nothing more.
    pub closed: bool,
    /// This connection was told to go for a full queue (once per connection).
    pub overflowed: bool,
    /// Messages dropped for this session since the last log line about it.
    dropped_unlogged: u64,
    last_drop_log: Option<Instant>,
}

/// What happened to an offered delivery.
pub(super) enum Offer {
    Queued,
    /// Online, full and holding publishers: the publisher waits (`taken` as seen).
    Full(Delivery, u64),
    /// Full (dropped for it and counted; at QoS 1/2 an online subscriber
    /// is disconnected), or gone.
    Dropped,
}

impl Session {
    pub fn new(
        client_id: String,
        key: u64,
        limits: QueueLimits,
        counters: Arc<Counters>,
    ) -> Session {
        Session {
            client_id,
            key,
            counters,
            state: Mutex::new(SessionState {
                queue: VecDeque::new(),
                queue_bytes: 0,
                limits,
                taken: 0,
                last_taken: Instant::now(),
                owner: None,
                generation: 0,
                inflight: VecDeque::new(),
                qos2_in: HashSet::new(),
                next_pkid: 0,
                subs: HashSet::new(),
                closed: false,
                overflowed: false,
                dropped_unlogged: 0,
                last_drop_log: None,
            }),
            ready: Notify::new(),
            room: Notify::new(),
        }
    }

    pub fn lock(&self) -> MutexGuard<'_, SessionState> {
        // A panic while holding a session lock leaves consistent-enough
        // state (every update is a single push/pop); keep serving.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn is_online(&self) -> bool {
        self.lock().owner.is_some()
    }

    /// Queues a delivery unless the queue is full. Beyond it a session
    /// that holds publishers makes them wait; any other drops the
    /// message, and at QoS 1/2 an online subscriber is told to go (it is
    /// not keeping up, and it would lose what it was promised).
    pub fn offer(&self, d: Delivery) -> Offer {
        let mut s = self.lock();
        if s.closed {
            return Offer::Dropped;
        }
        if s.has_room(d.msg.size()) {
            s.push(d);
            drop(s);
            self.ready.notify_one();
            return Offer::Queued;
        }
        let online = s.owner.is_some();
        if online && s.limits.hold {
            return Offer::Full(d, s.taken);
        }
        self.counters.dropped.fetch_add(1, Ordering::Relaxed);
        s.dropped_unlogged += 1;
        if online && d.qos != QoS::AtMostOnce && !s.overflowed {
            s.overflowed = true;
            s.dropped_unlogged = 0;
            s.last_drop_log = Some(Instant::now());
            self.counters
                .slow_disconnects
                .fetch_add(1, Ordering::Relaxed);
            tracing::warn!(client_id = %Shown(&self.client_id), queued = s.queue.len(), bytes = s.queue_bytes, "Embedded broker: a subscriber's queue is full (max_queued_messages / max_queued_bytes) for a QoS 1/2 message; disconnected.");
            if let Some((_, kick)) = &s.owner {
                kick.notify_one();
            }
        } else {
            s.log_drops(&self.client_id);
        }
        Offer::Dropped
    }

    /// Messages accepted for this session and not delivered: queued, or
    /// sent and not acknowledged.
    pub fn undelivered(&self) -> usize {
        let s = self.lock();
        s.queue.len() + s.inflight.len()
    }
}

impl SessionState {
    /// Whether a message of `size` bytes fits (one always fits an empty queue).
    fn has_room(&self, size: usize) -> bool {
        self.queue.is_empty()
            || (self.queue.len() < self.limits.messages
                && self.queue_bytes + size <= self.limits.bytes)
    }

    /// Whether the queue is at one of its limits.
    pub fn is_full(&self) -> bool {
        !self.queue.is_empty()
            && (self.queue.len() >= self.limits.messages || self.queue_bytes >= self.limits.bytes)
    }

    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    fn push(&mut self, d: Delivery) {
        self.queue_bytes += d.msg.size();
        self.queue.push_back(d);
    }

    pub fn pop(&mut self) -> Option<Delivery> {
        let d = self.queue.pop_front()?;
        self.queue_bytes -= d.msg.size();
        Some(d)
    }

    pub fn clear_queue(&mut self) {
        self.queue = VecDeque::new();
        self.queue_bytes = 0;
    }

    /// One line per session per [`DROP_LOG_INTERVAL`], with the count.
    fn log_drops(&mut self, client_id: &str) {
        let now = Instant::now();
        if self
            .last_drop_log
            .is_some_and(|t| now.duration_since(t) < DROP_LOG_INTERVAL)
        {
            return;
        }
        tracing::warn!(client_id = %Shown(client_id), dropped = self.dropped_unlogged, online = self.owner.is_some(), "Embedded broker: a subscriber's queue is full (max_queued_messages / max_queued_bytes); messages dropped for it (logged at most every 10 s).");
        self.dropped_unlogged = 0;
        self.last_drop_log = Some(now);
    }

    /// A packet id not in flight.
    pub fn next_pkid(&mut self) -> u16 {
        loop {
            self.next_pkid = self.next_pkid.checked_add(1).unwrap_or(1);
            let id = self.next_pkid;
            if !self.inflight.iter().any(|f| f.pkid == id) {
                return id;
            }
        }
    }

    /// The in-flight entry for `pkid` (acknowledgements come mostly in order).
    pub fn inflight_pos(&self, pkid: u16) -> Option<usize> {
        match self.inflight.front() {
            Some(f) if f.pkid == pkid => Some(0),
            _ => self.inflight.iter().position(|f| f.pkid == pkid),
        }
    }
}
