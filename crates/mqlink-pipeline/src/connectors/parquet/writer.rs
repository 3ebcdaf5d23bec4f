//! The writer thread: open files per directory, rolled by rows, bytes and
//! age. Files are committed together, between jobs: each is closed and
//! fsynced under its temporary name (a file full in the middle of a job is
//! closed then, "sealed"), one line in the manifest ([`super::commits`])
//! names them all with the log positions of every job handed in so far,
//! then all are renamed and their directories fsynced. A job's
//! confirmation completes once every file holding its rows is committed.
//! File I/O blocks, so it has a thread of its own.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender};
use std::time::{Duration, Instant};

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression as Codec, ZstdLevel};
use parquet::file::properties::WriterProperties;
use tokio::sync::oneshot;

use super::commits::{sync_dirs, Manifest, Pair};
use super::Compression;
use crate::sink::written::Marks;
use crate::sink::RecordFault;

/// Files open at once at most: a new directory beyond it commits the
/// oldest file first (each open file buffers a row group in memory).
const MAX_OPEN: usize = 64;
/// A row group is written out once its encoded size reaches this: the
/// memory an open file holds.
const ROW_GROUP_BYTES: usize = 16 << 20;
/// Written jobs the sink runner lets wait for their confirmation.
pub const MAX_UNCONFIRMED_JOBS: usize = 4096;
/// Every open file is committed once this many jobs wait for commits:
/// the runner holds each job's records in memory until it is confirmed
/// and writes no more once `MAX_UNCONFIRMED_JOBS` wait, so files are
/// committed before that, never left to wait for their age under load.
const MAX_WAITING_JOBS: usize = MAX_UNCONFIRMED_JOBS / 2;
/// … or once the records they hold came in this many bytes.
const MAX_HELD_BYTES: usize = 256 << 20;

pub struct Options {
    pub root: PathBuf,
    /// The sink's name: its files' prefix.
    pub name: String,
    pub schema: SchemaRef,
    pub max_rows: u64,
    pub max_bytes: u64,
    pub rollover: Duration,
    pub compression: Compression,
}

type Done = oneshot::Sender<Result<Vec<RecordFault>, String>>;

enum Cmd {
    Rows {
        batches: Vec<(PathBuf, RecordBatch)>,
        faults: Vec<RecordFault>,
        /// The bytes of the records (held in memory until the commit).
        bytes: usize,
        /// The job's log positions (the highest per log).
        positions: Marks,
        done: Done,
    },
    CommitAll(oneshot::Sender<()>),
}

/// The sink's side: a bounded channel to the thread.
pub struct Handle {
    tx: SyncSender<Cmd>,
}

impl Handle {
    /// Creates the directory, finishes the commit a crash cut, deletes
    /// the temporary files this sink left and starts the thread; returns
    /// the positions whose rows are all in committed files.
    pub fn start(o: Options) -> io::Result<(Handle, Marks)> {
        std::fs::create_dir_all(&o.root)?;
        let manifest = Manifest::new(&o.root, &o.name);
        let committed = manifest.recover()?;
        let removed = remove_leftovers(&o.root, &o.name)?;
        if removed > 0 {
            tracing::warn!(path = %o.root.display(), files = removed, "Deleted temporary files of a run that did not finish (their records were never confirmed and come again).");
        }
        let (tx, rx) = sync_channel(4);
        let props = WriterProperties::builder()
            .set_compression(match o.compression {
                Compression::Zstd => Codec::ZSTD(ZstdLevel::default()),
                Compression::Snappy => Codec::SNAPPY,
                Compression::None => Codec::UNCOMPRESSED,
            })
            .set_max_row_group_bytes(Some(ROW_GROUP_BYTES))
            .build();
        let w = Writer {
            o,
            props,
            open: Vec::new(),
            sealed: Vec::new(),
            manifest,
            handed: committed.clone(),
            waiters: HashMap::new(),
            held: 0,
            next_job: 0,
            seq: 0,
        };
        std::thread::Builder::new()
            .name("parquet-writer".into())
            .spawn(move || w.run(rx))?;
        Ok((Handle { tx }, committed))
    }

    /// Hands rows to the thread; the receiver completes when they are in
    /// committed files (with `faults`, the records that are not).
    pub fn send(
        &self,
        batches: Vec<(PathBuf, RecordBatch)>,
        faults: Vec<RecordFault>,
        bytes: usize,
        positions: Marks,
    ) -> Result<oneshot::Receiver<Result<Vec<RecordFault>, String>>, String> {
        let (done, rx) = oneshot::channel();
        self.tx
            .send(Cmd::Rows {
                batches,
                faults,
                bytes,
                positions,
                done,
            })
            .map_err(|_| "the Parquet writer stopped after an error".to_string())?;
        Ok(rx)
    }

    /// Commits every open file now (the input ended).
    pub fn commit_all(&self) -> Result<oneshot::Receiver<()>, String> {
        let (done, rx) = oneshot::channel();
        self.tx
            .send(Cmd::CommitAll(done))
            .map_err(|_| "the Parquet writer stopped".to_string())?;
        Ok(rx)
    }
}

struct Writer {
    o: Options,
    props: WriterProperties,
    open: Vec<Open>,
    /// Closed and fsynced, renamed at the next commit.
    sealed: Vec<Sealed>,
    manifest: Manifest,
    /// The positions of every job handed in whole: in committed files
    /// once the open and sealed ones are.
    handed: Marks,
    waiters: HashMap<u64, Waiter>,
    /// The bytes of the waiting jobs' records.
    held: usize,
    next_job: u64,
    seq: u64,
}

/// A file being written.
struct Open {
    /// Its directory below the root.
    dir: PathBuf,
    /// `.<stem>.parquet.inprogress` in `dir`; committed as `<stem>.parquet`.
    stem: String,
    w: ArrowWriter<File>,
    rows: u64,
    deadline: Instant,
    jobs: Vec<u64>,
}

/// A file closed and fsynced under its temporary name.
struct Sealed {
    pair: Pair,
    jobs: Vec<u64>,
}

/// A job waiting for its files.
struct Waiter {
    files: usize,
    bytes: usize,
    faults: Vec<RecordFault>,
    done: Done,
}

impl Writer {
    fn run(mut self, rx: Receiver<Cmd>) {
        loop {
            let next = self.open.iter().map(|f| f.deadline).min();
            let cmd = match next {
                Some(d) => match rx.recv_timeout(d.saturating_duration_since(Instant::now())) {
                    Ok(c) => Some(c),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => break,
                },
                None => match rx.recv() {
                    Ok(c) => Some(c),
                    Err(_) => break,
                },
            };
            let r = match cmd {
                Some(Cmd::Rows {
                    batches,
                    faults,
                    bytes,
                    positions,
                    done,
                }) => self.rows(batches, faults, bytes, done).and_then(|()| {
                    for (log, seq) in positions {
                        let s = self.handed.entry(log).or_insert(seq);
                        *s = (*s).max(seq);
                    }
                    let full = !self.sealed.is_empty()
                        || self.waiters.len() >= MAX_WAITING_JOBS
                        || self.held >= MAX_HELD_BYTES;
                    match full {
                        true => self.commit_all(),
                        false => Ok(()),
                    }
                }),
                Some(Cmd::CommitAll(done)) => {
                    let r = self.commit_all();
                    let _ = done.send(());
                    r
                }
                None => {
                    let now = Instant::now();
                    match self.open.iter().any(|f| f.deadline <= now) {
                        true => self.commit_all(),
                        false => Ok(()),
                    }
                }
            };
            if let Err(e) = r {
                tracing::error!(path = %self.o.root.display(), error = %e, "Parquet file not written; nothing in the open files is confirmed.");
                for (_, w) in self.waiters.drain() {
                    let _ = w.done.send(Err(e.clone()));
                }
                break;
            }
        }
        self.abandon();
    }

    fn rows(
        &mut self,
        batches: Vec<(PathBuf, RecordBatch)>,
        faults: Vec<RecordFault>,
        bytes: usize,
        done: Done,
    ) -> Result<(), String> {
        let id = self.next_job;
        self.next_job += 1;
        self.held += bytes;
        // One count for this call itself: a file committed midway (rolled
        // by rows) must not complete the job before all its rows are in.
        self.waiters.insert(
            id,
            Waiter {
                files: 1,
                bytes,
                faults,
                done,
            },
        );
        for (dir, batch) in batches {
            let mut at = 0;
            while at < batch.num_rows() {
                let i = self.file_for(&dir)?;
                let f = &mut self.open[i];
                let take = ((self.o.max_rows - f.rows) as usize).min(batch.num_rows() - at);
                f.w.write(&batch.slice(at, take))
                    .map_err(|e| format!("{}: {e}", self.o.root.join(&f.dir).display()))?;
                f.rows += take as u64;
                at += take;
                if !f.jobs.contains(&id) {
                    f.jobs.push(id);
                    self.waiters
                        .get_mut(&id)
                        .expect("counted by this call")
                        .files += 1;
                }
                let bytes = (f.w.bytes_written() + f.w.in_progress_size()) as u64;
                if f.rows >= self.o.max_rows || bytes >= self.o.max_bytes {
                    self.seal(i)?;
                }
            }
        }
        let w = self.waiters.get_mut(&id).expect("counted by this call");
        w.files -= 1;
        if w.files == 0 {
            self.complete(id);
        }
        Ok(())
    }

    /// The open file of `dir`, opened (and its directory made) if needed.
    fn file_for(&mut self, dir: &Path) -> Result<usize, String> {
        if let Some(i) = self.open.iter().position(|f| f.dir == dir) {
            return Ok(i);
        }
        if self.open.len() >= MAX_OPEN {
            let oldest = (0..self.open.len())
                .min_by_key(|&i| self.open[i].deadline)
                .expect("not empty");
            self.seal(oldest)?;
        }
        let full = self.o.root.join(dir);
        let stem = self.stem();
        let tmp = full.join(format!(".{stem}.parquet.inprogress"));
        let err = |e: &dyn std::fmt::Display| format!("{}: {e}", tmp.display());
        std::fs::create_dir_all(&full).map_err(|e| err(&e))?;
        let file = File::create(&tmp).map_err(|e| err(&e))?;
        let w = ArrowWriter::try_new(file, self.o.schema.clone(), Some(self.props.clone()))
            .map_err(|e| err(&e))?;
        self.open.push(Open {
            dir: dir.to_path_buf(),
            stem,
            w,
            rows: 0,
            deadline: Instant::now() + self.o.rollover,
            jobs: Vec::new(),
        });
        Ok(self.open.len() - 1)
    }

    /// `NAME-<epoch ms>-<seq>-<random>`: unique across restarts, sorted by
    /// creation time.
    fn stem(&mut self) -> String {
        self.seq += 1;
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        format!(
            "{}-{ms}-{:06}-{:08x}",
            self.o.name,
            self.seq,
            fastrand::u32(..)
        )
    }

    /// Footer and fsync under the temporary name: renamed at the next
    /// commit.
    fn seal(&mut self, i: usize) -> Result<(), String> {
        let f = self.open.swap_remove(i);
        let pair = Pair {
            dir: f.dir,
            stem: f.stem,
        };
        let tmp = pair.tmp(&self.o.root);
        let err = |e: &dyn std::fmt::Display| format!("{}: {e}", tmp.display());
        let file = f.w.into_inner().map_err(|e| err(&e))?;
        file.sync_all().map_err(|e| err(&e))?;
        self.sealed.push(Sealed { pair, jobs: f.jobs });
        Ok(())
    }

    /// Commits every open and sealed file: sealed, named in the manifest
    /// (fsynced), renamed, directories fsynced; then the jobs whose last
    /// file this was are confirmed.
    fn commit_all(&mut self) -> Result<(), String> {
        while !self.open.is_empty() {
            self.seal(self.open.len() - 1)?;
        }
        if self.sealed.is_empty() {
            // Nothing to rename: the positions go with the next commit.
            return Ok(());
        }
        let sealed = std::mem::take(&mut self.sealed);
        let pairs: Vec<Pair> = sealed.iter().map(|s| s.pair.clone()).collect();
        self.manifest
            .append(&self.handed, &pairs)
            .map_err(|e| e.to_string())?;
        let root = &self.o.root;
        for p in &pairs {
            let tmp = p.tmp(root);
            std::fs::rename(&tmp, p.fin(root)).map_err(|e| format!("{}: {e}", tmp.display()))?;
            tracing::debug!(file = %p.fin(root).display(), "Parquet file committed.");
        }
        sync_dirs(pairs.iter().map(|p| root.join(&p.dir)).collect()).map_err(|e| e.to_string())?;
        if let Err(e) = self.manifest.compact_if_big(&self.handed) {
            tracing::warn!(path = %root.display(), error = %e, "Could not compact the commit manifest; it keeps growing until the next try.");
        }
        for id in sealed.into_iter().flat_map(|s| s.jobs) {
            let w = self
                .waiters
                .get_mut(&id)
                .expect("a job waits for its files");
            w.files -= 1;
            if w.files == 0 {
                self.complete(id);
            }
        }
        Ok(())
    }

    /// Every file holding the job's rows is committed.
    fn complete(&mut self, id: u64) {
        let w = self.waiters.remove(&id).expect("a waiting job");
        self.held -= w.bytes;
        let _ = w.done.send(Ok(w.faults));
    }

    /// The sink stopped (or failed): open files are never committed.
    fn abandon(&mut self) {
        for f in self.open.drain(..) {
            let tmp = self
                .o
                .root
                .join(&f.dir)
                .join(format!(".{}.parquet.inprogress", f.stem));
            drop(f.w);
            let _ = std::fs::remove_file(tmp);
        }
        for f in self.sealed.drain(..) {
            let _ = std::fs::remove_file(f.pair.tmp(&self.o.root));
        }
    }
}

/// Deletes `.NAME-….parquet.inprogress` files below `root` (symbolic links
/// are not followed); returns how many.
fn remove_leftovers(root: &Path, name: &str) -> io::Result<usize> {
    let prefix = format!(".{name}-");
    let mut removed = 0;
    let mut dirs = vec![root.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d)? {
            let e = e?;
            let ty = e.file_type()?;
            let n = e.file_name();
            let n = n.to_string_lossy();
            if ty.is_dir() {
                dirs.push(e.path());
            } else if ty.is_file() && n.starts_with(&prefix) && n.ends_with(".parquet.inprogress") {
                std::fs::remove_file(e.path())?;
                removed += 1;
            }
        }
    }
    Ok(removed)
}
