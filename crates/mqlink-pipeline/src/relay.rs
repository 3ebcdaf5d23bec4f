//! End-to-end acknowledgement through the embedded broker. A pipeline sink
//! publishing into the embedded broker tags each message (MQTT 5 user
//! property [`PROPERTY`]) and counts the pipeline sources that will receive
//! it; its confirmation completes only once each of them has settled the
//! message (delivered by all its sinks, filtered, or skipped as a record
//! fault). A chain of hops through the internal broker — a Cybus endpoint,
//! a mapping, a write endpoint — thus acknowledges the first broker's
//! message only after the last broker confirmed it: a SIGKILL anywhere
//! leaves it unacknowledged upstream.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use tokio::sync::oneshot;

/// The user property carrying `<run nonce>-<id>`.
pub const PROPERTY: &str = "mqlink-relay";

#[derive(Debug)]
pub struct Relay {
    /// Tells this run's tags from anything a client may send.
    nonce: u64,
    next: AtomicU64,
    waiting: Mutex<HashMap<u64, (usize, oneshot::Sender<()>)>>,
}

impl Default for Relay {
    fn default() -> Self {
        Relay {
            nonce: fastrand::u64(..),
            next: AtomicU64::new(1),
            waiting: Mutex::new(HashMap::new()),
        }
    }
}

impl Relay {
    /// A tag for a message `consumers` pipeline sources will receive, and
    /// what completes once they all settled it.
    pub fn register(&self, consumers: usize) -> (String, oneshot::Receiver<()>) {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.waiting
            .lock()
            .expect("relay lock")
            .insert(id, (consumers, tx));
        (format!("{:x}-{id}", self.nonce), rx)
    }

    /// The id in a tag of this run.
    pub fn parse(&self, tag: &str) -> Option<u64> {
        let (nonce, id) = tag.split_once('-')?;
        (u64::from_str_radix(nonce, 16).ok()? == self.nonce)
            .then(|| id.parse().ok())
            .flatten()
    }

    /// One receiving source settled message `id`.
    pub fn done(&self, id: u64) {
        let mut w = self.waiting.lock().expect("relay lock");
        if let Some((left, _)) = w.get_mut(&id) {
            *left -= 1;
            if *left == 0 {
                if let Some((_, tx)) = w.remove(&id) {
                    let _ = tx.send(());
                }
            }
        }
    }
}

/// For a sink publishing into the embedded broker (MQTT 5): the pipeline
/// sources there, by their filters; a message is confirmed once each
/// source it reaches has settled it ([`crate::relay`]).
pub struct RelayTarget {
    pub relay: std::sync::Arc<Relay>,
    pub consumers: Vec<Vec<String>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completes_once_every_consumer_settled() {
        let r = Relay::default();
        let (tag, mut rx) = r.register(2);
        let id = r.parse(&tag).unwrap();
        assert_eq!(r.parse("0-1"), None, "another run's tag");
        assert_eq!(r.parse("x"), None);
        r.done(id);
        assert!(rx.try_recv().is_err());
        r.done(id);
        assert!(rx.try_recv().is_ok());
        r.done(id); // late or forged: ignored
    }
}
