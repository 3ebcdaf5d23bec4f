//! JSON lines: one object per record, the record's fields at top level.
//! A job is durable once its lines were written (in the kernel, so a crash
//! of mqlink keeps them); with `fsync` also once they are on disk.
//!
//! The sink tells the truth about the file, as `tail -F` and log shippers
//! do. After each write it checks that the lines are in a file that still
//! has a name: an open file that was deleted (its directory removed) is
//! dropped and the job written again, at the path, once the directory
//! exists again (a restart creates it); a file renamed away (rotated) keeps
//! the job just written, and the next job goes to a new file at the path.
//! A failed write (a full disk) is cut back to the last confirmed length
//! before the runner retries it, and a partial last line found at open (a
//! write cut by a crash, never confirmed) is cut off: the file stays JSON
//! lines with each record once.
//!
//! Through a crash (SIGKILL) too, for records that come through the
//! source's local buffer: the sink keeps the last buffer position it wrote
//! beside the file (`.<name>.written`, [`crate::sink::written`]) and skips
//! what the buffer reads again after the restart; a job the crash cut is
//! cut back at open. `buffer.mode = "auto"` turns the buffer on for a
//! source feeding a file sink (QoS 1/2, external broker, any protocol);
//! without it (`off`, QoS 0, the embedded broker) a crash between the write
//! and the broker's acknowledgement writes those records again: at least
//! once.

use std::fs::File;
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use mqlink::format::Value;
use serde::Deserialize;
use serde_json::Value as Json;

use super::{
    fields_of, Connector, Key, KeyType, Reaches, SinkSpec, SinkSpecRef, SinkStart, SinkType,
};
use crate::batch::Item;
use crate::sink::written::{Recovered, Written};
use crate::sink::{confirmed, Confirmation, Job, Sink, WriteError};
use crate::spec::{typed, ConfigError, Context};

pub const CONNECTOR: Connector = Connector {
    name: "file",
    source: None,
    sink: Some(SinkType {
        // Arroyo's name.
        aliases: &["filesystem"],
        status_name: "file",
        keys: &[Key::text("path"), Key::of("fsync", KeyType::Bool)],
        fields: fields_of::<FileSinkConfig>,
        metrics: &[],
        parse,
    }),
    reaches: Reaches::Nothing,
};

#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct FileSinkConfig {
    /// The file (required): one JSON object per line, appended; parent
    /// directories are created at start. Renamed away (rotated), a new
    /// file is made at the path; its directory deleted, writes wait until
    /// it exists again.
    pub path: PathBuf,
    /// fsync after each batch, for power loss (a write() already survives
    /// a crash of mqlink) [default: false].
    #[serde(default)]
    pub fsync: bool,
}

pub fn parse(ctx: &Context, body: Json) -> Result<SinkSpecRef, ConfigError> {
    let f: FileSinkConfig = typed(ctx.path, body)?;
    Ok(std::sync::Arc::new(f))
}

impl SinkSpec for FileSinkConfig {
    fn connector(&self) -> &'static Connector {
        &CONNECTOR
    }
    /// Records read from the buffer are written once through a crash.
    fn wants_local_buffer(&self) -> bool {
        true
    }
    fn spawn(&self, s: SinkStart) -> tokio::task::JoinHandle<Result<(), String>> {
        let sink = FileSink::new(s.path.clone(), self.clone());
        s.run(sink)
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

pub struct FileSink {
    cfg: FileSinkConfig,
    path: String,
    file: Option<OpenFile>,
    buf: Vec<u8>,
    /// In a full-disk episode (logged once when it starts and ends).
    full: bool,
    /// The buffer positions in the file.
    written: Written,
}

/// The file the sink writes, as it was when opened.
struct OpenFile {
    file: File,
    /// Device and inode: whether the path still names this file.
    id: (u64, u64),
    /// Its length after the last confirmed write.
    len: u64,
}

impl FileSink {
    pub fn new(path: String, cfg: FileSinkConfig) -> FileSink {
        FileSink {
            written: Written::beside(&cfg.path, cfg.fsync),
            cfg,
            path,
            file: None,
            buf: Vec::with_capacity(1 << 20),
            full: false,
        }
    }

    fn file_err(&self, e: std::io::Error) -> String {
        format!("{}.path: {}: {e}", self.path, self.cfg.path.display())
    }

    /// Writes `self.buf` to the file, then checks the file still has its
    /// name; an error is retried by the runner, nothing confirmed.
    fn write_buf(&mut self) -> Result<(), String> {
        if self.file.is_none() {
            if let Some(dir) = parent(&self.cfg.path).filter(|d| !d.is_dir()) {
                return Err(format!(
                    "{}.path: the directory {} is gone; writes wait until it exists again (a restart creates it)",
                    self.path,
                    dir.display()
                ));
            }
            self.file = Some(open_file(&self.cfg.path).map_err(|e| self.file_err(e))?);
            self.written.reopen();
            tracing::info!(component = %self.path, path = %self.cfg.path.display(), "Writing to a new file at the path.");
        }
        let o = self.file.as_mut().expect("opened above");
        let fsync = self.cfg.fsync;
        let (written, buf) = (&mut self.written, &self.buf);
        let written = cut_to(o)
            .and_then(|_| written.begin(o.id, o.len, o.len + buf.len() as u64))
            .and_then(|_| o.file.write_all(buf))
            .and_then(|_| if fsync { o.file.sync_data() } else { Ok(()) })
            .and_then(|_| o.file.metadata());
        let meta = match written {
            Ok(m) => m,
            Err(e) => {
                // What was written of the job is not confirmed: cut it off
                // (if this fails too, before the next write).
                let _ = cut_to(o);
                self.disk_full(&e);
                return Err(self.file_err(e));
            }
        };
        if meta.nlink() == 0 {
            self.file = None;
            return Err(format!(
                "{}.path: {} was deleted while open (with its directory?); the batch is written again to a new file",
                self.path,
                self.cfg.path.display()
            ));
        }
        o.len = meta.len();
        self.written.confirm(o.id, o.len);
        let renamed =
            std::fs::metadata(&self.cfg.path).map_or(true, |m| (m.dev(), m.ino()) != o.id);
        if renamed {
            // The lines are in the renamed file; the next go to the path.
            tracing::info!(component = %self.path, path = %self.cfg.path.display(), "The file was renamed away (rotated); a new one is made at the path.");
            self.file = None;
        }
        if self.full {
            self.full = false;
            tracing::warn!(component = %self.path, path = %self.cfg.path.display(), "There is room on the disk again; writing.");
        }
        Ok(())
    }

    /// A full disk is said once per episode at ERROR (shown even with
    /// `--quiet`); the runner's retries say the rest at WARN.
    fn disk_full(&mut self, e: &std::io::Error) {
        let full = matches!(e.kind(), ErrorKind::StorageFull | ErrorKind::QuotaExceeded);
        if full && !self.full {
            tracing::error!(component = %self.path, path = %self.cfg.path.display(), error = %e, "Disk full: nothing is confirmed until there is room; the batch is written again.");
        }
        self.full = full;
    }
}

fn parent(p: &Path) -> Option<&Path> {
    p.parent().filter(|d| !d.as_os_str().is_empty())
}

/// Opens (creating) the file for appending and cuts off a partial last
/// line: a write cut short by a crash, never confirmed.
fn open_file(path: &Path) -> std::io::Result<OpenFile> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .open(path)?;
    let meta = file.metadata()?;
    let len = whole_lines(&file, meta.len())?;
    if len < meta.len() {
        file.set_len(len)?;
        tracing::warn!(path = %path.display(), bytes = meta.len() - len, "Cut off a partial last line (a write cut short, never confirmed).");
    }
    Ok(OpenFile {
        file,
        id: (meta.dev(), meta.ino()),
        len,
    })
}

/// The length of the file's complete lines: up to its last newline.
fn whole_lines(file: &File, len: u64) -> std::io::Result<u64> {
    let mut chunk = vec![0u8; 64 << 10];
    let mut end = len;
    while end > 0 {
        let start = end.saturating_sub(chunk.len() as u64);
        let part = &mut chunk[..(end - start) as usize];
        file.read_exact_at(part, start)?;
        if let Some(i) = part.iter().rposition(|&b| b == b'\n') {
            return Ok(start + i as u64 + 1);
        }
        end = start;
    }
    Ok(0)
}

/// Cuts what a failed write left after the last confirmed length; a file
/// another program truncated (copytruncate rotation) is taken as it is.
fn cut_to(o: &mut OpenFile) -> std::io::Result<()> {
    let len = o.file.metadata()?.len();
    if len > o.len {
        o.file.set_len(o.len)?;
    }
    o.len = o.len.min(len);
    Ok(())
}

impl Sink for FileSink {
    fn max_records(&self) -> usize {
        20_000
    }

    async fn open(&mut self) -> Result<(), WriteError> {
        if let Some(dir) = parent(&self.cfg.path) {
            std::fs::create_dir_all(dir).map_err(|e| WriteError::Fatal(self.file_err(e)))?;
        }
        // A full disk may be emptied; anything else (no permission) is fatal.
        let mut file = open_file(&self.cfg.path).map_err(|e| match e.kind() {
            ErrorKind::StorageFull | ErrorKind::QuotaExceeded => {
                WriteError::Retry(self.file_err(e))
            }
            _ => WriteError::Fatal(self.file_err(e)),
        })?;
        if let Recovered::CutTo(len) = self.written.recover(file.id, file.len) {
            file.file
                .set_len(len)
                .map_err(|e| WriteError::Retry(self.file_err(e)))?;
            tracing::warn!(component = %self.path, path = %self.cfg.path.display(), bytes = file.len - len, "Cut off the lines of a write a crash interrupted (never confirmed; they are written again).");
            file.len = len;
        }
        self.file = Some(file);
        Ok(())
    }

    async fn write(&mut self, job: &Job) -> Result<Confirmation, WriteError> {
        self.buf.clear();
        let mut again = 0;
        for item in job.items() {
            if self.written.has(item) {
                again += 1;
                continue;
            }
            line(item, &mut self.buf);
        }
        if again > 0 {
            tracing::info!(component = %self.path, records = again, "Records read again after a restart are already in the file: not written twice.");
        }
        self.written.stage(job.items());
        if self.buf.is_empty() {
            return Ok(confirmed(Vec::new()));
        }
        // The write (and fsync) may block for a while: off the async workers.
        match tokio::task::block_in_place(|| self.write_buf()) {
            Ok(()) => Ok(confirmed(Vec::new())),
            Err(e) => Err(WriteError::Retry(e)),
        }
    }
}

/// The record as one JSON line (the HTTP sink's body too).
pub(crate) fn line(item: &Item, out: &mut Vec<u8>) {
    match &item.value {
        Value::Bytes(b) => {
            // Raw payloads: the topic beside the base64 payload.
            Value::Row(vec![
                (
                    "topic".into(),
                    Value::Text(
                        item.topic
                            .as_ref()
                            .map(|t| t.to_string())
                            .unwrap_or_default(),
                    ),
                ),
                ("payload".into(), Value::Bytes(b.clone())),
            ])
            .write_json(out)
        }
        v => v.write_json(out),
    }
    out.push(b'\n');
}
