//! JSON lines: one object per record, the record's fields at top level.
//! A batch is confirmed once its lines were written (in the kernel, so a
//! crash of mqlink keeps them); with `fsync` also once they are on disk.

use std::io::Write;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use mqlink::format::Value;
use tokio::sync::mpsc;

use super::{backoff, next_batches};
use crate::pipeline::batch::{Batch, Item};
use crate::pipeline::config::FileSinkConfig;
use crate::pipeline::status::{Component, State};

pub async fn run(
    path: String,
    cfg: FileSinkConfig,
    comp: Arc<Component>,
    mut rx: mpsc::Receiver<Arc<Batch>>,
) -> Result<(), String> {
    let file_err = |e: std::io::Error| format!("{path}.path: {}: {e}", cfg.path.display());
    if let Some(dir) = cfg.path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(file_err)?;
    }
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&cfg.path)
        .map_err(file_err)?;
    comp.set_state(State::Running);
    let mut buf = Vec::with_capacity(1 << 20);
    loop {
        let batches = next_batches(&mut rx, 20_000).await;
        if batches.is_empty() {
            return Ok(());
        }
        buf.clear();
        let mut n = 0;
        for b in &batches {
            comp.records.fetch_add(b.len() as u64, Relaxed);
            n += b.len() as u64;
            for item in &b.items {
                line(item, &mut buf);
            }
        }
        let mut attempt = 0;
        // A failed write is tried again (a full disk may be emptied); the
        // batch stays unacknowledged meanwhile. A partly written batch can
        // appear twice: at-least-once.
        // The write (and fsync) may block for a while: off the async workers.
        while let Err(e) = tokio::task::block_in_place(|| {
            file.write_all(&buf)
                .and_then(|_| if cfg.fsync { file.sync_data() } else { Ok(()) })
        }) {
            comp.errors.fetch_add(1, Relaxed);
            comp.set_error(file_err(e));
            tracing::error!(component = %path, error = %comp.last_error().unwrap_or_default(), "Write failed; retrying.");
            attempt += 1;
            tokio::time::sleep(backoff(attempt)).await;
        }
        comp.confirmed.fetch_add(n, Relaxed);
        for b in batches {
            b.confirm();
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
