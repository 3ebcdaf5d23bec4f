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
        let legacy = legacy::pending(dir)?;
        let mut log = Log::open(dir, max_bytes)?;
        if !legacy.records.is_empty() {
            // An older mqlink's spool: its unconfirmed records move into
            // the log (synced) before its files go; a crash in between
            // moves them again (a duplicate, never a loss).
            let entries: Vec<Entry> = legacy.records.iter().map(entry).collect();
            log.append(&entries, true)?;
            tracing::info!(spool = %dir.display(), records = entries.len(), "Spool of an older mqlink: its unconfirmed records moved into the log.");
        }
        legacy.remove()?;
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
        self.log.append(std::slice::from_ref(&entry(m)), false)
    }

    /// Everything before `seq` is confirmed: checkpoint, drop finished segments.
    pub(crate) fn confirm(&mut self, seq: u64) -> io::Result<()> {
        self.log.confirm(seq)
    }
}

/// A record as a log entry: the MQTT 5 PUBLISH itself (the codec already
/// writes topic, flags, payload and properties).
fn entry(m: &Message) -> Entry {
    let publish = Publish {
        topic: ByteStr::from(m.topic.as_str()),
        payload: m.payload.clone(),
        qos: m.qos,
        retain: m.retain,
        dup: false,
        pkid: if m.qos == QoS::AtMostOnce { 0 } else { 1 },
        properties: m.properties.clone().filter(|p| !p.is_empty()).map(Box::new),
    };
    Entry {
        at_ms: crate::seglog::now_ms(),
        client: 0,
        publish,
    }
}

/// Spools of mqlink before the segment log had checksums: `<first
/// sequence>.seg` files of `u32 length (LE) | MQTT 5 PUBLISH` and the same
/// `confirmed` file.
mod legacy {
    use std::fs;
    use std::io;
    use std::path::{Path, PathBuf};

    use bytes::BytesMut;

    use crate::codec::{decode, Packet};
    use crate::session::Message;
    use crate::types::Protocol;

    pub(super) struct Legacy {
        files: Vec<PathBuf>,
        /// The records after the confirmed sequence, in order.
        pub(super) records: Vec<Message>,
    }

    impl Legacy {
        pub(super) fn remove(self) -> io::Result<()> {
            for f in self.files {
                fs::remove_file(&f)?;
            }
            Ok(())
        }
    }

    pub(super) fn pending(dir: &Path) -> io::Result<Legacy> {
        let mut files: Vec<(u64, PathBuf)> = match fs::read_dir(dir) {
            Ok(d) => d
                .filter_map(|e| e.ok())
                .filter_map(|e| {
                    let name = e.file_name().into_string().ok()?;
                    Some((name.strip_suffix(".seg")?.parse().ok()?, e.path()))
                })
                .collect(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e),
        };
        files.sort();
        let confirmed: u64 = fs::read_to_string(dir.join("confirmed"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        let mut records = Vec::new();
        for (first, path) in &files {
            for (i, m) in parse(&fs::read(path)?).into_iter().enumerate() {
                if first + i as u64 >= confirmed {
                    records.push(m);
                }
            }
        }
        let files = files.into_iter().map(|(_, p)| p).collect();
        Ok(Legacy { files, records })
    }

    /// The whole records of a segment (a torn tail is left out).
    fn parse(data: &[u8]) -> Vec<Message> {
        let mut out = Vec::new();
        let mut pos = 0;
        while let Some(len) = data.get(pos..pos + 4) {
            let len = u32::from_le_bytes(len.try_into().expect("4 bytes")) as usize;
            let Some(body) = data.get(pos + 4..pos + 4 + len) else {
                break;
            };
            let mut packet = BytesMut::from(body);
            let Ok(Some(Packet::Publish(p))) = decode(&mut packet, Protocol::V5, usize::MAX) else {
                break;
            };
            out.push(super::message_of(p));
            pos += 4 + len;
        }
        out
    }
}

fn message(e: Entry) -> Message {
    message_of(e.publish)
}

fn message_of(p: Publish) -> Message {
    Message {
        topic: p.topic.to_string(),
        payload: p.payload,
        qos: p.qos,
        retain: p.retain,
        properties: p.properties.map(|b| *b),
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use bytes::BytesMut;

    use super::*;
    use crate::codec::encode_publish;
    use crate::types::Protocol;

    /// An older mqlink's spool (`.seg` files without checksums, 2 records
    /// confirmed, a torn tail): its 3 unconfirmed records are published
    /// again, from the log they moved into, and its files are gone.
    #[test]
    fn an_older_spool_is_moved_into_the_log() {
        let dir = std::env::temp_dir().join(format!("mqlink-spool-legacy-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let record = |i: u32| {
            let mut p = BytesMut::new();
            encode_publish(
                &entry(&Message::new(
                    format!("t/{i}"),
                    format!("p{i}"),
                    QoS::AtLeastOnce,
                ))
                .publish,
                Protocol::V5,
                &mut p,
            );
            let mut r = (p.len() as u32).to_le_bytes().to_vec();
            r.extend_from_slice(&p);
            r
        };
        fs::write(dir.join("confirmed"), "2").unwrap();
        fs::write(
            dir.join(format!("{:020}.seg", 0)),
            [record(0), record(1), record(2)].concat(),
        )
        .unwrap();
        let mut torn = [record(3), record(4)].concat();
        torn.extend_from_slice(&record(5)[..7]);
        fs::write(dir.join(format!("{:020}.seg", 3)), torn).unwrap();
        let topics = |pending: &[(u64, Message)]| -> Vec<String> {
            pending.iter().map(|(_, m)| m.topic.clone()).collect()
        };
        let (spool, pending) = Spool::open(&dir, 1 << 20).unwrap();
        assert_eq!(topics(&pending), ["t/2", "t/3", "t/4"]);
        let legacy = fs::read_dir(&dir).unwrap().filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "seg")
        });
        assert_eq!(legacy.count(), 0);
        drop(spool);
        let (_, again) = Spool::open(&dir, 1 << 20).unwrap();
        assert_eq!(topics(&again), ["t/2", "t/3", "t/4"], "moved once");
        let _ = fs::remove_dir_all(&dir);
    }
}
