//! JSON lines: one object per record, the record's fields at top level.
//! A job is durable once its lines were written (in the kernel, so a crash
//! of mqlink keeps them); with `fsync` also once they are on disk. A failed
//! write is retried by the runner (a full disk may be emptied); a partly
//! written job can then appear twice: at-least-once.

use std::io::Write;
use std::path::PathBuf;

use mqlink::format::Value;
use serde::Deserialize;
use serde_json::Value as Json;

use crate::batch::Item;
use crate::sink::{confirmed, Confirmation, Job, Sink, WriteError};
use crate::spec::{typed, ConfigError, Context, SinkKind};

#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct FileSinkConfig {
    /// The file (required): one JSON object per line, appended; parent
    /// directories are created.
    pub path: PathBuf,
    /// fsync after each batch, for power loss (a write() already survives
    /// a crash of mqlink) [default: false].
    #[serde(default)]
    pub fsync: bool,
}

pub fn parse(ctx: &Context, body: Json) -> Result<SinkKind, ConfigError> {
    Ok(SinkKind::File(typed(ctx.path, body)?))
}

pub struct FileSink {
    cfg: FileSinkConfig,
    path: String,
    file: Option<std::fs::File>,
    buf: Vec<u8>,
}

impl FileSink {
    pub fn new(path: String, cfg: FileSinkConfig) -> FileSink {
        FileSink {
            cfg,
            path,
            file: None,
            buf: Vec::with_capacity(1 << 20),
        }
    }

    fn file_err(&self, e: std::io::Error) -> String {
        format!("{}.path: {}: {e}", self.path, self.cfg.path.display())
    }
}

impl Sink for FileSink {
    fn max_records(&self) -> usize {
        20_000
    }

    async fn open(&mut self) -> Result<(), WriteError> {
        if let Some(dir) = self.cfg.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| WriteError::Fatal(self.file_err(e)))?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.cfg.path)
            .map_err(|e| WriteError::Fatal(self.file_err(e)))?;
        self.file = Some(file);
        Ok(())
    }

    async fn write(&mut self, job: &Job) -> Result<Confirmation, WriteError> {
        self.buf.clear();
        for item in job.items() {
            line(item, &mut self.buf);
        }
        let Some(file) = self.file.as_mut() else {
            return Err(WriteError::Fatal("the file is not open".into()));
        };
        let (buf, fsync) = (&self.buf, self.cfg.fsync);
        // The write (and fsync) may block for a while: off the async workers.
        let r = tokio::task::block_in_place(|| {
            file.write_all(buf)
                .and_then(|_| if fsync { file.sync_data() } else { Ok(()) })
        });
        match r {
            Ok(()) => Ok(confirmed(Vec::new())),
            Err(e) => Err(WriteError::Retry(self.file_err(e))),
        }
    }
}

fn line(item: &Item, out: &mut Vec<u8>) {
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
