//! Source metrics with fixed names (Laminar's `laminar_mqtt_*` set, and
//! what mqlink adds: decode errors, dead letters, unacknowledged, the
//! broker's window).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use super::window::Window;
use crate::session::{Client, Status};

/// Metric names, as exported by `mqlink run` (Prometheus).
pub const SOURCE_METRIC_NAMES: [&str; 12] = [
    "mqlink_source_messages_received_total",
    "mqlink_source_bytes_received_total",
    "mqlink_source_connection_status",
    "mqlink_source_subscriptions",
    "mqlink_source_reconnect_attempts_total",
    "mqlink_source_decode_errors_total",
    "mqlink_source_dead_lettered_total",
    "mqlink_source_filtered_total",
    "mqlink_source_unacknowledged",
    "mqlink_source_oldest_unacknowledged_age_seconds",
    // The broker's window (MQTT 5: announced; 3.1.1: observed; 0 unknown).
    "mqlink_source_window",
    // Time the window was full: no message could arrive until the sinks
    // confirmed; on 3.1.1 the broker queues, then drops, meanwhile.
    "mqlink_source_window_full_seconds_total",
];

/// A source's counters and gauges (read-only; see [`SOURCE_METRIC_NAMES`]).
#[derive(Debug, Default)]
pub struct SourceMetrics {
    messages_received: AtomicU64,
    bytes_received: AtomicU64,
    connection_status: AtomicU64,
    subscriptions: AtomicU64,
    reconnect_attempts: AtomicU64,
    decode_errors: AtomicU64,
    dead_lettered: AtomicU64,
    filtered: AtomicU64,
    unacknowledged: AtomicU64,
    oldest_unacknowledged_age_s: AtomicU64,
    pub(super) window: Window,
}

/// Milliseconds since the Unix epoch.
pub(super) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl SourceMetrics {
    pub(super) fn received(&self, bytes: usize) {
        self.messages_received.fetch_add(1, Relaxed);
        self.bytes_received.fetch_add(bytes as u64, Relaxed);
    }
    pub(super) fn decode_error(&self) {
        self.decode_errors.fetch_add(1, Relaxed);
    }
    pub(super) fn dead_lettered(&self) {
        self.dead_lettered.fetch_add(1, Relaxed);
    }
    pub(super) fn filtered(&self) {
        self.filtered.fetch_add(1, Relaxed);
    }
    pub(super) fn set_subscriptions(&self, n: u64) {
        self.subscriptions.store(n, Relaxed);
    }
    pub(super) fn unacknowledged_inc(&self) {
        self.unacknowledged.fetch_add(1, Relaxed);
    }
    pub(super) fn unacknowledged_dec(&self) {
        self.unacknowledged.fetch_sub(1, Relaxed);
        self.window.acknowledged();
    }

    /// Reads connection status and reconnects from the clients.
    pub(super) fn refresh(&self, clients: &[Client]) {
        let connected = clients
            .iter()
            .all(|c| matches!(*c.status().borrow(), Status::Connected { .. }));
        self.connection_status.store(connected as u64, Relaxed);
        let reconnects: u64 = clients.iter().map(|c| c.stats().reconnects()).sum();
        self.reconnect_attempts.store(reconnects, Relaxed);
        let now_ms = now_ms();
        let oldest = clients
            .iter()
            .map(|c| c.stats().oldest_unacknowledged_ms())
            .filter(|&t| t > 0)
            .min();
        let age = oldest.map_or(0, |t| now_ms.saturating_sub(t) / 1000);
        self.oldest_unacknowledged_age_s.store(age, Relaxed);
    }

    /// Every metric with its name, in [`SOURCE_METRIC_NAMES`] order.
    pub fn snapshot(&self) -> [(&'static str, u64); 12] {
        let window = AtomicU64::new(self.window.size.load(Relaxed));
        let full = AtomicU64::new(self.window.full_seconds());
        let v = [
            &self.messages_received,
            &self.bytes_received,
            &self.connection_status,
            &self.subscriptions,
            &self.reconnect_attempts,
            &self.decode_errors,
            &self.dead_lettered,
            &self.filtered,
            &self.unacknowledged,
            &self.oldest_unacknowledged_age_s,
            &window,
            &full,
        ];
        std::array::from_fn(|i| (SOURCE_METRIC_NAMES[i], v[i].load(Relaxed)))
    }

    /// One metric by name.
    pub fn get(&self, name: &str) -> Option<u64> {
        self.snapshot()
            .into_iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v)
    }
}
