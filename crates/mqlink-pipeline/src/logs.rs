//! The pipeline's recent log events, for Laminar's `system.connector_logs`:
//! a tracing [`Layer`] (the `mqlink` binary installs it beside its log
//! output) keeps the last [`CAPACITY`] INFO, WARN and ERROR events in a
//! ring; a running pipeline's /query reads them.
//!
//! Events carry no secrets (connection details are client ids and broker
//! addresses); each message still goes through [`mqlink::secret::redact`],
//! as the binary's error output does.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::Mutex;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer};

/// Events kept: a bounded ring, the oldest dropped first.
pub const CAPACITY: usize = 1000;

/// One event, as the layer saw it.
#[derive(Clone, Debug, PartialEq)]
pub struct LogEvent {
    /// Microseconds since the Unix epoch, UTC.
    pub timestamp_us: i64,
    /// `ERROR`, `WARN` or `INFO`.
    pub level: &'static str,
    /// The event's `component` field (`sources.NAME`, `sinks.NAME`).
    pub component: Option<String>,
    /// The event's `client_id` field: the MQTT client of a component.
    pub client_id: Option<String>,
    /// The message and its other fields (`error=…`, `topic=…`).
    pub message: String,
}

static RECENT: Mutex<VecDeque<LogEvent>> = Mutex::new(VecDeque::new());

/// The events kept so far, oldest first.
pub fn recent() -> Vec<LogEvent> {
    RECENT
        .lock()
        .map(|r| r.iter().cloned().collect())
        .unwrap_or_default()
}

fn push(e: LogEvent) {
    // A poisoned lock (a panic elsewhere while pushing) loses log rows, never the pipeline.
    if let Ok(mut r) = RECENT.lock() {
        if r.len() >= CAPACITY {
            r.pop_front();
        }
        r.push_back(e);
    }
}

/// The layer that fills [`recent`] with INFO, WARN and ERROR events. Give
/// it its own filter (`RecentLogs.with_filter(LevelFilter::INFO)`): then
/// the log output's filter does not limit it (`--quiet` still keeps events
/// queryable), and DEBUG call sites stay disabled when nothing prints them.
#[derive(Clone, Copy, Debug, Default)]
pub struct RecentLogs;

impl<S: Subscriber> Layer<S> for RecentLogs {
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        let level = match *event.metadata().level() {
            Level::ERROR => "ERROR",
            Level::WARN => "WARN",
            Level::INFO => "INFO",
            _ => return,
        };
        let mut v = Fields::default();
        event.record(&mut v);
        let mut message = v.message;
        if !v.rest.is_empty() {
            if !message.is_empty() {
                message.push(' ');
            }
            message.push_str(&v.rest);
        }
        let message = mqlink::secret::redact(&message).into_owned();
        push(LogEvent {
            timestamp_us: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_micros() as i64),
            level,
            component: v.component,
            client_id: v.client_id,
            message,
        });
    }
}

#[derive(Default)]
struct Fields {
    message: String,
    component: Option<String>,
    client_id: Option<String>,
    /// Other fields as `key=value`, space-separated (as the text log shows them).
    rest: String,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, value.to_string());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.put(field, format!("{value:?}"));
    }
}

impl Fields {
    fn put(&mut self, field: &Field, value: String) {
        match field.name() {
            "message" => self.message = value,
            "component" => self.component = Some(value),
            "client_id" => self.client_id = Some(value),
            name => {
                if !self.rest.is_empty() {
                    self.rest.push(' ');
                }
                let _ = write!(self.rest, "{name}={value}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::filter::LevelFilter;
    use tracing_subscriber::layer::SubscriberExt;

    #[test]
    fn events_are_kept_with_their_component_and_bounded() {
        let subscriber =
            tracing_subscriber::registry().with(RecentLogs.with_filter(LevelFilter::INFO));
        let marker = format!("marker-{}", std::process::id());
        tracing::subscriber::with_default(subscriber, || {
            tracing::debug!(component = "sources.t", "{marker} debug is not kept");
            tracing::error!(component = %"sources.t", error = %"bad", "{marker} failed.");
            tracing::warn!(client_id = "c1", "{marker} lost.");
            for i in 0..CAPACITY + 5 {
                tracing::info!(n = i, "filler");
            }
        });
        let all = recent();
        assert!(all.len() <= CAPACITY);
        assert_eq!(
            all.last().unwrap().message,
            format!("filler n={}", CAPACITY + 4)
        );
        // Other tests may log at the same time: look for ours.
        tracing::subscriber::with_default(
            tracing_subscriber::registry().with(RecentLogs.with_filter(LevelFilter::INFO)),
            || {
                tracing::error!(component = %"sinks.k", error = %"mqtt://u:pw@h:1883 refused", "{marker} x.");
            },
        );
        let mine: Vec<LogEvent> = recent()
            .into_iter()
            .filter(|e| e.message.starts_with(&marker))
            .collect();
        assert_eq!(mine.len(), 1, "{mine:?}");
        assert_eq!(mine[0].level, "ERROR");
        assert_eq!(mine[0].component.as_deref(), Some("sinks.k"));
        assert!(
            mine[0].message.contains("mqtt://u:***@h:1883"),
            "{}",
            mine[0].message
        );
        assert!(!mine[0].message.contains("pw"), "{}", mine[0].message);
    }
}
