//! Sessions: what the broker keeps for a client id across connections —
//! its queue, the deliveries it has not acknowledged (with their packet
//! ids), the QoS 2 packet ids it has sent and not released, and its
//! subscriptions. Each session has its own lock; the router's lock is
//! never held while a session's is.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::Notify;

use crate::codec::ByteStr;
use crate::types::QoS;
use crate::PublishProperties;

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
}

pub(super) struct SessionState {
    pub queue: VecDeque<Delivery>,
    pub limit: usize,
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
}

/// What happened to an offered delivery.
pub(super) enum Offer {
    Queued,
    /// Online and full: the publisher waits (`taken` as seen).
    Full(Delivery, u64),
    /// Offline and full (dropped for it, counted in the log), or gone.
    Dropped,
}

impl Session {
    pub fn new(client_id: String, key: u64, limit: usize) -> Session {
        Session {
            client_id,
            key,
            state: Mutex::new(SessionState {
                queue: VecDeque::new(),
                limit,
                taken: 0,
                last_taken: Instant::now(),
                owner: None,
                generation: 0,
                inflight: VecDeque::new(),
                qos2_in: HashSet::new(),
                next_pkid: 0,
                subs: HashSet::new(),
                closed: false,
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

    /// Queues a delivery unless the queue is full.
    pub fn offer(&self, d: Delivery) -> Offer {
        let mut s = self.lock();
        if s.closed {
            return Offer::Dropped;
        }
        if s.queue.len() < s.limit {
            s.queue.push_back(d);
            drop(s);
            self.ready.notify_one();
            return Offer::Queued;
        }
        if s.owner.is_none() {
            tracing::warn!(client_id = %self.client_id, topic = %d.msg.topic, limit = s.limit, "Embedded broker: an offline session's queue is full; message dropped for it.");
            return Offer::Dropped;
        }
        Offer::Full(d, s.taken)
    }

    /// Messages accepted for this session and not delivered: queued, or
    /// sent and not acknowledged.
    pub fn undelivered(&self) -> usize {
        let s = self.lock();
        s.queue.len() + s.inflight.len()
    }
}

impl SessionState {
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
