//! What a sink has written, kept beside its output, so that the records a
//! crash makes the source read again are not written twice.
//!
//! A record read from the source's local buffer has a
//! [`LogPosition`](mqlink::source::LogPosition)
//! (the log's identity and the entry's sequence), the same when a restart
//! reads it again and never another record's. Records reach a sink in the
//! log's order, so a sink needs only the last position it wrote per log:
//! a record read again (`dup`) at or before it is already in the output.
//!
//! The positions are kept in a small file beside the output, one line per
//! job written *before* the job's bytes: the output file (device, inode),
//! its length before and after the job, and the positions before and after
//! it. Both writes survive a crash of mqlink in that order (the kernel has
//! them; with `fsync` the line is synced first). At open the last line
//! tells what happened to the last job:
//!
//! - the output (same file) reaches the line's end: the job was written,
//!   its positions hold;
//! - it is shorter: the job was cut by the crash (never confirmed); what
//!   it wrote is cut back to the line's start and the positions before it
//!   hold;
//! - the output is another file (rotated while mqlink was down): the
//!   positions before the job hold (the job may be in both files: at least
//!   once, never lost).
//!
//! Records without a position (no local buffer, QoS 0, rows a stage made)
//! are written at least once.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::batch::Item;

/// The positions file is rewritten with its last line past this size.
const COMPACT_AT: u64 = 1 << 20;

/// The last sequence written per log.
pub type Marks = BTreeMap<u64, u64>;

/// One job's line in the positions file.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Line {
    file: (u64, u64),
    start: u64,
    end: u64,
    before: Marks,
    after: Marks,
}

/// The positions of one output, and its file.
#[derive(Debug)]
pub struct Written {
    path: PathBuf,
    file: Option<File>,
    bytes: u64,
    marks: Marks,
    /// The positions once the job being written is confirmed.
    pending: Option<Marks>,
    fsync: bool,
}

/// What [`Written::recover`] found about the output's last job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recovered {
    /// Nothing to do.
    Kept,
    /// The last job was cut short: cut the output back to this length.
    CutTo(u64),
}

impl Written {
    /// The positions file of `output`: `.<name>.written` beside it.
    pub fn beside(output: &Path, fsync: bool) -> Written {
        let name = output.file_name().map_or_else(
            || ".written".into(),
            |n| format!(".{}.written", n.to_string_lossy()),
        );
        Written {
            path: output.with_file_name(name),
            file: None,
            bytes: 0,
            marks: Marks::new(),
            pending: None,
            fsync,
        }
    }

    /// Reads the positions file, given the output file as it is now
    /// (device, inode, length): the positions that hold, and whether the
    /// output must be cut back. A missing or unreadable file holds none.
    pub fn recover(&mut self, output: (u64, u64), len: u64) -> Recovered {
        let text = std::fs::read_to_string(&self.path).unwrap_or_default();
        // A line cut by a crash has no newline: the job's bytes did not
        // follow it.
        let whole = text.rfind('\n').map_or("", |i| &text[..=i]);
        let Some(line) = whole.lines().rev().find_map(parse) else {
            self.marks.clear();
            return Recovered::Kept;
        };
        if line.file != output {
            self.marks = line.before;
            Recovered::Kept
        } else if len >= line.end {
            self.marks = line.after;
            Recovered::Kept
        } else {
            self.marks = line.before;
            if len > line.start {
                Recovered::CutTo(line.start)
            } else {
                Recovered::Kept
            }
        }
    }

    /// Whether `item` was written before a restart (its source reads it
    /// again: skip it, it is in the output).
    pub fn has(&self, item: &Item) -> bool {
        holds(&self.marks, item)
    }

    /// The positions once `items` (the next job) are written; `begin`
    /// says them.
    pub fn stage<'a>(&mut self, items: impl Iterator<Item = &'a Item>) {
        let mut after = self.marks.clone();
        advance(&mut after, items);
        self.pending = (after != self.marks).then_some(after);
    }

    /// Says, before the staged job's bytes are written, that they go into
    /// `output` from `start` to `end`. A job with no new position writes
    /// nothing.
    pub fn begin(&mut self, output: (u64, u64), start: u64, end: u64) -> io::Result<()> {
        let Some(after) = self.pending.clone() else {
            return Ok(());
        };
        let line = Line {
            file: output,
            start,
            end,
            before: self.marks.clone(),
            after,
        };
        let text = format_line(&line);
        let fsync = self.fsync;
        let f = self.open()?;
        f.write_all(text.as_bytes())?;
        if fsync {
            f.sync_data()?;
        }
        self.bytes += text.len() as u64;
        Ok(())
    }

    /// The job's bytes are written: its positions hold.
    pub fn confirm(&mut self, output: (u64, u64), len: u64) {
        let Some(after) = self.pending.take() else {
            return;
        };
        self.marks = after;
        if self.bytes > COMPACT_AT {
            if let Err(e) = self.compact(output, len) {
                tracing::warn!(path = %self.path.display(), error = %e, "Could not compact the written-positions file; it keeps growing until the next try.");
            }
        }
    }

    /// The file is reopened at the next job (its directory may be gone).
    pub fn reopen(&mut self) {
        self.file = None;
    }

    fn open(&mut self) -> io::Result<&mut File> {
        if self.file.is_none() {
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)
                .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", self.path.display())))?;
            self.bytes = f.metadata()?.len();
            self.file = Some(f);
        }
        Ok(self.file.as_mut().expect("opened above"))
    }

    /// Rewrites the file as one line (by rename: a crash keeps either).
    fn compact(&mut self, output: (u64, u64), len: u64) -> io::Result<()> {
        let line = Line {
            file: output,
            start: len,
            end: len,
            before: self.marks.clone(),
            after: self.marks.clone(),
        };
        let tmp = self.path.with_extension("written.tmp");
        let mut f = File::create(&tmp)?;
        let text = format_line(&line);
        f.write_all(text.as_bytes())?;
        f.sync_data()?;
        std::fs::rename(&tmp, &self.path)?;
        self.file = None;
        self.bytes = text.len() as u64;
        Ok(())
    }
}

/// Whether `item` is read again (`dup`) at or before `marks`: it is in
/// the output already.
pub fn holds(marks: &Marks, item: &Item) -> bool {
    match item.origin {
        Some(o) if o.dup => o
            .position
            .is_some_and(|p| marks.get(&p.log).is_some_and(|&s| p.seq <= s)),
        _ => false,
    }
}

/// `marks` with the positions of `items` (the highest per log).
pub fn advance<'a>(marks: &mut Marks, items: impl Iterator<Item = &'a Item>) {
    for p in items.filter_map(|i| i.origin.and_then(|o| o.position)) {
        let s = marks.entry(p.log).or_insert(p.seq);
        *s = (*s).max(p.seq);
    }
}

/// Marks as `log:seq` (log in hex) joined by commas, `-` when none.
pub fn format_marks(m: &Marks) -> String {
    if m.is_empty() {
        return "-".to_owned();
    }
    m.iter()
        .map(|(log, seq)| format!("{log:016x}:{seq}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// The marks [`format_marks`] wrote; `None` when torn or not marks.
pub fn parse_marks(m: &str) -> Option<Marks> {
    if m == "-" {
        return Some(Marks::new());
    }
    m.split(',')
        .map(|p| {
            let (log, seq) = p.split_once(':')?;
            Some((u64::from_str_radix(log, 16).ok()?, seq.parse().ok()?))
        })
        .collect()
}

/// `dev ino start end before after`.
fn format_line(l: &Line) -> String {
    let marks = format_marks;
    format!(
        "{} {} {} {} {} {}\n",
        l.file.0,
        l.file.1,
        l.start,
        l.end,
        marks(&l.before),
        marks(&l.after)
    )
}

fn parse(l: &str) -> Option<Line> {
    let mut f = l.split(' ');
    let mut num = || f.next()?.parse::<u64>().ok();
    let (dev, ino, start, end) = (num()?, num()?, num()?, num()?);
    let mut marks = || parse_marks(f.next()?);
    let (before, after) = (marks()?, marks()?);
    Some(Line {
        file: (dev, ino),
        start,
        end,
        before,
        after,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::Origin;
    use mqlink::format::Value;
    use mqlink::source::LogPosition;

    fn item(log: u64, seq: u64, dup: bool) -> Item {
        Item {
            topic: None,
            payload: Default::default(),
            value: Value::Null,
            origin: Some(Origin {
                client: 0,
                packet_id: 1,
                dup,
                position: Some(LogPosition { log, seq }),
            }),
        }
    }

    /// Writes a job of `seqs` of log 7 at `start..end` of file (1, 2).
    fn job(w: &mut Written, seqs: std::ops::Range<u64>, start: u64, end: u64, ok: bool) {
        let items: Vec<Item> = seqs.map(|s| item(7, s, false)).collect();
        w.stage(items.iter());
        w.begin((1, 2), start, end).unwrap();
        if ok {
            w.confirm((1, 2), end);
        }
    }

    fn reopened(dir: &Path, output: (u64, u64), len: u64) -> (Written, Recovered) {
        let mut w = Written::beside(&dir.join("out.jsonl"), false);
        let r = w.recover(output, len);
        (w, r)
    }

    #[test]
    fn a_written_job_is_skipped_when_read_again_and_only_then() {
        let dir = testkit::TempDir::new().unwrap();
        let mut w = Written::beside(&dir.path().join("out.jsonl"), false);
        job(&mut w, 0..10, 0, 100, true);
        job(&mut w, 10..20, 100, 200, true);
        let (w, r) = reopened(dir.path(), (1, 2), 200);
        assert_eq!(r, Recovered::Kept);
        assert!(w.has(&item(7, 19, true)));
        assert!(w.has(&item(7, 0, true)));
        // New, not read again, or of another log: written.
        assert!(!w.has(&item(7, 20, true)));
        assert!(!w.has(&item(7, 5, false)));
        assert!(!w.has(&item(8, 5, true)));
    }

    #[test]
    fn a_job_the_crash_cut_is_cut_back_and_written_again() {
        let dir = testkit::TempDir::new().unwrap();
        let mut w = Written::beside(&dir.path().join("out.jsonl"), false);
        job(&mut w, 0..10, 0, 100, true);
        job(&mut w, 10..20, 100, 200, false);
        let (w, r) = reopened(dir.path(), (1, 2), 150);
        assert_eq!(r, Recovered::CutTo(100));
        assert!(w.has(&item(7, 9, true)));
        assert!(!w.has(&item(7, 10, true)));
        // Nothing of it reached the file: nothing to cut.
        let (_, r) = reopened(dir.path(), (1, 2), 100);
        assert_eq!(r, Recovered::Kept);
    }

    #[test]
    fn a_failed_then_retried_job_counts_only_once_written() {
        let dir = testkit::TempDir::new().unwrap();
        let mut w = Written::beside(&dir.path().join("out.jsonl"), false);
        job(&mut w, 0..10, 0, 100, true);
        job(&mut w, 10..20, 100, 200, false);
        job(&mut w, 10..20, 100, 200, false);
        let (w, r) = reopened(dir.path(), (1, 2), 100);
        assert_eq!(r, Recovered::Kept);
        assert!(!w.has(&item(7, 10, true)));
    }

    #[test]
    fn a_rotated_file_or_a_torn_line_never_skips_what_may_be_missing() {
        let dir = testkit::TempDir::new().unwrap();
        let mut w = Written::beside(&dir.path().join("out.jsonl"), false);
        job(&mut w, 0..10, 0, 100, true);
        job(&mut w, 10..20, 100, 200, true);
        // Another file at the path: the last job may be in the old one only.
        let (w2, r) = reopened(dir.path(), (1, 3), 0);
        assert_eq!(r, Recovered::Kept);
        assert!(w2.has(&item(7, 9, true)) && !w2.has(&item(7, 10, true)));
        // A line cut short is no line.
        let side = dir.path().join(".out.jsonl.written");
        let mut text = std::fs::read_to_string(&side).unwrap();
        text.push_str("1 2 200 300 0000000000000007:19 00000");
        std::fs::write(&side, text).unwrap();
        let (w3, _) = reopened(dir.path(), (1, 2), 200);
        assert!(w3.has(&item(7, 19, true)) && !w3.has(&item(7, 20, true)));
        drop(w);
    }

    #[test]
    fn the_file_is_compacted_to_one_line() {
        let dir = testkit::TempDir::new().unwrap();
        let mut w = Written::beside(&dir.path().join("out.jsonl"), false);
        let mut len = 0;
        for i in 0..20_000u64 {
            job(&mut w, i * 10..i * 10 + 10, len, len + 100, true);
            len += 100;
        }
        let side = std::fs::metadata(dir.path().join(".out.jsonl.written")).unwrap();
        assert!(side.len() <= COMPACT_AT + 200, "{}", side.len());
        let (w, r) = reopened(dir.path(), (1, 2), len);
        assert_eq!(r, Recovered::Kept);
        assert!(w.has(&item(7, 199_999, true)) && !w.has(&item(7, 200_000, true)));
    }
}
