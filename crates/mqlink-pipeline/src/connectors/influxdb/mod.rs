//! InfluxDB: records as points of the line protocol, one HTTP write per
//! batch — InfluxDB 1.x `/write` (`database`, `retention_policy`,
//! `username`/`password`) or 2.x/3.x `/api/v2/write` (`org`, `bucket`,
//! `token`). A batch is confirmed when InfluxDB answered 204 (written).
//!
//! Faults (see `http_out`): 5xx, 429 (after its `Retry-After`) and network
//! errors are retried with the batch held; 401/403 and 404 (the database
//! or bucket does not exist) are fatal; a 400 (a point InfluxDB cannot
//! parse, a field of another type than before: "partial write") has the
//! batch written again point by point, and the points refused then are
//! record faults, dead-lettered with InfluxDB's reason. Points that name
//! their `timestamp` are idempotent (same series and time: one point), so
//! writing them again never doubles them.
//!
//! The token and password are only sent, never printed.

pub mod line;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use mqlink::sink::{SinkRecord, TopicTemplate};
use mqlink::Secret;
use serde::Deserialize;
use serde_json::Value as Json;

use super::http_out::{
    self, Answer, Class, Client, Compression, InFlight, Pause, Progress, Request,
};
use super::{
    fields_of, Connector, Key, KeyType, Reaches, SinkSpec, SinkSpecRef, SinkStart, SinkType,
};
use crate::batch::Item;
use crate::sink::{Confirmation, DeadLetters, Job, RecordFault, Sink, WriteError};
use crate::spec::{err, secret, typed, ConfigError, Context};
use line::{Precision, Scalar};

pub const CONNECTOR: Connector = Connector {
    name: "influxdb",
    source: None,
    sink: Some(SinkType {
        // Telegraf's output names.
        aliases: &["influxdb_v2", "influx"],
        status_name: "influxdb",
        keys: &[
            Key::text("url").alias(&["endpoint"]),
            Key::text("database").alias(&["db"]),
            Key::text("retention_policy").alias(&["rp"]),
            Key::text("username").alias(&["user"]),
            Key::text("password"),
            Key::text("org"),
            Key::text("bucket"),
            Key::text("token"),
            Key::text("measurement"),
            Key::of("tags", KeyType::List),
            Key::of("fields", KeyType::List),
            Key::text("timestamp"),
            Key::text("precision"),
            Key::of("batch_size", KeyType::Number),
            Key::of("concurrency", KeyType::Number),
            Key::text("compression"),
            Key::of("timeout_ms", KeyType::Number),
            Key::text("ca_file"),
            Key::text("connection"),
            Key::text("dead_letter_topic"),
        ],
        fields: fields_of::<InfluxSinkConfig>,
        metrics: &[crate::status::SINK_CONNECTION],
        parse,
    }),
    reaches: Reaches::Database("InfluxDB"),
};

#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct InfluxSinkConfig {
    /// `http[s]://host:port` of InfluxDB (required), without the path.
    pub url: String,
    /// InfluxDB 1.x: the database points go into (this or `bucket`).
    pub database: Option<String>,
    /// InfluxDB 1.x: the retention policy [default: the database's].
    pub retention_policy: Option<String>,
    /// InfluxDB 1.x: the user (sent with basic authentication).
    pub username: Option<String>,
    /// InfluxDB 1.x: the user's password; never printed.
    #[serde(default, deserialize_with = "secret")]
    pub password: Option<Secret>,
    /// InfluxDB 2.x/3.x: the organization (2.x requires it).
    pub org: Option<String>,
    /// InfluxDB 2.x/3.x: the bucket points go into (this or `database`).
    pub bucket: Option<String>,
    /// InfluxDB 2.x/3.x: the API token (`Authorization: Token …`); never
    /// printed. Write `token = "${INFLUX_TOKEN}"` to take it from the
    /// environment.
    #[serde(default, deserialize_with = "secret")]
    pub token: Option<Secret>,
    /// The measurement (required): text with `{field}` placeholders, like
    /// the MQTT sink's topic (`"{kind}"`, `"telemetry"`).
    #[serde(deserialize_with = "text_template")]
    pub measurement: TopicTemplate,
    /// Fields written as tags (indexed text): a record without one, or
    /// with an empty one, has no such tag [default: none].
    #[serde(default)]
    pub tags: Vec<String>,
    /// Fields written as fields [default: every other top-level field that
    /// is a number, text, boolean or timestamp].
    pub fields: Option<Vec<String>>,
    /// The field holding the point's time (a timestamp, RFC 3339 text, or
    /// an integer in `precision`'s unit) [default: none: InfluxDB's clock
    /// when it receives the point; set it, so that a redelivered record is
    /// the same point and not a second one].
    pub timestamp: Option<String>,
    /// `ns`, `us`, `ms` or `s`: the unit of the written times and of
    /// integer timestamps [default: ns].
    #[serde(default)]
    pub precision: Precision,
    /// Points per write at most [default: 5000].
    #[serde(default = "five_thousand")]
    pub batch_size: usize,
    /// Writes in flight at once, each a job of its own [default: 4];
    /// records are confirmed in order whatever order the answers come in.
    #[serde(default = "http_out::default_concurrency")]
    pub concurrency: usize,
    /// `none` or `gzip` (bodies sent with `Content-Encoding: gzip`, which
    /// InfluxDB 1.x, 2.x and 3.x accept) [default: none].
    #[serde(default)]
    pub compression: Compression,
    /// Milliseconds one write may take, connecting included [default: 10000].
    #[serde(default = "ten_seconds")]
    pub timeout_ms: u64,
    /// PEM file of the CA certificates trusted for https [default: the
    /// system's].
    pub ca_file: Option<PathBuf>,
    /// The `[connections.NAME]` dead letters are published through (with
    /// `dead_letter_topic`).
    pub connection: Option<String>,
    /// Points InfluxDB refuses (or a record that is not a point) are
    /// published here with the reason; without it they are logged, counted
    /// (`mqlink_sink_skipped_total`) and skipped.
    pub dead_letter_topic: Option<String>,
}

const fn five_thousand() -> usize {
    5000
}
const fn ten_seconds() -> u64 {
    10_000
}

pub(crate) fn text_template<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<TopicTemplate, D::Error> {
    let s = String::deserialize(d)?;
    TopicTemplate::parse_text(&s).map_err(serde::de::Error::custom)
}

pub fn parse(ctx: &Context, body: Json) -> Result<SinkSpecRef, ConfigError> {
    let c: InfluxSinkConfig = typed(ctx.path, body)?;
    c.validate(ctx)?;
    Ok(Arc::new(c))
}

impl SinkSpec for InfluxSinkConfig {
    fn connector(&self) -> &'static Connector {
        &CONNECTOR
    }
    fn connection(&self) -> Option<(&str, u16)> {
        self.connection.as_deref().map(|c| (c, 1))
    }
    fn spawn(&self, s: SinkStart) -> tokio::task::JoinHandle<Result<(), String>> {
        http_out::spawn(s, &self.dead_letter_topic, |d| {
            InfluxSink::new(self.clone(), d)
        })
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

impl InfluxSinkConfig {
    fn validate(&self, ctx: &Context) -> Result<(), ConfigError> {
        let path = ctx.path;
        let key = |k: &str| format!("{path}.{k}");
        match (&self.database, &self.bucket) {
            (Some(_), Some(_)) => {
                return Err(err(
                    key("bucket"),
                    "set `database` (InfluxDB 1.x) or `bucket` (2.x/3.x), not both",
                ))
            }
            (None, None) => {
                return Err(err(
                    key("database"),
                    "missing: set `database` (InfluxDB 1.x) or `bucket` (2.x/3.x)",
                ))
            }
            _ => {}
        }
        if self.bucket.is_some() && (self.username.is_some() || self.password.is_some()) {
            return Err(err(
                key("username"),
                "InfluxDB 2.x/3.x (`bucket`) authenticates with `token`",
            ));
        }
        if self.database.is_some() && (self.token.is_some() || self.org.is_some()) {
            return Err(err(key("token"), "`token` and `org` are InfluxDB 2.x/3.x's (`bucket`); 1.x (`database`) takes username and password"));
        }
        if self.batch_size == 0 {
            return Err(err(key("batch_size"), "must be at least 1"));
        }
        crate::spec::at_most(
            path,
            "batch_size",
            self.batch_size,
            crate::spec::MAX_BATCH_SIZE,
            "points",
        )?;
        http_out::check_concurrency(path, self.concurrency)?;
        if self.timeout_ms == 0 {
            return Err(err(key("timeout_ms"), "must be at least 1"));
        }
        crate::spec::at_most(path, "timeout_ms", self.timeout_ms, 3_600_000, "ms")?;
        Client::new(
            &self.url,
            Duration::from_millis(self.timeout_ms),
            self.ca_file.as_ref(),
        )
        .map_err(|e| err(key("url"), e))?;
        if self.url.contains('?') || self.url.trim_end_matches('/').matches('/').count() > 2 {
            return Err(err(key("url"), format!("{:?}: give the server only (http://host:8086), the sink adds /write or /api/v2/write", mqlink::secret::redact(&self.url))));
        }
        http_out::check_dead_letters(ctx, &self.connection, &self.dead_letter_topic)?;
        self.check_fields(ctx)
    }

    /// The fields named (tags, fields, timestamp, the measurement's
    /// placeholders) against the inputs' schemas, where they are known.
    fn check_fields(&self, ctx: &Context) -> Result<(), ConfigError> {
        for input in ctx.inputs {
            let Some(schema) = ctx.source(input).and_then(|s| s.schema()) else {
                continue;
            };
            let known = || {
                let n: Vec<&str> = schema.columns.iter().map(|(n, _)| &**n).collect();
                n.join(", ")
            };
            let named = self.tags.iter().map(|t| ("tags", t.clone()));
            let named = named.chain(self.fields.iter().flatten().map(|f| ("fields", f.clone())));
            let named = named.chain(self.timestamp.iter().map(|t| ("timestamp", t.clone())));
            let named = named.chain(
                self.measurement
                    .fields()
                    .map(|p| ("measurement", p[0].clone())),
            );
            for (k, name) in named {
                if schema.column(&name).is_none() {
                    return Err(err(
                        format!("{}.{k}", ctx.path),
                        format!(
                            "{name:?} is not a field of sources.{input} (fields: {})",
                            known()
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// `/write?db=…` or `/api/v2/write?org=…&bucket=…`, with the precision.
    fn write_url(&self) -> String {
        let base = self.url.trim_end_matches('/');
        let enc = |s: &str| -> String {
            s.bytes()
                .map(|b| match b {
                    b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                        (b as char).to_string()
                    }
                    b => format!("%{b:02X}"),
                })
                .collect()
        };
        match (&self.database, &self.bucket) {
            (Some(db), _) => {
                let mut u = format!(
                    "{base}/write?db={}&precision={}",
                    enc(db),
                    self.precision.param(false)
                );
                if let Some(rp) = &self.retention_policy {
                    u.push_str(&format!("&rp={}", enc(rp)));
                }
                u
            }
            (None, bucket) => {
                let mut u = format!(
                    "{base}/api/v2/write?bucket={}&precision={}",
                    enc(bucket.as_deref().unwrap_or_default()),
                    self.precision.param(true)
                );
                if let Some(org) = &self.org {
                    u.push_str(&format!("&org={}", enc(org)));
                }
                u
            }
        }
    }
}

pub struct InfluxSink {
    writes: Arc<Writes>,
    in_flight: InFlight,
    dead_letters: Option<DeadLetters>,
}

/// What the sink's writes are made of, shared by its jobs in flight.
struct Writes {
    cfg: InfluxSinkConfig,
    client: Client,
    url: String,
    authorization: Option<Secret>,
    pause: Pause,
}

impl InfluxSink {
    pub fn new(
        cfg: InfluxSinkConfig,
        dead_letters: Option<DeadLetters>,
    ) -> Result<InfluxSink, String> {
        let client = Client::new(
            &cfg.url,
            Duration::from_millis(cfg.timeout_ms),
            cfg.ca_file.as_ref(),
        )?
        .compression(cfg.compression);
        let authorization = match (&cfg.token, &cfg.username) {
            (Some(t), _) => Some(Secret::new(format!("Token {}", t.expose()))),
            (None, Some(u)) => Some(http_out::basic(u, cfg.password.as_ref())),
            (None, None) => None,
        };
        Ok(InfluxSink {
            writes: Arc::new(Writes {
                url: cfg.write_url(),
                cfg,
                client,
                authorization,
                pause: Pause::default(),
            }),
            in_flight: InFlight::default(),
            dead_letters,
        })
    }
}

impl Writes {
    /// The record as one line, or why it is not a point.
    fn line(&self, item: &Item, out: &mut String) -> Result<(), String> {
        let v = &item.value;
        let measurement = if self.cfg.measurement.is_static() {
            self.cfg.measurement.to_string()
        } else {
            let record = SinkRecord {
                stream: item.topic.as_ref().map(|t| t.to_string()),
                ..SinkRecord::json(v.to_json())
            };
            self.cfg
                .measurement
                .render(&record)
                .map_err(|e| e.to_string())?
        };
        let tags: Vec<(&str, Scalar)> = self
            .cfg
            .tags
            .iter()
            .filter_map(|t| Some((t.as_str(), line::field(v, t)?)))
            .collect();
        let fields: Vec<(&str, Scalar)> = match &self.cfg.fields {
            Some(names) => names
                .iter()
                .filter_map(|f| Some((f.as_str(), line::field(v, f)?)))
                .collect(),
            None => line::fields(v)
                .into_iter()
                .filter(|(k, _)| {
                    !self.cfg.tags.iter().any(|t| t == k)
                        && self.cfg.timestamp.as_deref() != Some(*k)
                })
                .collect(),
        };
        let time = match &self.cfg.timestamp {
            Some(t) => Some(
                line::field(v, t)
                    .ok_or_else(|| format!("the record has no timestamp field {t:?}"))?,
            ),
            None => None,
        };
        line::point(&measurement, &tags, &fields, time, self.cfg.precision, out)
    }

    /// Writes `body`: `Some((reason, class))` when InfluxDB refused its
    /// points; an error when it must be retried or cannot be written.
    async fn post(&self, body: String) -> Result<Option<(String, String)>, WriteError> {
        self.pause.wait().await;
        let req = Request {
            put: false,
            url: self.url.clone(),
            headers: vec![("Content-Type".into(), "text/plain; charset=utf-8".into())],
            authorization: self.authorization.clone(),
            body: body.into_bytes(),
        };
        let answer = self.client.send(req).await.map_err(WriteError::Retry)?;
        match self.classify(&answer) {
            Class::Written => Ok(None),
            Class::Records(why, class) => Ok(Some((why, class))),
            Class::Retry(why, after) => Err(http_out::retry(why, after, &self.pause)),
            Class::Fatal(why) => Err(WriteError::Fatal(why)),
        }
    }

    fn classify(&self, answer: &Answer) -> Class {
        let shown = &self.client.shown;
        match http_out::classify(answer, &[], shown) {
            // A database or bucket that does not exist: nothing can be written.
            Class::Records(why, _) if answer.status == 404 => {
                Class::Fatal(format!("{why} (create the database or bucket)"))
            }
            c => c,
        }
    }

    /// Writes the points of `lines` that `progress` does not have yet in
    /// one request; a refused request of several is written again point by
    /// point, and the points refused alone are record faults.
    async fn write_part(
        &self,
        lines: &[(usize, String)],
        progress: &mut Progress,
    ) -> Result<(), WriteError> {
        let pending: Vec<&(usize, String)> = lines
            .iter()
            .filter(|(i, _)| !progress.is_done(*i))
            .collect();
        let Some(first) = pending.first() else {
            return Ok(());
        };
        let body: Vec<&str> = pending.iter().map(|(_, l)| l.as_str()).collect();
        let why = match self.post(body.join("\n")).await? {
            None => {
                pending.iter().for_each(|(i, _)| progress.written(*i));
                return Ok(());
            }
            Some(refused) if pending.len() == 1 => {
                return Ok(Self::refused(progress, first.0, refused))
            }
            Some((why, _)) => why,
        };
        tracing::warn!(url = %self.client.shown, error = %why, "Points refused; writing them one by one to find the refused ones.");
        for (i, l) in pending {
            match self.post(l.clone()).await? {
                None => progress.written(*i),
                Some(refused) => Self::refused(progress, *i, refused),
            }
        }
        Ok(())
    }

    fn refused(progress: &mut Progress, index: usize, (why, class): (String, String)) {
        progress.refused(RecordFault {
            index,
            reason: format!("InfluxDB refused the point: {why}"),
            class: Some(class),
        });
    }

    /// Writes of `batch_size` points, one after the other, from the first
    /// not answered yet.
    async fn write(&self, job: &Job, progress: &mut Progress) -> Result<(), WriteError> {
        let mut lines: Vec<(usize, String)> = Vec::with_capacity(job.len());
        for (index, item) in job.items().enumerate() {
            let mut l = String::new();
            match self.line(item, &mut l) {
                Ok(()) => lines.push((index, l)),
                Err(reason) if !progress.is_done(index) => progress.refused(RecordFault {
                    index,
                    reason,
                    class: None,
                }),
                Err(_) => {}
            }
        }
        for part in lines.chunks(self.cfg.batch_size) {
            self.write_part(part, progress).await?;
        }
        Ok(())
    }
}

impl Sink for InfluxSink {
    fn max_records(&self) -> usize {
        self.writes.cfg.batch_size
    }

    /// Starts the job's writes in the background (see [`InFlight`]); a
    /// retried job goes on from the first write not answered.
    async fn write(&mut self, job: &Job) -> Result<Confirmation, WriteError> {
        let writes = self.writes.clone();
        Ok(self.in_flight.start(job, |job, mut progress| async move {
            let written = writes.write(&job, &mut progress).await;
            (progress, written)
        }))
    }

    /// `concurrency` jobs' writes in flight at most.
    fn max_unconfirmed_jobs(&self) -> usize {
        self.writes.cfg.concurrency
    }

    fn dead_letters(&self) -> Option<DeadLetters> {
        self.dead_letters.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GEN: &str = "[sources.g]\ntype = \"generator\"\n[sinks.i]\ntype = \"influxdb\"\ninputs = [\"g\"]\nmeasurement = \"m\"\n";

    fn load(extra: &str) -> Result<InfluxSinkConfig, String> {
        let env = |k: &str| (k == "TOKEN").then(|| "tok-secret".to_string());
        let p =
            crate::spec::parse(&format!("{GEN}{extra}"), false, &env).map_err(|e| e.to_string())?;
        Ok(p.sinks[0].1.kind.get::<InfluxSinkConfig>().unwrap().clone())
    }

    #[test]
    fn v1_and_v2_writes() {
        let c = load("url = \"http://h:8086/\"\ndatabase = \"my db\"\nretention_policy = \"rp\"\nprecision = \"ms\"").unwrap();
        assert_eq!(
            c.write_url(),
            "http://h:8086/write?db=my%20db&precision=ms&rp=rp"
        );
        let c = load("url = \"https://h\"\nbucket = \"b\"\norg = \"o&x\"\ntoken = \"${TOKEN}\"")
            .unwrap();
        assert_eq!(
            c.write_url(),
            "https://h/api/v2/write?bucket=b&precision=ns&org=o%26x"
        );
        let s = InfluxSink::new(c.clone(), None).unwrap();
        let auth = s.writes.authorization.as_ref().unwrap();
        assert_eq!(auth.expose(), "Token tok-secret");
        assert!(!format!("{c:?}").contains("tok-secret"));
    }

    #[test]
    fn refusals_name_the_key() {
        let e = |extra: &str| load(extra).unwrap_err();
        assert!(e("url = \"http://h\"").starts_with("sinks.i.database: missing"));
        assert!(e("url = \"http://h\"\ndatabase = \"d\"\nbucket = \"b\"")
            .starts_with("sinks.i.bucket:"));
        assert!(e("url = \"ftp://h\"\ndatabase = \"d\"").starts_with("sinks.i.url:"));
        assert!(e("url = \"http://h/write\"\ndatabase = \"d\"").contains("adds /write"));
        assert!(e("url = \"http://h\"\ndatabase = \"d\"\ntags = [\"nope\"]")
            .contains("sinks.i.tags: \"nope\" is not a field of sources.g"));
        assert!(
            e("url = \"http://h\"\ndatabase = \"d\"\ndead_letter_topic = \"x\"")
                .contains("needs `connection`")
        );
        let t = e("url = \"http://h\"\nbucket = \"b\"\ntoken = [\"tok-secret\"]");
        assert!(!t.contains("tok-secret"), "{t}");
    }
}
