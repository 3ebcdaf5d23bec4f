//! The crash-safe segment log under the sink's spool (`sink/spool.rs`) and
//! the source's local buffer (`source/buffer.rs`).
//!
//! Why a segment log and not an embedded store: the access pattern is
//! append at the tail, read once in order, drop from the head — exactly a
//! log. An append is `write()`n before it returns, so it survives SIGKILL
//! of the process (the kernel has it); `fdatasync` runs every `SYNC_EVERY`
//! or, when asked, per append (power loss). What is confirmed is kept as a
//! sequence number in `confirmed` (written atomically by rename); a segment
//! whose entries are all confirmed is deleted. After a crash the entries
//! after the confirmed sequence are read again, in order: a crash can
//! duplicate what was confirmed since the last checkpoint, never lose
//! anything.
//!
//! Segments are `<first sequence>.log` (spools of mqlink before this log
//! had `.seg` files without checksums: `sink/spool.rs` moves their records
//! in). Entry layout: `u32 length (LE) | u32 CRC-32C of the rest (LE) |
//! u64 unix ms (LE) | u16 client (LE) | an MQTT 5 PUBLISH packet` (topic,
//! QoS, retain, DUP, packet id, payload and properties, by the codec);
//! `length` counts what follows the CRC. An entry cut short or failing its
//! CRC (a crash mid-write, garbage at the tail) ends its segment: it and
//! whatever follows are cut off at open, never read as data.
//!
//! Entries are read by a [`Reader`] that streams them from the files, so
//! memory stays bounded by the largest entry whatever the log holds.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::BytesMut;

use crate::codec::{decode, encode_publish, Packet, Publish};
use crate::types::Protocol;

/// Segments are at most this big, and at most a quarter of the log's
/// limit, so confirmed ones can be deleted long before the limit.
const SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
/// How often an append without `sync` is followed by `fdatasync`.
pub(crate) const SYNC_EVERY: Duration = Duration::from_millis(200);
/// Length and CRC.
const HEAD: usize = 8;
/// Time and client, inside the checksummed part.
const META: usize = 10;
/// No entry is longer (an MQTT packet is at most 256 MiB): a length field
/// beyond it is garbage, not an allocation.
const MAX_ENTRY: usize = 256 * 1024 * 1024 + 16;

/// One entry: a PUBLISH with when it arrived and which client took it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Entry {
    pub at_ms: u64,
    pub client: u16,
    pub publish: Publish,
}

struct Segment {
    /// Sequence after the last entry in it.
    end_seq: u64,
    bytes: u64,
    path: PathBuf,
}

/// The writing side: appends, confirms, drops confirmed segments.
pub(crate) struct Log {
    dir: PathBuf,
    segments: VecDeque<Segment>,
    file: Option<File>,
    next_seq: u64,
    confirmed: u64,
    last_sync: Instant,
    /// The owner syncs through [`Log::sync_handle`], off the appending path.
    sync_elsewhere: bool,
    segment_bytes: u64,
    /// Entries cut off at open (torn or failing their CRC).
    cut: u64,
    /// The log's identity ([`log_id`]).
    id: u64,
    /// Held for the log's lifetime: a second process on the same
    /// directory is refused instead of interleaving appends.
    _lock: File,
}

fn io_err(path: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

/// The identity of the log in `dir`, kept in its `id` file. Sequences
/// start again at 0 only in a new log (no `confirmed`, no segments: a
/// deleted directory, a first run), which gets a new random identity, so
/// (identity, sequence) never names two entries: a sink that keeps the
/// last position it wrote ([`crate::source::LogPosition`]) can skip what a
/// restart reads again without skipping anything new.
fn log_id(dir: &Path, new: bool) -> io::Result<u64> {
    let path = dir.join("id");
    let kept = fs::read_to_string(&path)
        .ok()
        .and_then(|s| u64::from_str_radix(s.trim(), 16).ok());
    if let (false, Some(id)) = (new, kept) {
        return Ok(id);
    }
    let id = fastrand::u64(..);
    let tmp = dir.join("id.tmp");
    fs::write(&tmp, format!("{id:016x}\n")).map_err(|e| io_err(&tmp, e))?;
    fs::rename(&tmp, &path).map_err(|e| io_err(&path, e))?;
    Ok(id)
}

/// CRC-32C (Castagnoli), bitwise table-driven: the log's entries are
/// small next to the write they cost, so no dependency for speed.
pub(crate) fn crc32c(data: &[u8]) -> u32 {
    static TABLE: std::sync::OnceLock<[u32; 256]> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        std::array::from_fn(|i| {
            let mut c = i as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    0x82F6_3B78 ^ (c >> 1)
                } else {
                    c >> 1
                };
            }
            c
        })
    });
    !data.iter().fold(!0u32, |c, &b| {
        table[((c ^ b as u32) & 0xff) as usize] ^ (c >> 8)
    })
}

/// Segment files of `dir` by their first sequence, in order.
fn segment_files(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut names: Vec<(u64, PathBuf)> = fs::read_dir(dir)
        .map_err(|e| io_err(dir, e))?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let seq = name.strip_suffix(".log")?.parse().ok()?;
            Some((seq, e.path()))
        })
        .collect();
    names.sort();
    Ok(names)
}

impl Log {
    /// Opens (or creates) the log in `dir`, cutting a torn tail. Reads each
    /// segment once, entry by entry, without keeping them.
    pub(crate) fn open(dir: &Path, max_bytes: u64) -> io::Result<Log> {
        fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
        let lock_path = dir.join("lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| io_err(&lock_path, e))?;
        if lock.try_lock().is_err() {
            return Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                format!(
                    "{} is in use by another process (each log needs its own directory)",
                    dir.display()
                ),
            ));
        }
        let confirmed: Option<u64> = fs::read_to_string(dir.join("confirmed"))
            .ok()
            .and_then(|s| s.trim().parse().ok());
        let files = segment_files(dir)?;
        let id = log_id(dir, confirmed.is_none() && files.is_empty())?;
        let confirmed = confirmed.unwrap_or(0);
        let mut segments = VecDeque::new();
        let mut next_seq = confirmed;
        let mut cut = 0;
        for (first_seq, path) in files {
            let (count, good_len, len) = scan(&path)?;
            if good_len < len {
                cut += 1;
                tracing::warn!(segment = %path.display(), kept_bytes = good_len, cut_bytes = len - good_len, "Log: a torn or corrupt entry at the end of a segment is cut off.");
                let f = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(|e| io_err(&path, e))?;
                f.set_len(good_len).map_err(|e| io_err(&path, e))?;
                f.sync_all().map_err(|e| io_err(&path, e))?;
            }
            let end_seq = first_seq + count;
            next_seq = next_seq.max(end_seq);
            segments.push_back(Segment {
                end_seq,
                bytes: good_len,
                path,
            });
        }
        let mut log = Log {
            dir: dir.to_owned(),
            segments,
            file: None,
            next_seq,
            confirmed,
            last_sync: Instant::now(),
            sync_elsewhere: false,
            segment_bytes: SEGMENT_BYTES.min(max_bytes / 4).max(4096),
            cut,
            id,
            _lock: lock,
        };
        remove_files(log.take_confirmed_segments())?;
        Ok(log)
    }

    /// Bytes on disk not yet deleted (whole segments count).
    pub(crate) fn bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.bytes).sum()
    }

    /// Entries after the confirmed sequence.
    pub(crate) fn entries(&self) -> u64 {
        self.next_seq - self.confirmed
    }

    pub(crate) fn confirmed(&self) -> u64 {
        self.confirmed
    }

    /// The sequence the next append gets.
    pub(crate) fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The log's identity: with a sequence, it names an entry across
    /// restarts ([`log_id`]).
    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    /// Segments with a torn or corrupt tail found at open.
    pub(crate) fn cut(&self) -> u64 {
        self.cut
    }

    /// The sequence of the first entry on disk (`next_seq` when none).
    pub(crate) fn first_seq(&self) -> u64 {
        self.segments
            .front()
            .and_then(|s| s.path.file_stem()?.to_str()?.parse().ok())
            .unwrap_or(self.next_seq)
    }

    /// A reader of the entries from `seq` on.
    pub(crate) fn reader(&self, seq: u64) -> Reader {
        Reader {
            dir: self.dir.clone(),
            seq,
            file: None,
            buf: Vec::new(),
        }
    }

    /// Appends `entries` with one `write()`; returns the first one's
    /// sequence. The bytes are in the kernel when this returns, and on
    /// disk with `sync` (else within `SYNC_EVERY` of a later append).
    pub(crate) fn append(&mut self, entries: &[Entry], sync: bool) -> io::Result<u64> {
        let first = self.next_seq;
        if entries.is_empty() {
            return Ok(first);
        }
        self.rotate_if_full()?;
        let mut buf = Vec::new();
        let mut packet = BytesMut::new();
        for e in entries {
            packet.clear();
            encode_publish(&e.publish, Protocol::V5, &mut packet);
            let len = META + packet.len();
            let start = buf.len();
            buf.extend_from_slice(&(len as u32).to_le_bytes());
            buf.extend_from_slice(&[0; 4]);
            buf.extend_from_slice(&e.at_ms.to_le_bytes());
            buf.extend_from_slice(&e.client.to_le_bytes());
            buf.extend_from_slice(&packet);
            let crc = crc32c(&buf[start + HEAD..]);
            buf[start + 4..start + HEAD].copy_from_slice(&crc.to_le_bytes());
        }
        let f = self.file.as_mut().expect("open segment");
        f.write_all(&buf)?;
        if sync || (!self.sync_elsewhere && self.last_sync.elapsed() >= SYNC_EVERY) {
            f.sync_data()?;
            self.last_sync = Instant::now();
        }
        let seg = self.segments.back_mut().expect("a segment");
        seg.bytes += buf.len() as u64;
        seg.end_seq += entries.len() as u64;
        self.next_seq += entries.len() as u64;
        Ok(first)
    }

    /// A new segment when there is none open or the open one is full.
    /// After a restart the old last segment is not appended to: its tail
    /// was checked at open, a new file keeps that simple.
    fn rotate_if_full(&mut self) -> io::Result<()> {
        let full = self
            .segments
            .back()
            .is_none_or(|s| s.bytes >= self.segment_bytes);
        if self.file.is_some() && !full {
            return Ok(());
        }
        let path = self.dir.join(format!("{:020}.log", self.next_seq));
        let f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| io_err(&path, e))?;
        if let Some(old) = self.file.take() {
            old.sync_data()?;
        }
        self.file = Some(f);
        if self.segments.back().is_none_or(|s| s.path != path) {
            self.segments.push_back(Segment {
                end_seq: self.next_seq,
                bytes: 0,
                path,
            });
        }
        Ok(())
    }

    /// Appends without `sync` leave `fdatasync` to the owner, who calls it
    /// on a [`sync_handle`](Self::sync_handle) (the source's buffer: so an
    /// append, on the path to a PUBACK, never waits for the disk).
    pub(crate) fn sync_elsewhere(&mut self) {
        self.sync_elsewhere = true;
    }

    /// The segment being written, to `fdatasync` without holding the log.
    pub(crate) fn sync_handle(&self) -> Option<io::Result<File>> {
        self.file.as_ref().map(File::try_clone)
    }

    /// Everything before `seq` is confirmed: checkpoint, drop finished segments.
    pub(crate) fn confirm(&mut self, seq: u64) -> io::Result<()> {
        self.confirm_later(seq).write()
    }

    /// [`confirm`](Self::confirm), the files to be written by
    /// [`Confirming::write`] without holding the log (later appends and
    /// confirmations may come first; confirmations are written one at a
    /// time, in order, by the caller).
    pub(crate) fn confirm_later(&mut self, seq: u64) -> Confirming {
        if seq <= self.confirmed {
            return Confirming::default();
        }
        self.confirmed = seq.min(self.next_seq);
        Confirming {
            confirmed: Some((self.dir.clone(), self.confirmed)),
            remove: self.take_confirmed_segments(),
        }
    }

    /// Forgets fully confirmed segments; returns their files.
    fn take_confirmed_segments(&mut self) -> Vec<PathBuf> {
        let mut gone = Vec::new();
        while let Some(s) = self.segments.front() {
            if s.end_seq > self.confirmed {
                break;
            }
            if self.segments.len() == 1 {
                // The segment being written, all confirmed, stays while it is
                // within its size: after a SIGKILL the broker sends again
                // what it had not read the PUBACKs of, and the source's
                // buffer knows those messages only from the log's last
                // entries (`buffer::last_appended`). One that outgrew twice
                // its limit (a few big entries) goes, and the next append
                // starts a new one: a log must not stay full once confirmed
                // (a segment is at most a quarter of the log's bytes).
                if s.bytes <= 2 * self.segment_bytes {
                    break;
                }
                self.file = None;
            }
            let s = self.segments.pop_front().expect("front");
            if s.bytes == 0 {
                // Now: the next segment may get its name (`<next seq>.log`).
                // Left behind, an empty file is an empty segment.
                let _ = fs::remove_file(&s.path);
            } else {
                gone.push(s.path);
            }
        }
        gone
    }
}

/// A confirmation's files: the `confirmed` sequence and segments to delete.
#[derive(Default)]
pub(crate) struct Confirming {
    confirmed: Option<(PathBuf, u64)>,
    remove: Vec<PathBuf>,
}

impl Confirming {
    /// Writes `confirmed` (by rename), then deletes the segments.
    pub(crate) fn write(self) -> io::Result<()> {
        if let Some((dir, seq)) = self.confirmed {
            let tmp = dir.join("confirmed.tmp");
            fs::write(&tmp, seq.to_string()).map_err(|e| io_err(&tmp, e))?;
            fs::rename(&tmp, dir.join("confirmed")).map_err(|e| io_err(&tmp, e))?;
        }
        remove_files(self.remove)
    }
}

fn remove_files(paths: Vec<PathBuf>) -> io::Result<()> {
    for p in paths {
        fs::remove_file(&p).or_else(|e| match e.kind() {
            io::ErrorKind::NotFound => Ok(()),
            _ => Err(io_err(&p, e)),
        })?;
    }
    Ok(())
}

/// Reads a segment once: (entries, bytes they take, file length).
fn scan(path: &Path) -> io::Result<(u64, u64, u64)> {
    let f = File::open(path).map_err(|e| io_err(path, e))?;
    let len = f.metadata().map_err(|e| io_err(path, e))?.len();
    let mut r = BufReader::with_capacity(256 * 1024, f);
    let (mut count, mut pos, mut buf) = (0, 0u64, Vec::new());
    while let Some(n) = read_entry(&mut r, len - pos, &mut buf).map_err(|e| io_err(path, e))? {
        count += 1;
        pos += n;
    }
    Ok((count, pos, len))
}

/// Reads the next whole entry with a good CRC into `buf` (the part after
/// the CRC); returns its size on disk, or `None` at a torn or corrupt
/// entry or the end. `left` is what the file still holds.
fn read_entry(r: &mut impl Read, left: u64, buf: &mut Vec<u8>) -> io::Result<Option<u64>> {
    if left < (HEAD + META) as u64 {
        return Ok(None);
    }
    let mut head = [0u8; HEAD];
    r.read_exact(&mut head)?;
    let len = u32::from_le_bytes(head[..4].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(head[4..].try_into().expect("4 bytes"));
    if !(META..=MAX_ENTRY).contains(&len) || (HEAD + len) as u64 > left {
        return Ok(None);
    }
    buf.resize(len, 0);
    r.read_exact(buf)?;
    if crc32c(buf) != crc || parse(buf).is_none() {
        return Ok(None);
    }
    Ok(Some((HEAD + len) as u64))
}

/// An entry from its checksummed bytes.
fn parse(buf: &[u8]) -> Option<Entry> {
    let at_ms = u64::from_le_bytes(buf[..8].try_into().ok()?);
    let client = u16::from_le_bytes(buf[8..10].try_into().ok()?);
    let mut packet = BytesMut::from(&buf[META..]);
    match decode(&mut packet, Protocol::V5, usize::MAX) {
        Ok(Some(Packet::Publish(publish))) if packet.is_empty() => Some(Entry {
            at_ms,
            client,
            publish,
        }),
        _ => None,
    }
}

/// Streams entries from the segment files in order, one at a time.
pub(crate) struct Reader {
    dir: PathBuf,
    seq: u64,
    /// The open segment, positioned at entry `seq`.
    file: Option<BufReader<File>>,
    buf: Vec<u8>,
}

impl Reader {
    /// The sequence of the entry `next` returns.
    pub(crate) fn seq(&self) -> u64 {
        self.seq
    }

    /// The next entry, if it is before `limit` (what the writer has
    /// written). Entries before `limit` are whole: the writer publishes
    /// `limit` after its `write()`, and a torn tail was cut at open.
    pub(crate) fn next(&mut self, limit: u64) -> io::Result<Option<(u64, Entry)>> {
        // Two tries: the end of one segment, then the next one.
        for _ in 0..2 {
            if self.seq >= limit || (self.file.is_none() && !self.open_segment()?) {
                return Ok(None);
            }
            let r = self.file.as_mut().expect("open segment");
            match read_entry(r, u64::MAX, &mut self.buf) {
                Ok(Some(_)) => {
                    let e = parse(&self.buf).expect("checked by read_entry");
                    self.seq += 1;
                    return Ok(Some((self.seq - 1, e)));
                }
                Ok(None) => break,
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => self.file = None,
                Err(e) => return Err(io_err(&self.dir, e)),
            }
        }
        Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{}: entry {} is corrupt or missing",
                self.dir.display(),
                self.seq
            ),
        ))
    }

    /// Opens the segment holding `self.seq` and skips to it. A sequence in
    /// a gap (entries cut at open in an earlier segment) moves to the next
    /// segment's first entry, saying how many were lost.
    fn open_segment(&mut self) -> io::Result<bool> {
        let files = segment_files(&self.dir)?;
        let Some(i) = files
            .iter()
            .rposition(|(first, _)| *first <= self.seq)
            .or_else(|| {
                // Before the first segment: only after a cut segment.
                (!files.is_empty()).then_some(0)
            })
        else {
            return Ok(false);
        };
        let (first, path) = &files[i];
        if *first > self.seq {
            tracing::warn!(
                from = self.seq,
                to = first,
                "Log: entries cut at open are skipped."
            );
            self.seq = *first;
        }
        let f = File::open(path).map_err(|e| io_err(path, e))?;
        let mut r = BufReader::with_capacity(256 * 1024, f);
        let mut at = *first;
        while at < self.seq {
            let mut head = [0u8; HEAD];
            if r.read_exact(&mut head).is_err() {
                break;
            }
            let len = u32::from_le_bytes(head[..4].try_into().expect("4 bytes"));
            r.seek_relative(len as i64)?;
            at += 1;
        }
        if at < self.seq {
            // This segment ends before `seq`: the rest was cut.
            match files.get(i + 1) {
                Some((next, _)) => {
                    tracing::warn!(
                        from = self.seq,
                        to = next,
                        "Log: entries cut at open are skipped."
                    );
                    self.seq = *next;
                    return self.open_segment();
                }
                None => return Ok(false),
            }
        }
        self.file = Some(r);
        Ok(true)
    }
}

#[cfg(test)]
mod tests;

/// Milliseconds since the Unix epoch (an entry's time).
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
