//! Bytes of incoming messages handed towards the application and not taken
//! by it yet (the delivery channel and the deliveries waiting behind it).
//! While they reach [`ConnectOptions::incoming_bytes`], the driver stops
//! reading the socket (TCP back-pressure), so memory follows bytes and not
//! only the channel's count: 4,096 messages of 1 MiB would be 4 GiB.
//!
//! [`ConnectOptions::incoming_bytes`]: crate::ConnectOptions::incoming_bytes

use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::Notify;

use super::Delivery;

pub(crate) struct Queued {
    bytes: AtomicUsize,
    limit: usize,
    /// Notified when `bytes` falls below `limit`.
    taken: Notify,
}

impl Queued {
    pub(crate) fn new(limit: usize) -> Queued {
        Queued {
            bytes: AtomicUsize::new(0),
            limit: limit.max(1),
            taken: Notify::new(),
        }
    }

    fn size(d: &Delivery) -> usize {
        d.payload.len() + d.topic.len()
    }

    /// `d` was handed towards the application.
    pub(crate) fn add(&self, d: &Delivery) {
        self.bytes.fetch_add(Self::size(d), Ordering::AcqRel);
    }

    /// The application took `d`.
    pub(crate) fn take(&self, d: &Delivery) {
        let n = Self::size(d);
        let before = self.bytes.fetch_sub(n, Ordering::AcqRel);
        if before >= self.limit && before - n < self.limit {
            self.taken.notify_one();
        }
    }

    /// Whether the application has the limit's worth waiting.
    pub(crate) fn is_full(&self) -> bool {
        self.bytes.load(Ordering::Acquire) >= self.limit
    }

    /// Completes after the application took enough to be below the limit
    /// (or at once, for a notification it has not waited for yet).
    pub(crate) async fn room(&self) {
        self.taken.notified().await
    }
}
