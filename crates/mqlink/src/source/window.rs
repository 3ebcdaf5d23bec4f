//! The broker's window: how many QoS 1/2 messages it sends before it waits
//! for an acknowledgement. A batch that lingers for more records while the
//! window is full waits for nothing (the broker sends no more until the
//! batch's messages are acknowledged) and, meanwhile, the broker queues and
//! then drops what is published (Mosquitto's `max_queued_messages`). So a
//! linger ends as soon as the window is full.
//!
//! - MQTT 5: the window is the Receive Maximum the source announced, per
//!   client.
//! - MQTT 3.1.1 announces nothing; the broker has its own limit
//!   (Mosquitto's `max_inflight_messages`, 20 by default). It is observed: a
//!   count of unacknowledged messages that stops growing at the highest
//!   count seen (for [`STALL`], when a batch lingers) is a plateau; once
//!   the same plateau was seen [`CONFIRM`] times it is the window (logged),
//!   and a batch that reaches it goes without waiting for the stall. Before
//!   that, a lingering batch at the highest count seen goes after [`STALL`]
//!   without growth — at rates below one message per [`STALL`] that cuts
//!   the first batches short, which costs little at such rates.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::metrics::now_ms;

use super::{MqttSource, Record};
use crate::types::Protocol;

/// How long a count at its highest must stay still to be taken as a full
/// window: a broker sends its window back to back, far faster than this.
pub(super) const STALL: Duration = Duration::from_millis(3);
/// Plateaus at the same count before a 3.1.1 window is taken as known.
const CONFIRM: u32 = 3;
/// Share of the time at a full window, over [`WARN_PERIOD`], above which
/// the sinks are said not to keep up.
const WARN_SHARE: f64 = 0.5;
const WARN_PERIOD: Duration = Duration::from_secs(5);
/// At most one warning in this long.
const WARN_EVERY: Duration = Duration::from_secs(60);

/// What the source knows of the broker's window, and how long it was full.
#[derive(Debug, Default)]
pub(super) struct Window {
    /// Announced (MQTT 5, × clients) or observed (3.1.1); 0 while unknown.
    pub(super) size: AtomicU64,
    /// Milliseconds spent at a full window, closed periods.
    pub(super) full_ms: AtomicU64,
    /// When the current full period began (ms since the Unix epoch; 0: not full).
    full_since: AtomicU64,
    observed: Mutex<Observed>,
}

#[derive(Debug, Default)]
struct Observed {
    /// Highest count of unacknowledged messages seen.
    high: u64,
    /// The last plateau and how often it was seen in a row.
    plateau: u64,
    seen: u32,
    /// Full time at the start of the current warning period.
    period: Option<(Instant, u64)>,
    warned: Option<Instant>,
}

/// Whether a batch should stop lingering.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Fill {
    /// No more can arrive until the batch is acknowledged.
    Full,
    /// At the highest count seen (3.1.1): full if nothing comes for [`STALL`].
    Maybe,
    /// More can arrive.
    Room,
}

impl Window {
    /// MQTT 5: the Receive Maximum announced by each of `clients`.
    pub(super) fn announced(&self, receive_maximum: u16, clients: usize) {
        self.size
            .store(receive_maximum as u64 * clients as u64, Relaxed);
    }

    /// Classifies `unacked` (the clients' unacknowledged deliveries).
    pub(super) fn fill(&self, unacked: u64, v5: bool) -> Fill {
        let size = self.size.load(Relaxed);
        // On 3.1.1 a count above the observed window means it was not the
        // window after all: observe on.
        if unacked > 0 && size > 0 && (unacked == size || (v5 && unacked > size)) {
            return Fill::Full;
        }
        if v5 || unacked == 0 {
            return Fill::Room;
        }
        let mut o = self.observed.lock().unwrap_or_else(|e| e.into_inner());
        o.high = o.high.max(unacked);
        if unacked == o.high {
            Fill::Maybe
        } else {
            Fill::Room
        }
    }

    /// A batch is complete with `unacked` messages unacknowledged: a full
    /// window starts being timed, a 3.1.1 count at its highest is a plateau.
    pub(super) fn sample(&self, unacked: u64, v5: bool, who: &str) {
        match self.fill(unacked, v5) {
            Fill::Full => self.mark_full(),
            Fill::Maybe if unacked >= 2 => self.plateau(unacked, who),
            _ => {}
        }
    }

    /// A 3.1.1 count stopped at its highest: seen [`CONFIRM`] times in a
    /// row at the same value, it is the window.
    fn plateau(&self, unacked: u64, who: &str) {
        let mut o = self.observed.lock().unwrap_or_else(|e| e.into_inner());
        if o.plateau == unacked {
            o.seen += 1;
        } else {
            o.plateau = unacked;
            o.seen = 1;
        }
        if o.seen == CONFIRM && self.size.load(Relaxed) != unacked {
            self.size.store(unacked, Relaxed);
            tracing::info!(client = who, window = unacked, "The broker sends at most {unacked} unacknowledged messages (observed; MQTT 3.1.1 cannot announce a window). A batch goes as soon as the window is full; a burst faster than the sinks confirm {unacked} messages is queued by the broker and, beyond its queue limit, dropped (see docs/guides/broker-limits.md; MQTT 5 avoids it).");
        }
    }

    /// The window is full from now.
    fn mark_full(&self) {
        let _ = self
            .full_since
            .compare_exchange(0, now_ms(), Relaxed, Relaxed);
    }

    /// An acknowledgement: a full window has room again.
    pub(super) fn acknowledged(&self) {
        let since = self.full_since.swap(0, Relaxed);
        if since > 0 {
            self.full_ms
                .fetch_add(now_ms().saturating_sub(since), Relaxed);
        }
    }

    /// Seconds at a full window, the current period included.
    pub(super) fn full_seconds(&self) -> u64 {
        let since = self.full_since.load(Relaxed);
        let open = if since > 0 {
            now_ms().saturating_sub(since)
        } else {
            0
        };
        (self.full_ms.load(Relaxed) + open) / 1000
    }

    /// Warns (at most once a [`WARN_EVERY`]) when over the last
    /// [`WARN_PERIOD`] the window was full more than [`WARN_SHARE`] of the time.
    fn check_keeping_up(&self, who: &str) {
        let full = self.full_ms.load(Relaxed);
        let mut o = self.observed.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let Some((start, at_start)) = o.period else {
            o.period = Some((now, full));
            return;
        };
        let elapsed = now.duration_since(start);
        if elapsed < WARN_PERIOD {
            return;
        }
        o.period = Some((now, full));
        let share = (full - at_start) as f64 / elapsed.as_millis().max(1) as f64;
        if share > WARN_SHARE && o.warned.is_none_or(|w| now.duration_since(w) >= WARN_EVERY) {
            o.warned = Some(now);
            let size = self.size.load(Relaxed);
            tracing::warn!(client = who, window = size, full_percent = (share * 100.0) as u64, "The broker's window was full {:.0}% of the last {} s: the sinks do not confirm as fast as messages arrive, so the broker queues them and, past its queue limit (Mosquitto: max_queued_messages), drops them without telling mqlink. Use MQTT 5 (a larger window), a faster sink, or raise the broker's limits (docs/guides/broker-limits.md).", share * 100.0, elapsed.as_secs());
        }
    }
}

impl MqttSource {
    /// Unacknowledged QoS 1/2 deliveries of all clients, as the broker counts them.
    fn unacked(&self) -> u64 {
        self.clients
            .iter()
            .map(|c| c.stats().unacknowledged())
            .sum()
    }

    fn v5(&self) -> bool {
        self.clients[0].protocol() == Protocol::V5
    }

    /// The next record if one arrives before `deadline`; `None` at the
    /// deadline, once every client stopped, or as soon as the broker's
    /// window is full (nothing more can arrive until the records taken so
    /// far are acknowledged). Batching loops linger with this.
    pub async fn next_before(&mut self, deadline: tokio::time::Instant) -> Option<Record> {
        if let Some(r) = self.try_next().await {
            return Some(r);
        }
        let unacked = self.unacked();
        let until = match self.metrics.window.fill(unacked, self.v5()) {
            Fill::Full => return None,
            Fill::Maybe => deadline.min(tokio::time::Instant::now() + STALL),
            Fill::Room => deadline,
        };
        match tokio::time::timeout_at(until, self.next()).await {
            Ok(r) => r,
            // Still at the highest count: the window is full.
            Err(_) if until < deadline && self.unacked() == unacked => None,
            // The count moved (acknowledgements): linger on.
            Err(_) if until < deadline => tokio::time::timeout_at(deadline, self.next())
                .await
                .ok()
                .flatten(),
            Err(_) => None,
        }
    }

    /// Call when a batch is complete (before handing it on): times a full
    /// window, learns a 3.1.1 one, and warns when the sinks do not keep up.
    pub fn batch_done(&self) {
        let who = self.clients[0].client_id();
        let w = &self.metrics.window;
        w.sample(self.unacked(), self.v5(), who);
        w.check_keeping_up(who);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mqtt5_is_full_at_the_announced_receive_maximum() {
        let w = Window::default();
        w.announced(10, 2);
        assert_eq!(w.fill(19, true), Fill::Room);
        assert_eq!(w.fill(20, true), Fill::Full);
        // No observation on MQTT 5.
        assert_eq!(w.fill(3, true), Fill::Room);
    }

    #[test]
    fn a_311_window_is_the_plateau_seen_three_times_and_a_higher_count_unlearns_it() {
        let w = Window::default();
        for n in [1, 5, 20, 20] {
            w.sample(n, false, "c");
        }
        // Still rising or seen twice: not known yet, a full-looking count waits for the stall.
        assert_eq!(w.size.load(Relaxed), 0);
        assert_eq!(w.fill(20, false), Fill::Maybe);
        assert_eq!(w.fill(12, false), Fill::Room);
        w.sample(20, false, "c");
        assert_eq!(w.size.load(Relaxed), 20);
        assert_eq!(w.fill(20, false), Fill::Full);
        assert_eq!(w.fill(19, false), Fill::Room);
        // 25 in flight: 20 was not the window.
        assert_eq!(w.fill(25, false), Fill::Maybe);
        // A single message at a time never passes for a window.
        let t = Window::default();
        for _ in 0..5 {
            t.sample(1, false, "c");
        }
        assert_eq!(t.size.load(Relaxed), 0);
    }

    #[test]
    fn time_at_a_full_window_ends_with_an_acknowledgement() {
        let w = Window::default();
        w.announced(4, 1);
        w.sample(4, true, "c");
        std::thread::sleep(Duration::from_millis(30));
        w.acknowledged();
        let ms = w.full_ms.load(Relaxed);
        assert!((30..5_000).contains(&ms), "{ms}");
        // Not full: an acknowledgement adds nothing.
        w.acknowledged();
        assert_eq!(w.full_ms.load(Relaxed), ms);
    }
}
