//! Counting a publisher's confirmations and waiting for them: the one
//! tracker behind [`MqttSink`](super::MqttSink), `mqlink pub` and Python's
//! `Publisher`.

use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::Notify;

use super::FlushError;
use crate::{Confirmed, PublishError, PublishToken};

/// What a publisher sent, what the broker confirmed and what failed; every
/// publish is [`sent`](Self::sent) once and then [`record`](Self::record)ed
/// once, so [`flush`](Self::flush) can wait for all of them.
#[derive(Debug)]
pub struct Confirmations {
    published: AtomicU64,
    confirmed: AtomicU64,
    failed: AtomicU64,
    /// `failed` when `flush` last looked: it reports only what is new.
    failed_at_flush: AtomicU64,
    last_error: Mutex<Option<String>>,
    /// Publishes recorded (confirmed or failed).
    completed: AtomicU64,
    /// The lowest `completed` a waiter wants to be woken at (`u64::MAX`:
    /// none): waiters are woken once per target reached, not per
    /// confirmation, which keeps the per-message cost an atomic add.
    wake_at: AtomicU64,
    reached: Notify,
}

impl Default for Confirmations {
    fn default() -> Self {
        Confirmations {
            published: AtomicU64::new(0),
            confirmed: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            failed_at_flush: AtomicU64::new(0),
            last_error: Mutex::new(None),
            completed: AtomicU64::new(0),
            wake_at: AtomicU64::new(u64::MAX),
            reached: Notify::new(),
        }
    }
}

impl Confirmations {
    /// Counts one publish handed to a session (before its outcome can be
    /// recorded: `completed` never runs ahead of `published`).
    pub fn sent(&self) {
        self.published.fetch_add(1, SeqCst);
    }

    /// Takes back a [`sent`](Self::sent) publish that never reached a session.
    pub fn unsent(&self) {
        self.published.fetch_sub(1, SeqCst);
    }

    /// Records one publish's outcome (exactly once per publish).
    pub fn record(&self, r: &Result<Confirmed, PublishError>) {
        match r {
            Ok(_) => {
                self.confirmed.fetch_add(1, Relaxed);
            }
            Err(e) => {
                if let Ok(mut last) = self.last_error.lock() {
                    *last = Some(e.to_string());
                }
                self.failed.fetch_add(1, Relaxed);
            }
        }
        let n = self.completed.fetch_add(1, SeqCst) + 1;
        if n >= self.wake_at.load(SeqCst) {
            self.wake_at.store(u64::MAX, SeqCst);
            self.reached.notify_waiters();
        }
    }

    /// Awaits `token`, records its outcome and returns it.
    pub async fn confirm(&self, token: PublishToken) -> Result<Confirmed, PublishError> {
        let r = token.await;
        self.record(&r);
        r
    }

    /// Publishes sent so far.
    pub fn published(&self) -> u64 {
        self.published.load(SeqCst)
    }

    /// Publishes the broker confirmed.
    pub fn confirmed(&self) -> u64 {
        self.confirmed.load(Relaxed)
    }

    /// Publishes that failed.
    pub fn failed(&self) -> u64 {
        self.failed.load(Relaxed)
    }

    /// Publishes sent and not confirmed or failed yet.
    pub fn in_flight(&self) -> u64 {
        self.published().saturating_sub(self.completed.load(SeqCst))
    }

    /// The last failure's error.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().ok().and_then(|e| e.clone())
    }

    /// Waits until `completed >= target`.
    async fn reach(&self, target: u64) {
        loop {
            let mut notified = pin!(self.reached.notified());
            notified.as_mut().enable();
            self.wake_at.fetch_min(target, SeqCst);
            if self.completed.load(SeqCst) >= target {
                return;
            }
            notified.await;
        }
    }

    /// Waits until every publish sent so far has its outcome, at most
    /// `timeout`. Fails when publishes since the previous flush failed
    /// (naming the last error), or on the timeout (with `cause()`: why the
    /// sessions are not connected, when they are not).
    pub async fn flush(
        &self,
        timeout: Duration,
        cause: impl FnOnce() -> Option<String>,
    ) -> Result<(), FlushError> {
        let target = self.published();
        if tokio::time::timeout(timeout, self.reach(target))
            .await
            .is_err()
        {
            return Err(FlushError::Timeout {
                after: timeout,
                unconfirmed: target.saturating_sub(self.completed.load(SeqCst)),
                cause: cause(),
            });
        }
        let failed = self.failed();
        let before = self.failed_at_flush.swap(failed, Relaxed);
        match failed.saturating_sub(before) {
            0 => Ok(()),
            n => Err(FlushError::Failed {
                failed: n,
                last_error: self.last_error(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused() -> Result<Confirmed, PublishError> {
        Err(PublishError::Stopped("gone".into()))
    }

    #[tokio::test(start_paused = true)]
    async fn flush_waits_for_every_outcome_and_reports_new_failures_once() {
        let c = std::sync::Arc::new(Confirmations::default());
        c.sent();
        c.sent();
        let timeout = Duration::from_secs(1);
        match c.flush(timeout, || Some("why".into())).await {
            Err(FlushError::Timeout {
                unconfirmed, cause, ..
            }) => assert_eq!((unconfirmed, cause.as_deref()), (2, Some("why"))),
            other => panic!("{other:?}"),
        }
        let waiter = tokio::spawn({
            let c = c.clone();
            async move { c.flush(Duration::from_secs(60), || None).await }
        });
        tokio::task::yield_now().await;
        c.record(&refused());
        assert_eq!(c.in_flight(), 1);
        c.record(&refused());
        match waiter.await.unwrap() {
            Err(FlushError::Failed { failed, last_error }) => {
                assert_eq!(failed, 2);
                assert!(last_error.is_some_and(|e| e.ends_with(": gone")));
            }
            other => panic!("{other:?}"),
        }
        // Reported once: the next flush has nothing new.
        assert_eq!(c.flush(timeout, || None).await, Ok(()));
        assert_eq!((c.published(), c.confirmed(), c.failed()), (2, 0, 2));
    }
}
