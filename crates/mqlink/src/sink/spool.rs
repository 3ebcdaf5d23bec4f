//! The crash-safe spool: a plain segment log on disk.
//!
//! Why a segment log and not an embedded store: the access pattern is
//! append at the tail, read once in order, drop from the head — exactly a
//! log. A record is `write()`n before `send` returns, so it survives
//! SIGKILL of the process (the kernel has it); the log is `fdatasync`ed
//! every `SYNC_EVERY` for power loss. What is confirmed is kept as a
//! sequence number in `confirmed` (written atomically by rename); a segment
//! whose records are all confirmed is deleted. At start, records after the
//! confirmed sequence are published again, in order: a crash can duplicate
//! what was confirmed since the last checkpoint, never lose anything.
//!
//! Record layout: `u32 length (LE) | the record as an MQTT 5 PUBLISH packet`
//! (topic, QoS, retain, payload and properties, by the codec). A torn record
//! at the tail (a crash mid-write) is cut off.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::BytesMut;

use crate::codec::{decode, encode_publish, ByteStr, Packet, Publish};
use crate::session::Message;
use crate::types::{Protocol, QoS};

/// Segments are at most this big, and at most a quarter of the spool's
/// limit, so confirmed ones can be deleted long before the limit.
const SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
pub(crate) const SYNC_EVERY: Duration = Duration::from_millis(200);

struct Segment {
    /// Sequence after the last record in it.
    end_seq: u64,
    bytes: u64,
    path: PathBuf,
}

pub(crate) struct Spool {
    dir: PathBuf,
    segments: Vec<Segment>,
    file: Option<File>,
    next_seq: u64,
    confirmed: u64,
    last_sync: Instant,
    segment_bytes: u64,
}

fn io_err(path: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("spool {}: {e}", path.display()))
}

impl Spool {
    /// Opens (or creates) the spool and returns the records still to publish.
    pub(crate) fn open(dir: &Path, max_bytes: u64) -> io::Result<(Spool, Vec<(u64, Message)>)> {
        fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
        let confirmed = match fs::read_to_string(dir.join("confirmed")) {
            Ok(s) => s.trim().parse().unwrap_or(0),
            Err(_) => 0,
        };
        let mut names: Vec<(u64, PathBuf)> = fs::read_dir(dir)
            .map_err(|e| io_err(dir, e))?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let seq = name.strip_suffix(".seg")?.parse().ok()?;
                Some((seq, e.path()))
            })
            .collect();
        names.sort();
        let mut segments = Vec::new();
        let mut pending = Vec::new();
        let mut next_seq = confirmed;
        for (first_seq, path) in names {
            let mut data = Vec::new();
            File::open(&path)
                .and_then(|mut f| f.read_to_end(&mut data))
                .map_err(|e| io_err(&path, e))?;
            let (records, good_len) = parse(&data);
            if good_len < data.len() {
                // A torn write at the tail: keep what is whole.
                let f = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(|e| io_err(&path, e))?;
                f.set_len(good_len as u64).map_err(|e| io_err(&path, e))?;
            }
            let end_seq = first_seq + records.len() as u64;
            for (i, m) in records.into_iter().enumerate() {
                let seq = first_seq + i as u64;
                if seq >= confirmed {
                    pending.push((seq, m));
                }
            }
            next_seq = next_seq.max(end_seq);
            segments.push(Segment {
                end_seq,
                bytes: good_len as u64,
                path,
            });
        }
        let mut spool = Spool {
            dir: dir.to_owned(),
            segments,
            file: None,
            next_seq,
            confirmed,
            last_sync: Instant::now(),
            segment_bytes: SEGMENT_BYTES.min(max_bytes / 4).max(4096),
        };
        spool.drop_confirmed_segments()?;
        Ok((spool, pending))
    }

    /// Bytes on disk not yet confirmed (roughly: whole segments count).
    pub(crate) fn bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.bytes).sum()
    }

    pub(crate) fn records(&self) -> u64 {
        self.next_seq - self.confirmed
    }

    /// Appends a record; returns its sequence number. The bytes are in the
    /// kernel when this returns.
    pub(crate) fn append(&mut self, m: &Message) -> io::Result<u64> {
        let rotate = match self.segments.last() {
            None => true,
            Some(s) => s.bytes >= self.segment_bytes || self.file.is_none(),
        };
        if rotate {
            let path = self.dir.join(format!("{:020}.seg", self.next_seq));
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(|e| io_err(&path, e))?;
            if let Some(old) = self.file.take() {
                old.sync_data()?;
            }
            self.file = Some(f);
            if self.segments.last().is_none_or(|s| s.path != path) {
                self.segments.push(Segment {
                    end_seq: self.next_seq,
                    bytes: 0,
                    path,
                });
            }
        }
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
        let mut packet = BytesMut::new();
        encode_publish(&publish, Protocol::V5, &mut packet);
        let mut buf = Vec::with_capacity(4 + packet.len());
        buf.extend_from_slice(&(packet.len() as u32).to_le_bytes());
        buf.extend_from_slice(&packet);
        let f = self.file.as_mut().expect("open segment");
        f.write_all(&buf)?;
        let seg = self.segments.last_mut().expect("a segment");
        seg.bytes += buf.len() as u64;
        seg.end_seq += 1;
        let seq = self.next_seq;
        self.next_seq += 1;
        if self.last_sync.elapsed() >= SYNC_EVERY {
            f.sync_data()?;
            self.last_sync = Instant::now();
        }
        Ok(seq)
    }

    /// Everything before `seq` is confirmed: checkpoint, drop finished segments.
    pub(crate) fn confirm(&mut self, seq: u64) -> io::Result<()> {
        if seq <= self.confirmed {
            return Ok(());
        }
        self.confirmed = seq;
        let tmp = self.dir.join("confirmed.tmp");
        fs::write(&tmp, seq.to_string())?;
        fs::rename(&tmp, self.dir.join("confirmed"))?;
        self.drop_confirmed_segments()
    }

    fn drop_confirmed_segments(&mut self) -> io::Result<()> {
        while self.segments.len() > 1 || (self.file.is_none() && !self.segments.is_empty()) {
            let s = &self.segments[0];
            if s.end_seq > self.confirmed {
                break;
            }
            fs::remove_file(&s.path).or_else(|e| {
                if e.kind() == io::ErrorKind::NotFound {
                    Ok(())
                } else {
                    Err(e)
                }
            })?;
            self.segments.remove(0);
        }
        Ok(())
    }
}

/// Whole records in `data`, and how many bytes they take.
fn parse(data: &[u8]) -> (Vec<Message>, usize) {
    let mut out = Vec::new();
    let mut pos = 0;
    while data.len() - pos >= 4 {
        let len =
            u32::from_le_bytes([data[pos], data[pos + 1], data[pos + 2], data[pos + 3]]) as usize;
        if data.len() - pos - 4 < len {
            break;
        }
        let mut packet = BytesMut::from(&data[pos + 4..pos + 4 + len]);
        let Ok(Some(Packet::Publish(p))) = decode(&mut packet, Protocol::V5, usize::MAX) else {
            break;
        };
        out.push(Message {
            topic: p.topic.to_string(),
            payload: p.payload,
            qos: p.qos,
            retain: p.retain,
            properties: p.properties.map(|b| *b),
        });
        pos += 4 + len;
    }
    (out, pos)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(i: u32) -> Message {
        Message::new(format!("t/{i}"), format!("payload {i}"), QoS::AtLeastOnce).properties(
            crate::PublishProperties {
                content_type: Some("text/plain".into()),
                user_properties: vec![("i".into(), i.to_string())],
                ..Default::default()
            },
        )
    }

    #[test]
    fn replays_what_is_not_confirmed_and_cuts_a_torn_tail() {
        let dir = tempfile_dir();
        {
            let (mut s, pending) = Spool::open(&dir, 1 << 30).unwrap();
            assert!(pending.is_empty());
            for i in 0..10 {
                assert_eq!(s.append(&msg(i)).unwrap(), i as u64);
            }
            s.confirm(4).unwrap();
        }
        // A crash mid-write leaves half a record.
        let seg = fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .find(|e| e.path().extension().is_some_and(|x| x == "seg"))
            .unwrap()
            .path();
        OpenOptions::new()
            .append(true)
            .open(&seg)
            .unwrap()
            .write_all(&[40, 0, 0, 0, 1])
            .unwrap();
        let (mut s, pending) = Spool::open(&dir, 1 << 30).unwrap();
        let seqs: Vec<u64> = pending.iter().map(|(q, _)| *q).collect();
        assert_eq!(seqs, (4..10).collect::<Vec<_>>());
        assert_eq!(
            pending[0].1,
            msg(4),
            "topic, payload and properties come back"
        );
        assert_eq!(s.append(&msg(10)).unwrap(), 10);
        s.confirm(11).unwrap();
        drop(s);
        let (s, pending) = Spool::open(&dir, 1 << 30).unwrap();
        assert!(pending.is_empty());
        assert_eq!(s.records(), 0);
        fs::remove_dir_all(&dir).unwrap();
    }

    fn tempfile_dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "mqlink-spool-test-{}-{:?}",
            std::process::id(),
            std::time::SystemTime::now()
        ));
        let _ = fs::remove_dir_all(&d);
        d
    }
}
