//! The sink's crash-safe spool: outgoing records in the segment log
//! (`crate::seglog`, shared with the source's local buffer). `send`
//! returns after the record's `write()`; the log is `fdatasync`ed every
//! `SYNC_EVERY`; the tracker confirms the published prefix; at start the
//! records after it are published again, in order.

use std::io;
use std::path::Path;

use crate::codec::{ByteStr, Publish};
use crate::seglog::{Entry, Log};
use crate::session::Message;
use crate::types::QoS;

pub(crate) struct Spool {
    log: Log,
}

impl Spool {
    /// Opens (or creates) the spool and returns the records still to publish.
    pub(crate) fn open(dir: &Path, max_bytes: u64) -> io::Result<(Spool, Vec<(u64, Message)>)> {
        let log = Log::open(dir, max_bytes)?;
        let mut reader = log.reader(log.confirmed());
        let mut pending = Vec::new();
        while let Some((seq, e)) = reader.next(log.next_seq())? {
            pending.push((seq, message(e)));
        }
        Ok((Spool { log }, pending))
    }

    /// Bytes on disk not yet confirmed (roughly: whole segments count).
    pub(crate) fn bytes(&self) -> u64 {
        self.log.bytes()
    }

    pub(crate) fn records(&self) -> u64 {
        self.log.entries()
    }

    /// Appends a record; returns its sequence number. The bytes are in the
    /// kernel when this returns.
    pub(crate) fn append(&mut self, m: &Message) -> io::Result<u64> {
        // The record is the MQTT 5 PUBLISH itself: the codec already writes
        // topic, flags, payload and properties.
        let publish = Publish {
            topic: ByteStr::from(m.topic.as_str()),
            payload: m.payload.clone(),
            qos: m.qos,
            retain: m.retain,
            dup: false,
            pkid: if m.qos == QoS::AtMostOnce { 0 } else { 1 },
            properties: m.properties.clone().filter(|p| !p.is_empty()).map(Box::new),
        };
        let entry = Entry {
            at_ms: crate::seglog::now_ms(),
            client: 0,
            publish,
        };
        self.log.append(std::slice::from_ref(&entry), false)
    }

    /// Everything before `seq` is confirmed: checkpoint, drop finished segments.
    pub(crate) fn confirm(&mut self, seq: u64) -> io::Result<()> {
        self.log.confirm(seq)
    }
}

fn message(e: Entry) -> Message {
    let p = e.publish;
    Message {
        topic: p.topic.to_string(),
        payload: p.payload,
        qos: p.qos,
        retain: p.retain,
        properties: p.properties.map(|b| *b),
    }
}
