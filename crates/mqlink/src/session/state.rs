//! The session's protocol state, without I/O: methods change the state and
//! append the bytes to send to a buffer; the driver does the sending.
//!
//! - [`Outgoing`]: publishes waiting to be written, and those written but
//!   not yet confirmed, in the order the application gave them.
//! - [`InAcks`]: the ordered acknowledgement sequencer for incoming QoS 1/2
//!   messages (MQTT-4.6.0-2: PUBACK/PUBREC in arrival order), and the
//!   receiver's QoS 2 state: packet ids PUBREC'd and not yet released,
//!   whose resends are not delivered again (MQTT-4.3.3-10).
//! - [`HangUps`]: connections the broker ended the same way again and
//!   again (at a SUBSCRIBE, or by handing the client id to another
//!   connection), turned into an error instead of a reconnect loop.

use std::collections::{HashSet, VecDeque};

use bytes::BytesMut;
use tokio::sync::{oneshot, OwnedSemaphorePermit};

use crate::codec::{encode_ack, encode_publish, publish_size, Ack, AckKind, Publish};
use crate::error::PublishError;
use crate::types::{Protocol, QoS};

/// The broker's answer to a confirmed publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Confirmed {
    /// MQTT 5 reason code of the PUBACK/PUBCOMP (0 or 0x10 "no matching
    /// subscribers"); 0 on 3.1.1 and for QoS 0.
    pub reason_code: u8,
}

pub(crate) type Outcome = Result<Confirmed, PublishError>;

/// Completes a publish's token and frees its place in the window.
pub(crate) struct Waiter {
    pub(crate) tx: Option<oneshot::Sender<Outcome>>,
    pub(crate) _permit: Option<OwnedSemaphorePermit>,
}

impl Waiter {
    pub(crate) fn complete(mut self, outcome: Outcome) {
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(outcome);
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(clippy::enum_variant_names)] // named after the packet each stage awaits
enum Stage {
    /// QoS 1, PUBLISH sent.
    AwaitPubAck,
    /// QoS 2, PUBLISH sent.
    AwaitPubRec,
    /// QoS 2, PUBREC received and PUBREL sent.
    AwaitPubComp,
}

struct Slot {
    publish: Publish,
    stage: Stage,
    seq: u64,
    waiter: Waiter,
    /// PUBREL was sent again after a reconnect: a PUBCOMP 0x92 (packet
    /// identifier not found) then means the broker completed it before.
    recovering: bool,
}

/// PUBCOMP reason "packet identifier not found": not an error during recovery (MQTT 5 §4.3.3).
const PACKET_ID_NOT_FOUND: u8 = 0x92;

/// What the broker takes in a PUBLISH: its CONNACK (MQTT 5), and the
/// client's own maximum packet size.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    pub(crate) max_qos: QoS,
    /// Send above `max_qos` at `max_qos` instead of failing.
    pub(crate) downgrade_qos: bool,
    pub(crate) retain_available: bool,
    pub(crate) max_packet_size: usize,
    /// Topic aliases 1..=this are allowed (0: none).
    pub(crate) topic_alias_maximum: u16,
}

impl Limits {
    pub(crate) fn unlimited() -> Self {
        Limits {
            max_qos: QoS::ExactlyOnce,
            downgrade_qos: false,
            retain_available: true,
            max_packet_size: usize::MAX,
            topic_alias_maximum: u16::MAX,
        }
    }

    /// The QoS to send `p` at, or why the broker would refuse it (and,
    /// on MQTT 5, disconnect: [MQTT-3.2.2-11], [MQTT-3.2.2-14], §3.1.2.24).
    fn admit(&self, p: &Publish, protocol: Protocol) -> Result<QoS, PublishError> {
        let topic = || p.topic.to_string();
        let mut qos = p.qos;
        if qos > self.max_qos {
            if !self.downgrade_qos {
                return Err(PublishError::QosNotSupported {
                    topic: topic(),
                    qos: qos as u8,
                    max: self.max_qos as u8,
                });
            }
            qos = self.max_qos;
        }
        if p.retain && !self.retain_available {
            return Err(PublishError::RetainNotSupported { topic: topic() });
        }
        if let Some(alias) = p.properties.as_ref().and_then(|x| x.topic_alias) {
            if alias == 0 || alias > self.topic_alias_maximum {
                return Err(PublishError::TopicAliasNotAllowed {
                    topic: topic(),
                    alias,
                    max: self.topic_alias_maximum,
                });
            }
        }
        let mut size = publish_size(p, protocol);
        if p.qos != QoS::AtMostOnce && qos == QoS::AtMostOnce {
            size -= 2; // no packet identifier
        }
        if size > self.max_packet_size {
            return Err(PublishError::TooLarge {
                topic: topic(),
                size,
                max: self.max_packet_size,
            });
        }
        Ok(qos)
    }
}

pub(crate) struct Outgoing {
    /// Indexed by packet id; ids 1..=max_inflight are used.
    slots: Vec<Option<Slot>>,
    free: Vec<u16>,
    /// (packet id, sequence) of slots in send order; stale entries are skipped.
    order: VecDeque<(u16, u64)>,
    /// Publishes not yet written, in the application's order.
    outbox: VecDeque<(Publish, Waiter)>,
    next_seq: u64,
    live: usize,
    /// QoS 2 publishes between PUBLISH and PUBCOMP (a subset of `live`).
    live_qos2: usize,
    limits: Limits,
    /// The publish (packet id, sequence) that was the oldest one the broker
    /// had not answered when it dropped the connection, and how many
    /// times in a row that happened.
    drop_streak: Option<((u16, u64), u32)>,
}

/// How many unconfirmed publishes the broker accepts.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Quota {
    pub(crate) all: usize,
    /// QoS 2 alone. MQTT 3.1.1 has no receive maximum, yet Mosquitto refuses
    /// (0x97, then disconnects) publishes beyond its `max_inflight_messages`
    /// (20 by default) while QoS 2 messages await PUBREL.
    pub(crate) qos2: usize,
}

impl Quota {
    #[cfg(test)]
    pub(crate) fn unlimited() -> Self {
        Quota {
            all: usize::MAX,
            qos2: usize::MAX,
        }
    }
}

impl Outgoing {
    pub(crate) fn new(max_inflight: u16) -> Self {
        let n = max_inflight as usize;
        Outgoing {
            slots: (0..=n).map(|_| None).collect(),
            free: (1..=max_inflight).rev().collect(),
            order: VecDeque::with_capacity(n),
            outbox: VecDeque::new(),
            next_seq: 0,
            live: 0,
            live_qos2: 0,
            limits: Limits::unlimited(),
            drop_streak: None,
        }
    }

    /// The broker's limits for the connection that begins.
    pub(crate) fn set_limits(&mut self, limits: Limits) {
        self.limits = limits;
    }

    /// Publishes written and awaiting confirmation.
    #[cfg(test)]
    pub(crate) fn inflight(&self) -> usize {
        self.live
    }

    pub(crate) fn is_idle(&self) -> bool {
        self.live == 0 && self.outbox.is_empty()
    }

    #[cfg(test)]
    pub(crate) fn queued(&self) -> usize {
        self.outbox.len()
    }

    pub(crate) fn push(&mut self, publish: Publish, waiter: Waiter) {
        self.outbox.push_back((publish, waiter));
    }

    /// Writes queued publishes while fewer than `quota` are unconfirmed.
    /// QoS 0 waiters are handed back: they complete once the bytes are written.
    pub(crate) fn send_queued(
        &mut self,
        quota: Quota,
        protocol: Protocol,
        out: &mut BytesMut,
        max_bytes: usize,
        written: &mut impl FnMut(Waiter, usize),
    ) {
        while out.len() < max_bytes {
            let Some((p, _)) = self.outbox.front_mut() else {
                return;
            };
            // A publish the broker cannot take fails alone, before it is sent.
            match self.limits.admit(p, protocol) {
                Ok(qos) => p.qos = qos,
                Err(e) => {
                    let (_, w) = self.outbox.pop_front().expect("front exists");
                    w.complete(Err(e));
                    continue;
                }
            }
            if (p.qos != QoS::AtMostOnce && self.live >= quota.all)
                || (p.qos == QoS::ExactlyOnce && self.live_qos2 >= quota.qos2)
            {
                return;
            }
            let (mut publish, waiter) = self.outbox.pop_front().expect("front exists");
            if publish.qos == QoS::AtMostOnce {
                encode_publish(&publish, protocol, out);
                written(waiter, out.len());
                continue;
            }
            // The window (semaphore) admits at most max_inflight publishes, so an id is free.
            let pkid = self.free.pop().expect("window larger than packet id pool");
            publish.pkid = pkid;
            publish.dup = false;
            encode_publish(&publish, protocol, out);
            let seq = self.next_seq;
            self.next_seq += 1;
            let stage = if publish.qos == QoS::AtLeastOnce {
                Stage::AwaitPubAck
            } else {
                self.live_qos2 += 1;
                Stage::AwaitPubRec
            };
            self.slots[pkid as usize] = Some(Slot {
                publish,
                stage,
                seq,
                waiter,
                recovering: false,
            });
            self.order.push_back((pkid, seq));
            self.live += 1;
        }
    }

    /// Handles PUBACK, PUBREC and PUBCOMP; may append a PUBREL.
    /// Returns an error text for an ack that does not fit the state.
    pub(crate) fn on_ack(&mut self, ack: &Ack, out: &mut BytesMut) -> Result<(), String> {
        let slot = self
            .slots
            .get_mut(ack.pkid as usize)
            .and_then(Option::as_mut);
        let Some(slot) = slot else {
            // A late duplicate for an id already completed: harmless.
            tracing::debug!(pkid = ack.pkid, kind = ?ack.kind, "Ack for an unknown packet id ignored.");
            return Ok(());
        };
        let failed = ack.reason >= 0x80;
        match (ack.kind, slot.stage) {
            (AckKind::PubComp, Stage::AwaitPubComp)
                if slot.recovering && ack.reason == PACKET_ID_NOT_FOUND =>
            {
                self.finish(
                    ack.pkid,
                    Ok(Confirmed {
                        reason_code: ack.reason,
                    }),
                );
            }
            (AckKind::PubAck, Stage::AwaitPubAck) | (AckKind::PubComp, Stage::AwaitPubComp) => {
                self.finish(ack.pkid, Self::outcome(ack));
            }
            (AckKind::PubRec, Stage::AwaitPubRec) if failed => {
                self.finish(ack.pkid, Self::outcome(ack));
            }
            // A broker without QoS 2 (RabbitMQ) PUBACKs it: that publish
            // fails alone, saying so, instead of a protocol-violation loop.
            (AckKind::PubAck, Stage::AwaitPubRec) => {
                let topic = slot.publish.topic.to_string();
                self.finish(
                    ack.pkid,
                    Err(PublishError::Qos2AnsweredWithPubAck { topic }),
                );
            }
            (AckKind::PubRec, Stage::AwaitPubRec | Stage::AwaitPubComp) => {
                slot.stage = Stage::AwaitPubComp;
                encode_ack(AckKind::PubRel, ack.pkid, out);
            }
            (kind, stage) => {
                return Err(format!(
                    "{kind:?} for packet id {} which awaits {stage:?}",
                    ack.pkid
                ))
            }
        }
        Ok(())
    }

    fn outcome(ack: &Ack) -> Outcome {
        Ok(Confirmed {
            reason_code: ack.reason,
        })
        .and_then(|c| {
            if ack.reason >= 0x80 {
                Err(PublishError::Rejected {
                    topic: String::new(),
                    code: ack.reason,
                    reason: ack.reason_string.clone(),
                })
            } else {
                Ok(c)
            }
        })
    }

    fn finish(&mut self, pkid: u16, outcome: Outcome) {
        let Some(slot) = self.slots[pkid as usize].take() else {
            return;
        };
        let outcome = outcome.map_err(|e| match e {
            PublishError::Rejected { code, reason, .. } => PublishError::Rejected {
                topic: slot.publish.topic.to_string(),
                code,
                reason,
            },
            e => e,
        });
        if slot.publish.qos == QoS::ExactlyOnce {
            self.live_qos2 -= 1;
        }
        slot.waiter.complete(outcome);
        self.free.push(pkid);
        self.live -= 1;
        self.compact();
    }

    fn is_current(&self, (pkid, seq): (u16, u64)) -> bool {
        matches!(&self.slots[pkid as usize], Some(s) if s.seq == seq)
    }

    fn compact(&mut self) {
        while let Some(&front) = self.order.front() {
            if self.is_current(front) {
                break;
            }
            self.order.pop_front();
        }
        // Out-of-order confirmations leave stale entries behind a slow one.
        if self.order.len() > 4 * self.slots.len() {
            let slots = &self.slots;
            self.order
                .retain(|&(p, s)| matches!(&slots[p as usize], Some(x) if x.seq == s));
        }
    }

    /// After a new connection: resends every unconfirmed publish in the
    /// original order with DUP set, or PUBREL where PUBREC was received.
    /// When the broker lost the session, a QoS 2 publish it acknowledged
    /// with PUBREC but never saw released is gone with that session (a
    /// broker may forward a QoS 2 message only on PUBREL, as Mosquitto
    /// does): it is sent again as a PUBLISH, since "confirmed" means PUBCOMP.
    /// Returns how many QoS 2 publishes had their PUBREL sent before the
    /// broker lost the session: whether the broker released them is
    /// unknown, so sending them again (to lose none) may deliver them twice.
    pub(crate) fn resend(
        &mut self,
        session_present: bool,
        protocol: Protocol,
        out: &mut BytesMut,
    ) -> u64 {
        let mut uncertain = 0;
        let order: Vec<(u16, u64)> = self.order.iter().copied().collect();
        for entry in order {
            if !self.is_current(entry) {
                continue;
            }
            let pkid = entry.0;
            let slot = self.slots[pkid as usize].as_mut().expect("current");
            if slot.stage != Stage::AwaitPubComp || !session_present {
                // Another broker of the failover list may take less.
                let refused = match self.limits.admit(&slot.publish, protocol) {
                    Ok(q) if q == slot.publish.qos => None,
                    Ok(q) => Some(PublishError::QosNotSupported {
                        topic: slot.publish.topic.to_string(),
                        qos: slot.publish.qos as u8,
                        max: q as u8,
                    }),
                    Err(e) => Some(e),
                };
                if let Some(e) = refused {
                    self.finish(pkid, Err(e));
                    continue;
                }
            }
            let slot = self.slots[pkid as usize].as_mut().expect("current");
            if slot.stage == Stage::AwaitPubComp && session_present {
                slot.recovering = true;
                encode_ack(AckKind::PubRel, pkid, out);
            } else {
                if slot.stage == Stage::AwaitPubComp {
                    slot.stage = Stage::AwaitPubRec;
                    uncertain += 1;
                }
                slot.publish.dup = true;
                encode_publish(&slot.publish, protocol, out);
            }
        }
        uncertain
    }

    /// The oldest publish the broker has not answered at all (no PUBACK or
    /// PUBREC). Brokers answer in order, so when one closes the connection
    /// because of a packet, it is this one.
    fn oldest_unanswered(&self) -> Option<(u16, u64)> {
        self.order.iter().copied().find(|&(pkid, seq)| {
            matches!(&self.slots[pkid as usize],
                Some(s) if s.seq == seq && s.stage != Stage::AwaitPubComp)
        })
    }

    /// The broker closed the connection soon after it began. When the same
    /// publish was the oldest unanswered one `limit` times in a row, it is
    /// the cause (a broker that will never take it — too large, a QoS or
    /// retain flag it does not support — and on 3.1.1 says nothing else):
    /// it fails alone instead of being resent forever.
    pub(crate) fn dropped_by_broker(&mut self, limit: u32, protocol: Protocol) {
        let Some(suspect) = self.oldest_unanswered() else {
            self.drop_streak = None;
            return;
        };
        let times = match self.drop_streak {
            Some((s, n)) if s == suspect => n + 1,
            _ => 1,
        };
        if times < limit {
            self.drop_streak = Some((suspect, times));
            return;
        }
        self.drop_streak = None;
        let publish = &self.slots[suspect.0 as usize]
            .as_ref()
            .expect("current")
            .publish;
        let e = PublishError::DroppedByBroker {
            topic: publish.topic.to_string(),
            size: publish_size(publish, protocol),
            times,
            qos: publish.qos as u8,
            retain: publish.retain,
        };
        tracing::error!(error = %e, "Publish failed.");
        self.finish(suspect.0, Err(e));
    }

    /// Whether a publish awaits the broker's first answer (PUBACK/PUBREC).
    pub(crate) fn awaiting_answer(&self) -> bool {
        self.oldest_unanswered().is_some()
    }

    /// The connection ended some other way: no streak.
    pub(crate) fn not_dropped(&mut self) {
        self.drop_streak = None;
    }

    /// Fails everything not confirmed (the session is over).
    pub(crate) fn fail_all(&mut self, why: &str) {
        for (_, w) in self.outbox.drain(..) {
            w.complete(Err(PublishError::Stopped(why.to_owned())));
        }
        for slot in self.slots.iter_mut() {
            if let Some(s) = slot.take() {
                s.waiter
                    .complete(Err(PublishError::Stopped(why.to_owned())));
            }
        }
        self.order.clear();
        self.live = 0;
        self.live_qos2 = 0;
    }
}

/// How one connection ended, as [`HangUps`] needs to know it.
#[derive(Debug, Default)]
pub(crate) struct Ending {
    /// The broker ended it (closed the socket, reset it, or sent DISCONNECT).
    pub(crate) by_broker: bool,
    /// Within a few seconds of CONNACK.
    pub(crate) quick: bool,
    /// MQTT 5 DISCONNECT 0x8E "session taken over".
    pub(crate) taken_over: bool,
    /// The broker sent no DISCONNECT (3.1.1 has none): it just closed.
    pub(crate) silent: bool,
    /// The filters of SUBSCRIBEs sent in it and not answered (no SUBACK).
    pub(crate) unanswered_filters: Vec<String>,
    /// A PUBLISH went either way, or one awaits its answer: the
    /// connection was in use, not idle.
    pub(crate) publishing: bool,
}

/// What [`HangUps::ended`] concluded: the session cannot go on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HangUp {
    /// The broker closed the connection right after these SUBSCRIBE
    /// filters were sent, `times` times in a row (no SUBACK).
    AtSubscribe { filters: Vec<String>, times: u32 },
    /// Another connection took the client id: `explicit` when the broker
    /// said so (MQTT 5 DISCONNECT 0x8E), else inferred from idle
    /// connections closed right after CONNACK, `times` in a row.
    TakenOver { times: u32, explicit: bool },
}

/// The streaks of connections the broker ended the same way. A broker that
/// cannot take a SUBSCRIBE and speaks 3.1.1 (ejabberd with `$share/…`) has
/// no way to say so but to close the connection; one that gives the client
/// id to a newer connection closes the older one (MQTT 5 with DISCONNECT
/// 0x8E). Reconnecting repeats either forever, and two processes with one
/// client id take the session from each other in turn.
#[derive(Debug, Default)]
pub(crate) struct HangUps {
    subscribe: Option<(Vec<String>, u32)>,
    takeover: u32,
}

impl HangUps {
    /// SUBSCRIBEs the broker hung up on, this many times in a row.
    pub(crate) const SUBSCRIBE_LIMIT: u32 = 3;
    /// DISCONNECT 0x8E, this many times in a row.
    pub(crate) const TAKEOVER_LIMIT: u32 = 3;
    /// Idle connections closed without a word right after CONNACK (3.1.1's
    /// way of a takeover), this many times in a row. One more than for
    /// DISCONNECT 0x8E: a network that cuts connections looks the same.
    pub(crate) const SILENT_TAKEOVER_LIMIT: u32 = 4;

    /// Records how a connection ended; `Some` when the streak reached its
    /// limit and reconnecting would only repeat it.
    pub(crate) fn ended(&mut self, e: Ending) -> Option<HangUp> {
        if e.taken_over {
            self.subscribe = None;
            self.takeover += 1;
            return (self.takeover >= Self::TAKEOVER_LIMIT).then(|| {
                let times = std::mem::take(&mut self.takeover);
                HangUp::TakenOver {
                    times,
                    explicit: true,
                }
            });
        }
        if !(e.by_broker && e.quick) {
            self.reset();
            return None;
        }
        if !e.unanswered_filters.is_empty() {
            self.takeover = 0;
            let mut filters = e.unanswered_filters;
            filters.sort();
            filters.dedup();
            let times = match &self.subscribe {
                Some((f, n)) if *f == filters => n + 1,
                _ => 1,
            };
            if times < Self::SUBSCRIBE_LIMIT {
                self.subscribe = Some((filters, times));
                return None;
            }
            self.subscribe = None;
            return Some(HangUp::AtSubscribe { filters, times });
        }
        self.subscribe = None;
        if !e.silent || e.publishing {
            self.takeover = 0;
            return None;
        }
        self.takeover += 1;
        (self.takeover >= Self::SILENT_TAKEOVER_LIMIT).then(|| {
            let times = std::mem::take(&mut self.takeover);
            HangUp::TakenOver {
                times,
                explicit: false,
            }
        })
    }

    /// The broker could not be reached, or a connection ended another way.
    pub(crate) fn reset(&mut self) {
        self.subscribe = None;
        self.takeover = 0;
    }
}

/// Ordered acknowledgement of incoming QoS 1/2 messages within one connection.
///
/// Each message gets the next sequence number; the application may
/// acknowledge in any order, but PUBACK/PUBREC leave in arrival order.
/// A new connection starts a new epoch: acks of the old one are dropped,
/// since the broker redelivers those messages (with DUP).
///
/// QoS 2 (MQTT-4.3.3-10): once PUBREC left for a packet id, a PUBLISH with
/// that id is a resend of the same message until PUBREL releases the id:
/// it is answered with PUBREC (in order) and not delivered again. That
/// state belongs to the session: it survives reconnects and is dropped
/// only when the broker says the session is gone.
pub(crate) struct InAcks {
    epoch: u32,
    base: u64,
    queue: VecDeque<(u16, QoS, bool)>,
    /// Arrival time (ms since the epoch) of each queued message, parallel to `queue`.
    arrived: VecDeque<u64>,
    /// QoS 2 packet ids delivered in this connection and not yet PUBREC'd.
    qos2_unacked: HashSet<u16>,
    /// QoS 2 packet ids PUBREC'd and not yet released by PUBREL.
    qos2_received: HashSet<u16>,
}

impl InAcks {
    pub(crate) fn new() -> Self {
        InAcks {
            epoch: 0,
            base: 0,
            queue: VecDeque::new(),
            arrived: VecDeque::new(),
            qos2_unacked: HashSet::new(),
            qos2_received: HashSet::new(),
        }
    }

    pub(crate) fn epoch(&self) -> u32 {
        self.epoch
    }

    /// Messages not yet acknowledged to the broker.
    pub(crate) fn pending(&self) -> usize {
        self.queue.len()
    }

    /// When the oldest unacknowledged message arrived (ms since the epoch).
    pub(crate) fn oldest_arrival_ms(&self) -> Option<u64> {
        self.arrived.front().copied()
    }

    /// A new connection of the same session: unacknowledged messages will
    /// be redelivered, PUBREC'd QoS 2 ids stay received.
    pub(crate) fn new_epoch(&mut self) {
        self.epoch = self.epoch.wrapping_add(1);
        self.base = 0;
        self.queue.clear();
        self.arrived.clear();
        self.qos2_unacked.clear();
    }

    /// The broker has no session for us (CONNACK session present = 0, or a
    /// clean start): no packet id is awaiting PUBREL any more.
    pub(crate) fn session_lost(&mut self) {
        self.qos2_received.clear();
    }

    /// Registers an incoming QoS 1/2 message; returns its sequence number,
    /// or `None` for a QoS 2 resend of a message already delivered (not to
    /// be delivered again; its PUBREC is appended in order, if due).
    pub(crate) fn arrive(
        &mut self,
        pkid: u16,
        qos: QoS,
        at_ms: u64,
        out: &mut BytesMut,
    ) -> Option<u64> {
        if qos == QoS::ExactlyOnce {
            if self.qos2_unacked.contains(&pkid) {
                // Resent before we acknowledged: the PUBREC of the first
                // copy answers both.
                return None;
            }
            if self.qos2_received.contains(&pkid) {
                let seq = self.base + self.queue.len() as u64;
                self.queue.push_back((pkid, qos, true));
                self.arrived.push_back(at_ms);
                self.ack(self.epoch, seq, out);
                return None;
            }
            self.qos2_unacked.insert(pkid);
        }
        let seq = self.base + self.queue.len() as u64;
        self.queue.push_back((pkid, qos, false));
        self.arrived.push_back(at_ms);
        Some(seq)
    }

    /// PUBREL: the packet id is released; a PUBLISH with it is new again.
    pub(crate) fn release(&mut self, pkid: u16) {
        self.qos2_received.remove(&pkid);
    }

    /// QoS 2 packet ids PUBREC'd and not yet released.
    #[cfg(test)]
    pub(crate) fn awaiting_release(&self) -> usize {
        self.qos2_received.len()
    }

    /// Marks `seq` acknowledged and appends every ack now due, in order.
    /// Returns how many acks were appended.
    pub(crate) fn ack(&mut self, epoch: u32, seq: u64, out: &mut BytesMut) -> usize {
        if epoch != self.epoch || seq < self.base {
            return 0;
        }
        match self.queue.get_mut((seq - self.base) as usize) {
            Some(entry) => entry.2 = true,
            None => return 0,
        }
        let mut sent = 0;
        while let Some(&(pkid, qos, true)) = self.queue.front() {
            let kind = if qos == QoS::ExactlyOnce {
                self.qos2_unacked.remove(&pkid);
                self.qos2_received.insert(pkid);
                AckKind::PubRec
            } else {
                AckKind::PubAck
            };
            encode_ack(kind, pkid, out);
            self.queue.pop_front();
            self.arrived.pop_front();
            self.base += 1;
            sent += 1;
        }
        sent
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{decode, Packet};
    use bytes::Bytes;

    fn publish(topic: &str, qos: QoS) -> Publish {
        Publish {
            topic: topic.into(),
            payload: Bytes::from_static(b"x"),
            qos,
            retain: false,
            dup: false,
            pkid: 0,
            properties: None,
        }
    }

    fn waiter() -> (Waiter, oneshot::Receiver<Outcome>) {
        let (tx, rx) = oneshot::channel();
        (
            Waiter {
                tx: Some(tx),
                _permit: None,
            },
            rx,
        )
    }

    fn packets(out: &mut BytesMut) -> Vec<Packet> {
        let mut v = Vec::new();
        while let Some(p) = decode(out, Protocol::V311, usize::MAX).unwrap() {
            v.push(p);
        }
        v
    }

    fn ack(kind: AckKind, pkid: u16) -> Ack {
        Ack {
            kind,
            pkid,
            reason: 0,
            reason_string: None,
        }
    }

    #[test]
    fn acks_leave_in_arrival_order() {
        let mut s = InAcks::new();
        let mut out = BytesMut::new();
        let a = s.arrive(10, QoS::AtLeastOnce, 1, &mut out).unwrap();
        let b = s.arrive(11, QoS::ExactlyOnce, 2, &mut out).unwrap();
        let c = s.arrive(12, QoS::AtLeastOnce, 3, &mut out).unwrap();
        assert_eq!(s.ack(0, c, &mut out), 0, "c waits for a and b");
        assert_eq!(s.ack(0, b, &mut out), 0);
        assert!(out.is_empty());
        assert_eq!(s.oldest_arrival_ms(), Some(1));
        assert_eq!(s.ack(0, a, &mut out), 3);
        let got: Vec<(AckKind, u16)> = packets(&mut out)
            .into_iter()
            .map(|p| match p {
                Packet::Ack(a) => (a.kind, a.pkid),
                p => panic!("{p:?}"),
            })
            .collect();
        assert_eq!(
            got,
            [
                (AckKind::PubAck, 10),
                (AckKind::PubRec, 11),
                (AckKind::PubAck, 12)
            ]
        );
        assert_eq!(s.pending(), 0);
    }

    #[test]
    fn acks_of_an_old_connection_are_dropped() {
        let mut s = InAcks::new();
        let mut out = BytesMut::new();
        let a = s.arrive(1, QoS::AtLeastOnce, 0, &mut out).unwrap();
        s.new_epoch();
        let b = s.arrive(1, QoS::AtLeastOnce, 0, &mut out).unwrap();
        assert_eq!(s.ack(0, a, &mut out), 0);
        assert_eq!(s.ack(1, b, &mut out), 1);
        assert_eq!(s.ack(1, b, &mut out), 0, "double ack is harmless");
    }

    fn acks(out: &mut BytesMut) -> Vec<(AckKind, u16)> {
        packets(out)
            .into_iter()
            .map(|p| match p {
                Packet::Ack(a) => (a.kind, a.pkid),
                p => panic!("{p:?}"),
            })
            .collect()
    }

    #[test]
    fn qos2_resends_before_pubrel_are_not_delivered_again() {
        let mut s = InAcks::new();
        let mut out = BytesMut::new();
        let q2 = QoS::ExactlyOnce;
        let a = s.arrive(7, q2, 0, &mut out).unwrap();
        assert_eq!(s.arrive(7, q2, 0, &mut out), None, "resent before PUBREC");
        let b = s.arrive(8, QoS::AtLeastOnce, 0, &mut out).unwrap();
        s.ack(0, a, &mut out);
        assert_eq!(acks(&mut out), [(AckKind::PubRec, 7)]);
        // Resent after PUBREC: not delivered; its PUBREC waits for b's PUBACK.
        assert_eq!(s.arrive(7, q2, 0, &mut out), None);
        assert!(out.is_empty());
        s.ack(0, b, &mut out);
        assert_eq!(acks(&mut out), [(AckKind::PubAck, 8), (AckKind::PubRec, 7)]);
        // A reconnect of the same session keeps the id received.
        s.new_epoch();
        assert_eq!(s.arrive(7, q2, 0, &mut out), None);
        assert_eq!(acks(&mut out), [(AckKind::PubRec, 7)]);
        // PUBREL releases it: the next PUBLISH with id 7 is a new message.
        s.release(7);
        let c = s.arrive(7, q2, 0, &mut out).unwrap();
        s.ack(1, c, &mut out);
        assert_eq!(s.awaiting_release(), 1);
        // The broker lost the session: nothing awaits PUBREL any more.
        s.new_epoch();
        s.session_lost();
        assert!(s.arrive(7, q2, 0, &mut out).is_some());
        // A message delivered but not acknowledged in a dropped connection
        // is redelivered (the application never took it).
        s.new_epoch();
        assert!(s.arrive(7, q2, 0, &mut out).is_some());
        assert_eq!(s.pending(), 1);
    }

    #[test]
    fn window_quota_and_confirmation() {
        let mut o = Outgoing::new(4);
        let mut out = BytesMut::new();
        let mut rxs = Vec::new();
        for i in 0..6 {
            let (w, rx) = waiter();
            o.push(publish(&format!("t/{i}"), QoS::AtLeastOnce), w);
            rxs.push(rx);
        }
        o.send_queued(
            Quota { all: 2, qos2: 2 },
            Protocol::V311,
            &mut out,
            usize::MAX,
            &mut |_, _| {},
        );
        assert_eq!(o.inflight(), 2);
        assert_eq!(o.queued(), 4);
        let sent = packets(&mut out);
        assert_eq!(sent.len(), 2);
        // Confirm the second first: order of completion follows the acks.
        o.on_ack(&ack(AckKind::PubAck, 2), &mut out).unwrap();
        assert!(rxs[1].try_recv().unwrap().is_ok());
        assert!(rxs[0].try_recv().is_err());
        o.send_queued(
            Quota { all: 2, qos2: 2 },
            Protocol::V311,
            &mut out,
            usize::MAX,
            &mut |_, _| {},
        );
        assert_eq!(o.inflight(), 2);
    }

    #[test]
    fn resend_in_order_with_dup_and_pubrel() {
        let mut o = Outgoing::new(10);
        let mut out = BytesMut::new();
        let mut rxs = Vec::new();
        for (t, q) in [
            ("a", QoS::AtLeastOnce),
            ("b", QoS::ExactlyOnce),
            ("c", QoS::ExactlyOnce),
            ("d", QoS::AtLeastOnce),
        ] {
            let (w, rx) = waiter();
            o.push(publish(t, q), w);
            rxs.push(rx);
        }
        o.send_queued(
            Quota::unlimited(),
            Protocol::V311,
            &mut out,
            usize::MAX,
            &mut |_, _| {},
        );
        packets(&mut out);
        // b got PUBREC (PUBREL goes out), a got confirmed.
        o.on_ack(&ack(AckKind::PubRec, 2), &mut out).unwrap();
        o.on_ack(&ack(AckKind::PubAck, 1), &mut out).unwrap();
        packets(&mut out);
        o.resend(true, Protocol::V311, &mut out);
        let again: Vec<String> = packets(&mut out)
            .into_iter()
            .map(|p| match p {
                Packet::Publish(p) => {
                    assert!(p.dup);
                    format!("pub {} {}", p.topic, p.pkid)
                }
                Packet::Ack(a) => format!("{:?} {}", a.kind, a.pkid),
                p => panic!("{p:?}"),
            })
            .collect();
        assert_eq!(again, ["PubRel 2", "pub c 3", "pub d 4"]);
        // PUBCOMP 0x92 after the PUBREL was resent: completed before, not an error.
        let mut comp = ack(AckKind::PubComp, 2);
        comp.reason = 0x92;
        o.on_ack(&comp, &mut out).unwrap();
        assert_eq!(rxs[1].try_recv().unwrap().unwrap().reason_code, 0x92);
        assert_eq!(o.inflight(), 2);
    }

    #[test]
    fn qos2_pubrec_without_pubcomp_is_sent_again_when_the_session_is_lost() {
        let mut o = Outgoing::new(10);
        let mut out = BytesMut::new();
        let (w, mut rx) = waiter();
        o.push(publish("b", QoS::ExactlyOnce), w);
        o.send_queued(
            Quota::unlimited(),
            Protocol::V5,
            &mut out,
            usize::MAX,
            &mut |_, _| {},
        );
        o.on_ack(&ack(AckKind::PubRec, 1), &mut out).unwrap();
        packets(&mut out);
        // The broker lost the session: PUBREC is not delivery; PUBLISH again.
        o.resend(false, Protocol::V311, &mut out);
        assert!(rx.try_recv().is_err(), "completed without PUBCOMP");
        match &packets(&mut out)[..] {
            [Packet::Publish(p)] => assert_eq!((&*p.topic, p.pkid, p.dup), ("b", 1, true)),
            other => panic!("{other:?}"),
        }
        o.on_ack(&ack(AckKind::PubRec, 1), &mut out).unwrap();
        // 0x92 outside recovery is a mismatch, reported.
        let mut comp = ack(AckKind::PubComp, 1);
        comp.reason = 0x92;
        o.on_ack(&comp, &mut out).unwrap();
        assert!(rx.try_recv().unwrap().is_err());
    }

    #[test]
    fn qos2_has_its_own_window_and_order_holds() {
        let mut o = Outgoing::new(100);
        let mut out = BytesMut::new();
        for q in [QoS::ExactlyOnce, QoS::ExactlyOnce, QoS::AtLeastOnce] {
            let (w, _rx) = waiter();
            o.push(publish("t", q), w);
        }
        o.send_queued(
            Quota { all: 100, qos2: 1 },
            Protocol::V311,
            &mut out,
            usize::MAX,
            &mut |_, _| {},
        );
        // The second QoS 2 waits, and the QoS 1 behind it waits too (order).
        assert_eq!((o.inflight(), o.queued()), (1, 2));
        o.on_ack(&ack(AckKind::PubRec, 1), &mut out).unwrap();
        o.send_queued(
            Quota { all: 100, qos2: 1 },
            Protocol::V311,
            &mut out,
            usize::MAX,
            &mut |_, _| {},
        );
        assert_eq!(o.queued(), 2, "PUBREC alone does not free the QoS 2 window");
        o.on_ack(&ack(AckKind::PubComp, 1), &mut out).unwrap();
        o.send_queued(
            Quota { all: 100, qos2: 1 },
            Protocol::V311,
            &mut out,
            usize::MAX,
            &mut |_, _| {},
        );
        assert_eq!((o.inflight(), o.queued()), (2, 0));
    }

    #[test]
    fn rejected_publish_names_topic() {
        let mut o = Outgoing::new(2);
        let mut out = BytesMut::new();
        let (w, mut rx) = waiter();
        o.push(publish("deny/me", QoS::AtLeastOnce), w);
        o.send_queued(
            Quota::unlimited(),
            Protocol::V5,
            &mut out,
            usize::MAX,
            &mut |_, _| {},
        );
        let mut a = ack(AckKind::PubAck, 1);
        a.reason = 0x87;
        o.on_ack(&a, &mut out).unwrap();
        let e = rx.try_recv().unwrap().unwrap_err();
        assert!(e.to_string().contains("\"deny/me\""), "{e}");
        assert!(o.is_idle());
    }

    #[test]
    fn what_the_broker_cannot_take_fails_alone() {
        let mut o = Outgoing::new(10);
        let mut out = BytesMut::new();
        o.set_limits(Limits {
            max_qos: QoS::AtLeastOnce,
            downgrade_qos: false,
            retain_available: false,
            max_packet_size: 100,
            topic_alias_maximum: 0,
        });
        let mut rxs = Vec::new();
        let mut push = |o: &mut Outgoing, p: Publish| {
            let (w, rx) = waiter();
            o.push(p, w);
            rxs.push(rx);
        };
        push(&mut o, publish("q2", QoS::ExactlyOnce));
        push(&mut o, publish("retained", QoS::AtLeastOnce));
        o.outbox.back_mut().unwrap().0.retain = true;
        let mut big = publish("big", QoS::AtLeastOnce);
        big.payload = Bytes::from(vec![0u8; 200]);
        push(&mut o, big);
        let mut aliased = publish("alias", QoS::AtLeastOnce);
        aliased.properties = Some(Box::new(crate::codec::PublishProperties {
            topic_alias: Some(1),
            ..Default::default()
        }));
        push(&mut o, aliased);
        push(&mut o, publish("fine", QoS::AtLeastOnce));
        o.send_queued(
            Quota::unlimited(),
            Protocol::V5,
            &mut out,
            usize::MAX,
            &mut |_, _| {},
        );
        let errors: Vec<String> = rxs[..4]
            .iter_mut()
            .map(|rx| rx.try_recv().unwrap().unwrap_err().to_string())
            .collect();
        assert!(errors[0].contains("maximum QoS 1"), "{}", errors[0]);
        assert!(errors[1].contains("retained"), "{}", errors[1]);
        assert!(
            errors[2].contains("maximum packet size 100"),
            "{}",
            errors[2]
        );
        assert!(errors[3].contains("topic alias 1"), "{}", errors[3]);
        match &packets(&mut out)[..] {
            [Packet::Publish(p)] => assert_eq!(&*p.topic, "fine"),
            other => panic!("{other:?}"),
        }
        // Downgrading is an option.
        o.set_limits(Limits {
            downgrade_qos: true,
            ..Limits::unlimited()
        });
        o.limits.max_qos = QoS::AtLeastOnce;
        let (w, _rx) = waiter();
        o.push(publish("q2", QoS::ExactlyOnce), w);
        o.send_queued(
            Quota::unlimited(),
            Protocol::V5,
            &mut out,
            usize::MAX,
            &mut |_, _| {},
        );
        match &packets(&mut out)[..] {
            [Packet::Publish(p)] => assert_eq!(p.qos, QoS::AtLeastOnce),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_publish_the_broker_drops_the_connection_for_fails_after_three_drops() {
        let mut o = Outgoing::new(10);
        let mut out = BytesMut::new();
        let mut rxs = Vec::new();
        for t in ["ok", "poison", "after"] {
            let (w, rx) = waiter();
            o.push(publish(t, QoS::AtLeastOnce), w);
            rxs.push(rx);
        }
        o.send_queued(
            Quota::unlimited(),
            Protocol::V311,
            &mut out,
            usize::MAX,
            &mut |_, _| {},
        );
        o.on_ack(&ack(AckKind::PubAck, 1), &mut out).unwrap();
        o.dropped_by_broker(3, Protocol::V311);
        o.not_dropped(); // e.g. a keep-alive timeout breaks the streak
        for _ in 0..2 {
            o.dropped_by_broker(3, Protocol::V311);
        }
        assert!(
            rxs[1].try_recv().is_err(),
            "two drops in a row are not enough"
        );
        o.dropped_by_broker(3, Protocol::V311);
        let e = rxs[1].try_recv().unwrap().unwrap_err();
        assert!(
            matches!(e, PublishError::DroppedByBroker { times: 3, .. }),
            "{e}"
        );
        assert!(e.to_string().contains("\"poison\""), "{e}");
        out.clear();
        o.resend(false, Protocol::V311, &mut out);
        match &packets(&mut out)[..] {
            [Packet::Publish(p)] => assert_eq!(&*p.topic, "after"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn stale_order_entries_stay_bounded() {
        let mut o = Outgoing::new(3);
        let mut out = BytesMut::new();
        // One slow QoS 2 at the front, thousands of QoS 1 confirmed behind it.
        let (w, _rx) = waiter();
        o.push(publish("slow", QoS::ExactlyOnce), w);
        for _ in 0..5000 {
            let (w, _rx) = waiter();
            o.push(publish("fast", QoS::AtLeastOnce), w);
            o.send_queued(
                Quota { all: 3, qos2: 3 },
                Protocol::V311,
                &mut out,
                usize::MAX,
                &mut |_, _| {},
            );
            o.on_ack(&ack(AckKind::PubAck, 2), &mut out).unwrap();
            out.clear();
        }
        assert!(o.order.len() <= 4 * 4 + 1, "{}", o.order.len());
    }

    fn at_subscribe(filters: &[&str]) -> Ending {
        Ending {
            by_broker: true,
            quick: true,
            silent: true,
            unanswered_filters: filters.iter().map(|f| f.to_string()).collect(),
            ..Ending::default()
        }
    }

    #[test]
    fn a_subscribe_the_broker_hangs_up_on_ends_the_session_after_three_times() {
        let mut h = HangUps::default();
        assert_eq!(h.ended(at_subscribe(&["$share/g/x"])), None);
        // Another connection ending (the broker away) breaks the streak.
        h.reset();
        assert_eq!(h.ended(at_subscribe(&["$share/g/x"])), None);
        assert_eq!(h.ended(at_subscribe(&["$share/g/x"])), None);
        assert_eq!(
            h.ended(at_subscribe(&["$share/g/x"])),
            Some(HangUp::AtSubscribe {
                filters: vec!["$share/g/x".into()],
                times: 3
            })
        );
        // Other filters each time: no streak.
        for f in ["a", "b", "a", "b"] {
            assert_eq!(h.ended(at_subscribe(&[f])), None);
        }
        // A slow hang-up (not right after the SUBSCRIBE) is not one.
        let mut h = HangUps::default();
        for _ in 0..5 {
            let e = Ending {
                quick: false,
                ..at_subscribe(&["x"])
            };
            assert_eq!(h.ended(e), None);
        }
    }

    #[test]
    fn a_session_taken_over_again_and_again_ends() {
        let mut h = HangUps::default();
        let v5 = || Ending {
            by_broker: true,
            taken_over: true,
            ..Ending::default()
        };
        assert_eq!(h.ended(v5()), None);
        assert_eq!(h.ended(v5()), None);
        assert_eq!(
            h.ended(v5()),
            Some(HangUp::TakenOver {
                times: 3,
                explicit: true
            })
        );
        // 3.1.1: idle connections closed right after CONNACK, one more time.
        let silent = || Ending {
            by_broker: true,
            quick: true,
            silent: true,
            ..Ending::default()
        };
        for _ in 1..HangUps::SILENT_TAKEOVER_LIMIT {
            assert_eq!(h.ended(silent()), None);
        }
        assert_eq!(
            h.ended(silent()),
            Some(HangUp::TakenOver {
                times: 4,
                explicit: false
            })
        );
        // A connection in use (a network cutting a publisher's
        // connections) is not a takeover, and it breaks the streak.
        for _ in 0..3 {
            assert_eq!(h.ended(silent()), None);
        }
        let busy = Ending {
            publishing: true,
            ..silent()
        };
        assert_eq!(h.ended(busy), None);
        for _ in 0..3 {
            assert_eq!(h.ended(silent()), None);
        }
    }
}
