//! Simulated sensors, for demos and benchmarks: records of `device_id`,
//! `seq`, `timestamp`, `temperature` and `humidity` at a steady rate.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use mqlink::format::{ColumnType, Schema, Value};
use serde::Deserialize;
use serde_json::Value as Json;

use super::{
    fields_of, Closing, Connector, Key, KeyType, Reaches, Shape, SourceConfig, SourceSpec,
    SourceStart, SourceType,
};
use crate::batch::Item;
use crate::sink::Outputs;
use crate::spec::{err, hundred, thousand, typed, ConfigError, Context};
use crate::status::{Component, State};

pub const CONNECTOR: Connector = Connector {
    name: "generator",
    source: Some(SourceType {
        aliases: &[],
        status_name: "generator",
        sql_columns: false,
        keys: &[
            Key::of("count", KeyType::Number),
            Key::of("rate", KeyType::Number),
            Key::of("devices", KeyType::Number),
        ],
        fields: fields_of::<GeneratorConfig>,
        metrics: &[],
        parse,
    }),
    sink: None,
    reaches: Reaches::Nothing,
};

/// Records per batch the generator hands to its sinks.
const BATCH: usize = 1000;

/// Simulated sensors: device_id, seq, timestamp, temperature, humidity.
#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct GeneratorConfig {
    /// Records to make [default: 0 = forever].
    #[serde(default)]
    pub count: u64,
    /// Records per second [default: 1000; 0 = as fast as the sinks take them].
    #[serde(default = "thousand")]
    pub rate: u64,
    /// Distinct device ids [default: 100].
    #[serde(default = "hundred")]
    pub devices: u64,
}

pub fn parse(ctx: &Context, body: Json) -> Result<SourceConfig, ConfigError> {
    let g: GeneratorConfig = typed(ctx.path, body)?;
    if g.devices == 0 {
        return Err(err(format!("{}.devices", ctx.path), "must be at least 1"));
    }
    Ok(Arc::new(g))
}

impl SourceSpec for GeneratorConfig {
    fn connector(&self) -> &'static Connector {
        &CONNECTOR
    }
    fn schema(&self) -> Option<Schema> {
        Some(schema())
    }
    fn shape(&self) -> Shape {
        Shape::Made(schema())
    }
    fn generated(&self) -> bool {
        true
    }
    fn run(&self, s: SourceStart) -> Pin<Box<dyn Future<Output = Option<Closing>> + Send>> {
        let cfg = self.clone();
        Box::pin(async move {
            run(cfg, BATCH, s.comp, s.out).await;
            None
        })
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// The columns of every generated record.
pub fn schema() -> Schema {
    Schema::new([
        ("device_id", ColumnType::Text),
        ("seq", ColumnType::BigInt),
        ("timestamp", ColumnType::Timestamp),
        ("temperature", ColumnType::Double),
        ("humidity", ColumnType::Double),
    ])
}

/// Record `seq`: deterministic readings, so runs can be compared.
fn record(names: &[Arc<str>], seq: u64, devices: u64, now_us: i64) -> Value {
    let v = [
        Value::Text(format!("dev-{:04}", seq % devices)),
        Value::BigInt(seq as i64),
        Value::Timestamp(now_us),
        Value::Double(18.0 + ((seq * 7) % 120) as f64 / 10.0),
        Value::Double(35.0 + ((seq * 13) % 300) as f64 / 10.0),
    ];
    Value::Row(names.iter().cloned().zip(v).collect())
}

pub async fn run(cfg: GeneratorConfig, batch_size: usize, comp: Arc<Component>, mut out: Outputs) {
    let names: Vec<Arc<str>> = schema().columns.into_iter().map(|(n, _)| n).collect();
    comp.set_state(State::Running);
    let start = Instant::now();
    let mut seq = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while cfg.count == 0 || seq < cfg.count {
        if out.stopping() {
            break;
        }
        let mut n = batch_size as u64;
        if cfg.rate > 0 {
            tick.tick().await;
            let due = (start.elapsed().as_secs_f64() * cfg.rate as f64) as u64;
            n = n.min(due.saturating_sub(seq));
        }
        if cfg.count > 0 {
            n = n.min(cfg.count - seq);
        }
        if n == 0 {
            continue;
        }
        let now_us = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as i64);
        let items: Vec<Item> = (seq..seq + n)
            .map(|s| Item {
                topic: None,
                origin: None,
                payload: Bytes::new(),
                value: record(&names, s, cfg.devices, now_us),
            })
            .collect();
        seq += n;
        comp.records.fetch_add(n, Relaxed);
        if !out.send(items, Vec::new(), &comp).await {
            break;
        }
    }
    comp.set_state(State::Finished);
}
