//! The router: sessions by client id, the subscription tree and retained
//! messages, behind one lock that is only held for a lookup or an update —
//! never for I/O and never together with a session's lock held first.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use super::budget::Budget;
use super::session::{Counters, Delivery, Message, Offer, QueueLimits, Session};
use super::shown::Shown;
use super::tree::{Match, RetainedTree, SubTree, Subscriber};
use super::wire::Will;
use super::BrokerConfig;
use crate::codec::SubscribeOptions;

#[derive(Default)]
struct State {
    sessions: HashMap<String, Arc<Session>>,
    subs: SubTree,
    /// What the subscriptions cost, by [`subscription_cost`].
    sub_bytes: usize,
    retained: RetainedTree,
}

/// Bytes a subscription is counted as against `max_subscription_bytes`:
/// the filter (kept by the session and, level by level, in the tree) and
/// the bookkeeping around it (tree nodes, the subscriber entry).
fn subscription_cost(filter: &str) -> usize {
    512 + 2 * filter.len()
}

/// A subscription over `max_subscription_bytes`: SUBACK 0x97 (5) / 0x80 (3.1.1).
#[derive(Debug)]
pub(super) struct QuotaExceeded;

pub(super) struct Router {
    pub config: BrokerConfig,
    state: Mutex<State>,
    next_key: AtomicU64,
    pub counters: Arc<Counters>,
    /// Incomplete packets across connections (`max_incomplete_bytes`).
    pub incomplete: Arc<Budget>,
}

/// A session a connection took over or created.
pub(super) struct Attached {
    pub session: Arc<Session>,
    pub present: bool,
}

/// A delivery waiting for room in an online session's queue.
pub(super) struct Waiting {
    pub session: Arc<Session>,
    pub delivery: Delivery,
    /// The session's `taken` when the offer failed.
    pub seen: u64,
    pub since: Instant,
}

/// A filter split into its share group (if any) and the filter proper;
/// `None` for a malformed `$share/…` (topic.rs's parser, the one the
/// client uses).
pub(super) fn split_shared(filter: &str) -> Option<(Option<&str>, &str)> {
    match crate::topic::shared_parts(filter) {
        None => Some((None, filter)),
        Some(Ok((group, f))) => Some((Some(group), f)),
        Some(Err(())) => None,
    }
}

impl Router {
    pub fn new(config: BrokerConfig) -> Router {
        Router {
            state: Mutex::default(),
            next_key: AtomicU64::new(1),
            counters: Arc::default(),
            incomplete: Arc::new(Budget::new(config.max_incomplete_bytes)),
            config,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn key(&self) -> u64 {
        self.next_key.fetch_add(1, Ordering::Relaxed)
    }

    /// Takes over the session of `client_id` (telling its connection to
    /// go), or creates one. `clean` discards an existing session.
    pub fn attach(&self, client_id: &str, clean: bool, conn: u64, kick: Arc<Notify>) -> Attached {
        let old = {
            let mut st = self.lock();
            match st.sessions.get(client_id) {
                Some(s) if !clean => {
                    let s = s.clone();
                    drop(st);
                    let mut g = s.lock();
                    if let Some((_, k)) = g.owner.replace((conn, kick)) {
                        k.notify_one();
                    }
                    g.generation += 1;
                    g.overflowed = false;
                    drop(g);
                    s.room.notify_waiters();
                    return Attached {
                        session: s,
                        present: true,
                    };
                }
                Some(_) => st.sessions.remove(client_id),
                None => None,
            }
        };
        if let Some(old) = old {
            self.discard(&old);
        }
        let limits = QueueLimits {
            messages: self.config.max_queued_messages.max(1),
            bytes: self.config.max_queued_bytes,
            hold: self.config.hold_publishers_for.holds(client_id),
        };
        let session = Arc::new(Session::new(
            client_id.to_owned(),
            self.key(),
            limits,
            self.counters.clone(),
        ));
        session.lock().owner = Some((conn, kick));
        let mut st = self.lock();
        if let Some(other) = st.sessions.insert(client_id.to_owned(), session.clone()) {
            // Two connections with the same id raced: the later one wins.
            drop(st);
            self.discard(&other);
        }
        Attached {
            session,
            present: false,
        }
    }

    /// Ends a session: its subscriptions leave the tree, its queue and
    /// in-flight deliveries are dropped, its connection (if any) is told to go.
    fn discard(&self, s: &Arc<Session>) {
        let subs = {
            let mut g = s.lock();
            g.closed = true;
            g.clear_queue();
            g.inflight = Default::default();
            if let Some((_, k)) = g.owner.take() {
                k.notify_one();
            }
            std::mem::take(&mut g.subs)
        };
        s.room.notify_waiters();
        let mut st = self.lock();
        for filter in &subs {
            if let Some((group, f)) = split_shared(filter) {
                if st.subs.remove(group, f, s.key) {
                    st.sub_bytes -= subscription_cost(filter);
                }
            }
        }
    }

    /// Removes the session if it is still the one registered for its client id.
    pub fn remove(&self, s: &Arc<Session>) {
        let removed = {
            let mut st = self.lock();
            match st.sessions.get(&s.client_id) {
                Some(cur) if Arc::ptr_eq(cur, s) => st.sessions.remove(&s.client_id),
                _ => None,
            }
        };
        if removed.is_some() {
            self.discard(s);
        }
    }

    /// Lets go of a session at the end of connection `conn`: removed now
    /// (expiry 0), after `expiry` seconds offline, or kept (`u32::MAX`).
    /// Returns whether `conn` still owned it.
    pub fn detach(self: &Arc<Self>, s: &Arc<Session>, conn: u64, expiry: u32) -> bool {
        let generation = {
            let mut g = s.lock();
            if !matches!(g.owner, Some((c, _)) if c == conn) {
                return false;
            }
            g.owner = None;
            g.generation
        };
        s.room.notify_waiters();
        match expiry {
            0 => self.remove(s),
            u32::MAX => {}
            secs => {
                let router = Arc::downgrade(self);
                let s = s.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_secs(secs as u64)).await;
                    let Some(router) = router.upgrade() else {
                        return;
                    };
                    let expired = {
                        let g = s.lock();
                        g.owner.is_none() && g.generation == generation
                    };
                    if expired {
                        tracing::debug!(client_id = %Shown(&s.client_id), "Embedded broker: session expired.");
                        router.remove(&s);
                    }
                });
            }
        }
        true
    }

    /// Publishes a will now, or after its delay unless the session was
    /// resumed (or ended: then at once, as MQTT 5 says).
    pub fn publish_will(self: &Arc<Self>, s: &Arc<Session>, will: Will, expiry: u32) {
        let delay = will.delay.min(expiry);
        let msg = Arc::new(Message {
            topic: will.topic,
            payload: will.payload,
            qos: will.qos,
            retain: will.retain,
            expires: will
                .properties
                .as_ref()
                .and_then(|p| p.message_expiry_interval)
                .map(|e| Instant::now() + Duration::from_secs(e as u64)),
            properties: will.properties.map(|mut p| {
                p.message_expiry_interval = None;
                p
            }),
            origin: s.key,
        });
        if delay == 0 {
            self.route_now(&msg, "last will");
            return;
        }
        let generation = s.lock().generation;
        let router = Arc::downgrade(self);
        let s = s.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(delay as u64)).await;
            let Some(router) = router.upgrade() else {
                return;
            };
            let resumed = {
                let g = s.lock();
                g.generation != generation && !g.closed
            };
            if !resumed {
                router.route_now(&msg, "delayed last will");
            }
        });
    }

    /// Routes a message nobody waits for (a will): where a queue is full, dropped.
    fn route_now(&self, msg: &Arc<Message>, what: &str) {
        for w in self.route(msg) {
            tracing::warn!(client_id = %Shown(&w.session.client_id), topic = %Shown(&msg.topic), "Embedded broker: a subscriber's queue is full; {what} dropped for it.");
        }
    }

    /// Keeps a retained message and queues `msg` for every matching
    /// session; returns the online sessions whose queue is full.
    pub fn route(&self, msg: &Arc<Message>) -> Vec<Waiting> {
        let mut matches = Vec::new();
        {
            let mut st = self.lock();
            if msg.retain {
                let keep = (!msg.payload.is_empty()).then(|| msg.clone());
                st.retained.set(&msg.topic, keep);
            }
            st.subs.matches(&msg.topic, &mut matches);
        }
        let mut targets: HashMap<(u64, bool), Delivery> = HashMap::new();
        let mut sessions: HashMap<(u64, bool), Arc<Session>> = HashMap::new();
        for Match { sub, shared } in matches {
            let Subscriber { session, opts, id } = sub;
            if !shared && opts.no_local && session.key == msg.origin {
                continue;
            }
            let qos = opts.qos.min(msg.qos);
            let retain = !shared && opts.retain_as_published && msg.retain;
            let key = (session.key, shared);
            let d = targets.entry(key).or_insert_with(|| Delivery {
                msg: msg.clone(),
                qos,
                retain,
                sub_ids: Vec::new(),
            });
            d.qos = d.qos.max(qos);
            d.retain |= retain;
            d.sub_ids.extend(id);
            sessions.entry(key).or_insert(session);
        }
        let now = Instant::now();
        targets
            .into_iter()
            .filter_map(|(key, delivery)| {
                let session = sessions.remove(&key).expect("same keys");
                match session.offer(delivery) {
                    Offer::Queued | Offer::Dropped => None,
                    Offer::Full(delivery, seen) => Some(Waiting {
                        session,
                        delivery,
                        seen,
                        since: now,
                    }),
                }
            })
            .collect()
    }

    /// Subscribes; returns the retained messages the subscription should
    /// get (per retain handling), or a refusal when a new subscription
    /// would take the subscriptions over `max_subscription_bytes`.
    pub fn subscribe(
        &self,
        s: &Arc<Session>,
        filter: &str,
        opts: SubscribeOptions,
        id: Option<u32>,
    ) -> Result<Vec<Arc<Message>>, QuotaExceeded> {
        let Some((group, f)) = split_shared(filter) else {
            return Ok(Vec::new());
        };
        let kept_before = {
            let mut g = s.lock();
            if g.closed {
                return Ok(Vec::new());
            }
            !g.subs.insert(filter.to_owned())
        };
        let mut st = self.lock();
        let new = st.subs.insert(
            group,
            f,
            Subscriber {
                session: s.clone(),
                opts,
                id,
            },
        );
        if new {
            let cost = subscription_cost(filter);
            if st.sub_bytes + cost > self.config.max_subscription_bytes {
                st.subs.remove(group, f, s.key);
                drop(st);
                if !kept_before {
                    s.lock().subs.remove(filter);
                }
                return Err(QuotaExceeded);
            }
            st.sub_bytes += cost;
        }
        let mut retained = Vec::new();
        if group.is_none() && (opts.retain_handling == 0 || (opts.retain_handling == 1 && new)) {
            st.retained.matching(f, &mut retained);
        }
        Ok(retained)
    }

    /// Unsubscribes; true if the subscription existed.
    pub fn unsubscribe(&self, s: &Arc<Session>, filter: &str) -> bool {
        let Some((group, f)) = split_shared(filter) else {
            return false;
        };
        s.lock().subs.remove(filter);
        let mut st = self.lock();
        let removed = st.subs.remove(group, f, s.key);
        if removed {
            st.sub_bytes -= subscription_cost(filter);
        }
        removed
    }

    /// Sessions that exist (for `undelivered`).
    pub fn sessions(&self) -> Vec<Arc<Session>> {
        self.lock().sessions.values().cloned().collect()
    }

    /// (sessions, subscriptions, retained messages, subscription bytes).
    pub fn counts(&self) -> (usize, usize, usize, usize) {
        let st = self.lock();
        (
            st.sessions.len(),
            st.subs.len(),
            st.retained.len(),
            st.sub_bytes,
        )
    }
}
