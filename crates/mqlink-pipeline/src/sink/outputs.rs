//! Where a source's batches go — the sink runner's twin on the source side:
//! through the source's transform stage, then one bounded channel per sink
//! (the back-pressure path). It acknowledges a source's records only once
//! every sink confirmed them, and a stage's held records only after its
//! checkpoint.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use mqlink::source::RecordAck;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::batch::{Batch, BusyTime, Item, Progress};
use crate::relay::Relay;
use crate::status::{Component, State};
use crate::transform::{Fault, Output, Transform};

/// What settling a source record takes: its MQTT acknowledgement (none at
/// QoS 0) and, for a message a pipeline sink relayed through the embedded
/// broker, its relay id.
pub type Settle = (Option<RecordAck>, Option<u64>);

/// A sink's channel, and the sink (which counts what it was handed).
pub type SinkInput = (mpsc::Sender<Arc<Batch>>, Arc<Component>);

/// Where a source's batches go: through the source's transform stage, if
/// it has one, then one channel per sink reading it.
pub struct Outputs {
    pub senders: Vec<SinkInput>,
    pub stop: watch::Receiver<bool>,
    pub busy: Arc<BusyTime>,
    pub stage: Option<Box<dyn Transform>>,
    /// Set for sources on the embedded broker: relayed messages to settle.
    pub relay: Option<Arc<Relay>>,
    /// Set for MQTT sources with a `dead_letter_topic`: where the stage's
    /// faults go.
    pub dead_letter: Option<super::DeadLetters>,
    /// What settles the records handed to the stage and not yet carried
    /// out by a batch, in arrival order.
    pending: VecDeque<Settle>,
    /// Batches sent, and how many of them every sink confirmed.
    sent: u64,
    progress: Arc<Progress>,
    /// Faults whose dead letters were not confirmed (their messages stay
    /// unacknowledged).
    unsettled_faults: bool,
}

impl Outputs {
    pub fn new(
        senders: Vec<SinkInput>,
        stop: watch::Receiver<bool>,
        busy: Arc<BusyTime>,
        stage: Option<Box<dyn Transform>>,
    ) -> Outputs {
        Outputs {
            senders,
            stop,
            busy,
            stage,
            relay: None,
            dead_letter: None,
            pending: VecDeque::new(),
            sent: 0,
            progress: Arc::default(),
            unsettled_faults: false,
        }
    }

    /// Shutdown was asked for: take no new messages.
    pub fn stopping(&self) -> bool {
        *self.stop.borrow()
    }

    /// When the stage has held records due without new input.
    pub fn deadline(&self) -> Option<Instant> {
        self.stage.as_ref().and_then(|s| s.deadline())
    }

    /// Hands a batch (`acks`: one per item, or empty when no record has
    /// anything to settle) to every sink, through the stage, waiting while a
    /// sink is full. False when a sink is gone.
    pub async fn send(&mut self, items: Vec<Item>, acks: Vec<Settle>, comp: &Component) -> bool {
        let Some(stage) = self.stage.as_mut() else {
            let n = items.len() as u64;
            return self.deliver(items, acks, n, comp).await;
        };
        let (n, given) = (items.len(), acks.len());
        self.pending.extend(acks);
        self.pending.extend((given..n).map(|_| (None, None)));
        let out = stage.apply(items, Instant::now());
        self.settle(out, comp).await
    }

    /// Releases what the stage holds that is due by now (a burst
    /// interval), and checkpoints a stage whose checkpoint is due.
    pub async fn flush_due(&mut self, comp: &Component) -> bool {
        let Some(stage) = self.stage.as_mut() else {
            return true;
        };
        let out = stage.flush(Instant::now());
        self.settle(out, comp).await
    }

    /// Faults are dead-lettered (or logged and counted as skipped); the
    /// acknowledgements of every record the stage no longer holds go with
    /// the output batch; then a due checkpoint is taken.
    async fn settle(&mut self, out: Output, comp: &Component) -> bool {
        if out.redelivered > 0 {
            comp.redelivered
                .fetch_add(out.redelivered, Ordering::Relaxed);
            tracing::info!(component = %comp.path(), messages = out.redelivered, "Redelivered messages the window state already holds: acknowledged, not counted again.");
        }
        if !out.faults.is_empty() && !self.faults(out.faults, comp).await {
            return false;
        }
        let (settles, done) = self.released();
        if !self.deliver(out.items, settles, done, comp).await {
            return false;
        }
        let due = self
            .stage
            .as_ref()
            .is_some_and(|s| s.checkpoint_due(Instant::now()));
        !due || self.checkpoint(comp, true).await
    }

    /// Late rows and rule failures: to the dead-letter topic, confirmed
    /// before their messages can be acknowledged; without one, logged and
    /// counted as skipped. False when shutdown interrupted the wait or the
    /// topic did not take one (the source fails): either way no later
    /// checkpoint acknowledges their messages.
    async fn faults(&mut self, faults: Vec<Fault>, comp: &Component) -> bool {
        let n = faults.len() as u64;
        let late = faults.iter().filter(|f| f.late).count() as u64;
        comp.late.fetch_add(late, Ordering::Relaxed);
        comp.record_faults.fetch_add(n - late, Ordering::Relaxed);
        if let Some(f) = faults.iter().rfind(|f| !f.late) {
            comp.set_error(f.reason.clone());
        }
        let Some(dl) = &self.dead_letter else {
            for f in &faults {
                let topic = f.topic.as_deref().unwrap_or("");
                if f.late {
                    tracing::warn!(component = %comp.path(), topic, reason = %f.reason, "Late row dropped (set dead_letter_topic to keep late rows); the message is acknowledged.");
                } else {
                    tracing::error!(component = %comp.path(), topic, error = %f.reason, "Record skipped: its rule failed; the message is acknowledged.");
                }
            }
            comp.skipped.fetch_add(n, Ordering::Relaxed);
            return true;
        };
        let letters = faults.iter().map(|f| {
            let topic = f.topic.as_deref().unwrap_or("");
            (topic, f.payload.clone(), f.reason.as_str())
        });
        let path = comp.path();
        let mut stop = self.stop.clone();
        let published = tokio::select! {
            r = super::publish_dead_letters(dl, letters, comp, &path) => r,
            _ = stop.wait_for(|s| *s) => {
                self.unsettled_faults = true;
                return false;
            }
        };
        if let Err(e) = published {
            // As in the sink runner: a record neither processed nor
            // dead-lettered must not be acknowledged.
            tracing::error!(component = %path, error = %e, "The dead-letter topic did not take a record: the source stops; its message is not acknowledged.");
            comp.set_error(e);
            comp.set_state(State::Failed);
            self.unsettled_faults = true;
            return false;
        }
        true
    }

    /// A stage checkpoint: every batch sent so far confirmed by every sink,
    /// then the stage's state written, then its held records acknowledged.
    /// False when the state could not be written (the source fails), when
    /// a sink gave up on a batch (it is never confirmed) or, with
    /// `interruptible`, when shutdown came first.
    async fn checkpoint(&mut self, comp: &Component, interruptible: bool) -> bool {
        let target = self.sent;
        let mut stop = self.stop.clone();
        while self.progress.confirmed.load(Ordering::Acquire) < target {
            if self.progress.abandoned.load(Ordering::Acquire) > 0 {
                tracing::error!(component = %comp.path(), "No checkpoint: a sink stopped before confirming what the window emitted; nothing it held is acknowledged.");
                return false;
            }
            tokio::select! {
                _ = self.progress.notify.notified() => {}
                _ = stop.wait_for(|s| *s), if interruptible => return false,
            }
        }
        let Some(stage) = self.stage.as_mut() else {
            return true;
        };
        if let Err(e) = stage.checkpoint() {
            tracing::error!(component = %comp.path(), error = %e, "Checkpoint failed: the source stops; what it held is not acknowledged and comes again after a restart.");
            comp.set_error(format!("checkpoint: {e}"));
            comp.set_state(State::Failed);
            return false;
        }
        let (settles, done) = self.released();
        self.deliver(Vec::new(), settles, done, comp).await
    }

    /// What settles the records the stage no longer holds (the oldest
    /// pending ones), and how many they are.
    fn released(&mut self) -> (Vec<Settle>, u64) {
        let held = self.stage.as_ref().map_or(0, |s| s.held());
        let done = self.pending.len().saturating_sub(held);
        (self.pending.drain(..done).collect(), done as u64)
    }

    /// The source stopped: its sinks are let finish, then a stage that
    /// holds records takes a last checkpoint (so they are acknowledged
    /// before the session closes).
    pub async fn finish(&mut self, comp: &Component) {
        self.senders.clear();
        // After a failed checkpoint, or faults whose dead letters were not
        // confirmed, nothing more is acknowledged.
        if comp.state() != State::Failed
            && !self.unsettled_faults
            && self.stage.as_ref().is_some_and(|s| s.held() > 0)
        {
            self.checkpoint(comp, false).await;
        }
    }

    /// One batch to every sink; a batch without records (all filtered)
    /// is acknowledged at once.
    async fn deliver(
        &mut self,
        items: Vec<Item>,
        settles: Vec<Settle>,
        covers: u64,
        comp: &Component,
    ) -> bool {
        let mut acks = Vec::with_capacity(settles.len());
        let mut relayed = Vec::new();
        for (a, r) in settles {
            acks.extend(a);
            relayed.extend(r);
        }
        // Nothing to write (all filtered, a checkpoint), or no sink left.
        if items.is_empty() || self.senders.is_empty() {
            for a in acks {
                a.ack();
            }
            if let Some(relay) = &self.relay {
                for id in relayed {
                    relay.done(id);
                }
            }
            comp.confirmed.fetch_add(covers, Ordering::Relaxed);
            return true;
        }
        let mut batch = Batch::new(
            items,
            acks,
            self.senders.len(),
            comp.confirmed.clone(),
            self.busy.clone(),
        )
        .covering(covers)
        .relaying(self.relay.clone(), relayed);
        // Only a stage's checkpoint waits for the batches sent before it.
        if self.stage.is_some() {
            batch = batch.tracking(self.progress.clone());
            self.sent += 1;
        }
        let batch = Arc::new(batch);
        for (tx, sink) in &self.senders {
            if tx.send(batch.clone()).await.is_err() {
                return false;
            }
            sink.handed.fetch_add(batch.len() as u64, Ordering::Relaxed);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::Duration;

    use mqlink::format::Value;

    use super::*;
    use crate::status::Kind;

    /// Holds every record until its checkpoint; one output row per call
    /// (a window result).
    struct Window {
        held: usize,
        log: Arc<Mutex<Vec<String>>>,
    }

    impl Transform for Window {
        fn apply(&mut self, items: Vec<Item>, _now: Instant) -> Output {
            self.held += items.len();
            Output {
                items: vec![Item {
                    topic: None,
                    origin: None,
                    payload: bytes::Bytes::new(),
                    value: Value::BigInt(self.held as i64),
                }],
                ..Output::default()
            }
        }
        fn held(&self) -> usize {
            self.held
        }
        fn checkpoint_due(&self, _now: Instant) -> bool {
            self.held >= 4
        }
        fn checkpoint(&mut self) -> Result<(), String> {
            self.log.lock().unwrap().push("checkpoint".into());
            self.held = 0;
            Ok(())
        }
    }

    fn items(n: usize) -> Vec<Item> {
        (0..n)
            .map(|i| Item {
                topic: None,
                origin: None,
                payload: bytes::Bytes::new(),
                value: Value::BigInt(i as i64),
            })
            .collect()
    }

    type Fixture = (
        Outputs,
        mpsc::Receiver<Arc<Batch>>,
        Arc<Component>,
        Arc<Mutex<Vec<String>>>,
        watch::Sender<bool>,
    );

    /// Outputs to one sink's channel through a [`Window`]; the source, the
    /// log the stage writes, and the stop sender (to keep alive).
    fn window_outputs() -> Fixture {
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel::<Arc<Batch>>(8);
        let sink = Component::new("out", Kind::Sink, "file");
        let (stop_tx, stop) = watch::channel(false);
        let stage = Window {
            held: 0,
            log: log.clone(),
        };
        let out = Outputs::new(
            vec![(tx, sink)],
            stop,
            Arc::default(),
            Some(Box::new(stage)),
        );
        let source = Component::new("in", Kind::Source, "mqtt");
        (out, rx, source, log, stop_tx)
    }

    /// The held records are acknowledged only after the sink confirmed
    /// every batch sent before the checkpoint, and after the state was
    /// written.
    #[tokio::test]
    async fn a_checkpoint_waits_for_the_sinks_then_acknowledges() {
        let (mut out, mut rx, source, log, _stop) = window_outputs();
        let sink_log = log.clone();
        let sink_task = tokio::spawn(async move {
            while let Some(b) = rx.recv().await {
                // A slow sink: the checkpoint must wait for it.
                tokio::time::sleep(Duration::from_millis(30)).await;
                sink_log
                    .lock()
                    .unwrap()
                    .push(format!("confirm {}", b.len()));
                b.confirm();
            }
        });
        assert!(out.send(items(2), Vec::new(), &source).await);
        assert_eq!(source.confirmed.load(Ordering::Relaxed), 0);
        assert!(out.send(items(2), Vec::new(), &source).await);
        assert_eq!(source.confirmed.load(Ordering::Relaxed), 4);
        assert_eq!(
            *log.lock().unwrap(),
            ["confirm 1", "confirm 1", "checkpoint"]
        );
        // Held again, then released by the last checkpoint at stop.
        assert!(out.send(items(1), Vec::new(), &source).await);
        assert_eq!(source.confirmed.load(Ordering::Relaxed), 4);
        out.finish(&source).await;
        assert_eq!(source.confirmed.load(Ordering::Relaxed), 5);
        sink_task.await.unwrap();
        assert_eq!(log.lock().unwrap().last().unwrap(), "checkpoint");
    }

    /// A sink that gives up drops a batch it never confirms: the
    /// checkpoint, and the last one at stop, do not wait for it (forever),
    /// and nothing held is acknowledged.
    #[tokio::test]
    async fn a_sink_that_gives_up_does_not_hang_the_checkpoint() {
        let (mut out, mut rx, source, log, _stop) = window_outputs();
        // The sink takes one batch, fails, and is gone.
        let sink_task = tokio::spawn(async move {
            drop(rx.recv().await);
        });
        assert!(out.send(items(2), Vec::new(), &source).await);
        sink_task.await.unwrap();
        let due = tokio::time::timeout(
            Duration::from_secs(10),
            out.send(items(2), Vec::new(), &source),
        );
        assert!(!due
            .await
            .expect("the checkpoint waited for a batch no sink has"));
        tokio::time::timeout(Duration::from_secs(10), out.finish(&source))
            .await
            .expect("the last checkpoint waited for a batch no sink has");
        assert_eq!(source.confirmed.load(Ordering::Relaxed), 0);
        assert!(log.lock().unwrap().is_empty(), "{:?}", log.lock().unwrap());
    }

    /// A state that cannot be written fails the source; nothing held is
    /// acknowledged.
    #[tokio::test]
    async fn a_failed_checkpoint_acknowledges_nothing() {
        struct Broken;
        impl Transform for Broken {
            fn apply(&mut self, _: Vec<Item>, _: Instant) -> Output {
                Output::default()
            }
            fn held(&self) -> usize {
                usize::MAX
            }
            fn checkpoint_due(&self, _: Instant) -> bool {
                true
            }
            fn checkpoint(&mut self) -> Result<(), String> {
                Err("disk full".into())
            }
        }
        let source = Component::new("in", Kind::Source, "mqtt");
        let (_stop_tx, stop) = watch::channel(false);
        let mut out = Outputs::new(Vec::new(), stop, Arc::default(), Some(Box::new(Broken)));
        assert!(!out.send(items(3), Vec::new(), &source).await);
        assert_eq!(source.confirmed.load(Ordering::Relaxed), 0);
        assert_eq!(source.state(), State::Failed);
        assert_eq!(
            source.last_error().as_deref(),
            Some("checkpoint: disk full")
        );
    }
}
