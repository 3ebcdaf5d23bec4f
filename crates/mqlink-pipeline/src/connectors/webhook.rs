//! HTTP (webhooks, REST ingest): records POSTed (or PUT) as JSON, one per
//! request or a batch per request as a JSON array or NDJSON. The URL and
//! header values are templates of the record's fields (one request per
//! record then, unless they are fixed). A record is confirmed once the
//! server answered a success code for the request that carried it; up to
//! `concurrency` jobs' requests are in flight at once, their records
//! confirmed in order by the sink runner.
//!
//! Faults (see `http_out`): 408, 429 (after its `Retry-After`), 5xx and
//! network errors are retried with the batch held; 401/403/407 and
//! redirects are fatal; any other answer is the records': a batch refused
//! so is sent again record by record, and the records refused then are
//! dead-lettered (or skipped), with the server's answer as the reason.
//!
//! The password and bearer token are only sent, never printed.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use mqlink::sink::{SinkRecord, TopicTemplate};
use mqlink::Secret;
use serde::Deserialize;
use serde_json::Value as Json;

use super::http_out::{self, Class, Client, Compression, InFlight, Pause, Progress, Request};
use super::influxdb::text_template;
use super::{
    fields_of, Connector, Key, KeyType, Reaches, SinkSpec, SinkSpecRef, SinkStart, SinkType,
};
use crate::batch::Item;
use crate::sink::{Confirmation, DeadLetters, Job, RecordFault, Sink, WriteError};
use crate::spec::{err, secret, typed, ConfigError, Context};

pub const CONNECTOR: Connector = Connector {
    name: "http",
    source: None,
    sink: Some(SinkType {
        // RisingWave's and Arroyo's names.
        aliases: &["webhook"],
        status_name: "http",
        keys: &[
            Key::text("url").alias(&["endpoint"]),
            Key::text("method"),
            Key::text("batch"),
            Key::text("headers"),
            Key::text("username"),
            Key::text("password"),
            Key::text("bearer_token"),
            Key::of("success_codes", KeyType::List),
            Key::of("batch_size", KeyType::Number),
            Key::of("concurrency", KeyType::Number),
            Key::text("compression"),
            Key::of("timeout_ms", KeyType::Number),
            Key::text("ca_file"),
            Key::text("connection"),
            Key::text("dead_letter_topic"),
        ],
        fields: fields_of::<HttpSinkConfig>,
        metrics: &[crate::status::SINK_CONNECTION],
        parse,
    }),
    reaches: Reaches::Database("the HTTP endpoint"),
};

/// How records are put in requests.
#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum Batching {
    /// One record per request, its JSON object the body.
    #[default]
    None,
    /// A batch per request: a JSON array of the records.
    JsonArray,
    /// A batch per request: one JSON object per line (`application/x-ndjson`).
    Ndjson,
}

#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "UPPERCASE")]
pub enum Method {
    #[default]
    Post,
    Put,
}

#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct HttpSinkConfig {
    /// `http[s]://…` (required), with `{field}` placeholders filled from
    /// each record (`https://api.example.com/devices/{device_id}`).
    #[serde(deserialize_with = "text_template")]
    pub url: TopicTemplate,
    /// `POST` or `PUT` [default: POST].
    #[serde(default)]
    pub method: Method,
    /// `none` (one record per request), `json_array` or `ndjson` (a batch
    /// per request; the URL and headers must then be fixed) [default: none].
    #[serde(default)]
    pub batch: Batching,
    /// Headers sent with every request, a table (`{ "X-Site" =
    /// "{site}" }`) or Arroyo's text (`'X-A: 1, X-B: 2'`); values may have
    /// `{field}` placeholders [default: none].
    #[serde(default, deserialize_with = "header_map")]
    pub headers: BTreeMap<String, String>,
    /// Basic authentication's user.
    pub username: Option<String>,
    /// Basic authentication's password; never printed.
    #[serde(default, deserialize_with = "secret")]
    pub password: Option<Secret>,
    /// `Authorization: Bearer …`; never printed. Write `bearer_token =
    /// "${API_TOKEN}"` to take it from the environment.
    #[serde(default, deserialize_with = "secret")]
    pub bearer_token: Option<Secret>,
    /// The status codes that mean written [default: any 2xx].
    #[serde(default)]
    pub success_codes: Vec<u16>,
    /// Records per request at most when batching [default: 1000].
    #[serde(default = "thousand")]
    pub batch_size: usize,
    /// Requests in flight at once, each a job of its own [default: 4].
    /// Records are confirmed in order whatever order the answers come in;
    /// the endpoint may receive them out of order (set 1 to keep it).
    #[serde(default = "http_out::default_concurrency")]
    pub concurrency: usize,
    /// `none` or `gzip` (bodies sent with `Content-Encoding: gzip`)
    /// [default: none].
    #[serde(default)]
    pub compression: Compression,
    /// Milliseconds one request may take, connecting included [default: 10000].
    #[serde(default = "ten_seconds")]
    pub timeout_ms: u64,
    /// PEM file of the CA certificates trusted for https [default: the
    /// system's].
    pub ca_file: Option<PathBuf>,
    /// The `[connections.NAME]` dead letters are published through (with
    /// `dead_letter_topic`).
    pub connection: Option<String>,
    /// Records the server refuses are published here with its answer;
    /// without it they are logged, counted (`mqlink_sink_skipped_total`)
    /// and skipped.
    pub dead_letter_topic: Option<String>,
}

/// A table of headers, or `Name: value, Name: value` (Arroyo's SQL option).
fn header_map<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Headers {
        Table(BTreeMap<String, String>),
        Text(String),
    }
    match Headers::deserialize(d)? {
        Headers::Table(t) => Ok(t),
        Headers::Text(t) => t
            .split(',')
            .filter(|h| !h.trim().is_empty())
            .map(|h| match h.split_once(':') {
                Some((k, v)) => Ok((k.trim().to_string(), v.trim().to_string())),
                None => Err(serde::de::Error::custom(format!(
                    "{:?} is not `Name: value`",
                    h.trim()
                ))),
            })
            .collect(),
    }
}

const fn thousand() -> usize {
    1000
}
const fn ten_seconds() -> u64 {
    10_000
}

pub fn parse(ctx: &Context, body: Json) -> Result<SinkSpecRef, ConfigError> {
    let c: HttpSinkConfig = typed(ctx.path, body)?;
    c.validate(ctx)?;
    Ok(Arc::new(c))
}

impl SinkSpec for HttpSinkConfig {
    fn connector(&self) -> &'static Connector {
        &CONNECTOR
    }
    fn connection(&self) -> Option<(&str, u16)> {
        self.connection.as_deref().map(|c| (c, 1))
    }
    fn spawn(&self, s: SinkStart) -> tokio::task::JoinHandle<Result<(), String>> {
        http_out::spawn(s, &self.dead_letter_topic, |d| {
            HttpSink::new(self.clone(), d)
        })
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

impl HttpSinkConfig {
    fn validate(&self, ctx: &Context) -> Result<(), ConfigError> {
        let path = ctx.path;
        let key = |k: &str| format!("{path}.{k}");
        let url = self.url.to_string();
        // The scheme is literal text: checked on the template itself.
        Client::new(&url, Duration::from_millis(1), self.ca_file.as_ref())
            .map_err(|e| err(key("url"), e))?;
        let headers = self
            .header_templates()
            .map_err(|(k, e)| err(key(&format!("headers.{k}")), e))?;
        let fixed = self.url.is_static() && headers.iter().all(|(_, t)| t.is_static());
        if self.batch != Batching::None && !fixed {
            return Err(err(key("batch"), "a batch goes in one request: the url and headers must be fixed (no {field}), or set batch = \"none\""));
        }
        if self.bearer_token.is_some() && (self.username.is_some() || self.password.is_some()) {
            return Err(err(
                key("bearer_token"),
                "set bearer_token or username/password, not both",
            ));
        }
        if self.password.is_some() && self.username.is_none() {
            return Err(err(key("username"), "missing (password is given)"));
        }
        if let Some(c) = self.success_codes.iter().find(|c| !(100..600).contains(*c)) {
            return Err(err(
                key("success_codes"),
                format!("{c} is not an HTTP status code"),
            ));
        }
        if self.batch_size == 0 {
            return Err(err(key("batch_size"), "must be at least 1"));
        }
        crate::spec::at_most(
            path,
            "batch_size",
            self.batch_size,
            crate::spec::MAX_BATCH_SIZE,
            "records",
        )?;
        http_out::check_concurrency(path, self.concurrency)?;
        if self.timeout_ms == 0 {
            return Err(err(key("timeout_ms"), "must be at least 1"));
        }
        crate::spec::at_most(path, "timeout_ms", self.timeout_ms, 3_600_000, "ms")?;
        http_out::check_dead_letters(ctx, &self.connection, &self.dead_letter_topic)?;
        for input in ctx.inputs {
            let Some(schema) = ctx.source(input).and_then(|s| s.schema()) else {
                continue;
            };
            let used = self.url.fields().map(|p| ("url".to_string(), p[0].clone()));
            let used = used.chain(headers.iter().flat_map(|(k, t)| {
                t.fields()
                    .map(move |p| (format!("headers.{k}"), p[0].clone()))
            }));
            for (k, name) in used {
                if schema.column(&name).is_none() {
                    let known: Vec<&str> = schema.columns.iter().map(|(n, _)| &**n).collect();
                    return Err(err(
                        key(&k),
                        format!(
                            "{{{name}}}: {name:?} is not a field of sources.{input} (fields: {})",
                            known.join(", ")
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    fn header_templates(&self) -> Result<Vec<(String, TopicTemplate)>, (String, String)> {
        self.headers
            .iter()
            .map(|(k, v)| {
                if k.is_empty()
                    || !k
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_!#$%&'*+.^`|~".contains(&b))
                {
                    return Err((k.clone(), format!("{k:?} is not a header name")));
                }
                if k.eq_ignore_ascii_case("authorization") {
                    return Err((
                        k.clone(),
                        "use bearer_token or username/password (they are never printed)".into(),
                    ));
                }
                TopicTemplate::parse_text(v)
                    .map(|t| (k.clone(), t))
                    .map_err(|e| (k.clone(), e.to_string()))
            })
            .collect()
    }
}

pub struct HttpSink {
    requests: Arc<Requests>,
    in_flight: InFlight,
    dead_letters: Option<DeadLetters>,
}

/// What the sink's requests are made of, shared by its jobs in flight.
struct Requests {
    cfg: HttpSinkConfig,
    client: Client,
    headers: Vec<(String, TopicTemplate)>,
    authorization: Option<Secret>,
    pause: Pause,
    content_type: bool,
}

impl HttpSink {
    pub fn new(cfg: HttpSinkConfig, dead_letters: Option<DeadLetters>) -> Result<HttpSink, String> {
        let client = Client::new(
            &cfg.url.to_string(),
            Duration::from_millis(cfg.timeout_ms),
            cfg.ca_file.as_ref(),
        )?
        .compression(cfg.compression);
        let headers = cfg
            .header_templates()
            .map_err(|(k, e)| format!("headers.{k}: {e}"))?;
        let authorization = match (&cfg.bearer_token, &cfg.username) {
            (Some(t), _) => Some(Secret::new(format!("Bearer {}", t.expose()))),
            (None, Some(u)) => Some(http_out::basic(u, cfg.password.as_ref())),
            (None, None) => None,
        };
        let content_type = headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("content-type"));
        Ok(HttpSink {
            requests: Arc::new(Requests {
                cfg,
                client,
                headers,
                authorization,
                pause: Pause::default(),
                content_type,
            }),
            in_flight: InFlight::default(),
            dead_letters,
        })
    }
}

impl Requests {
    /// The request for `items` (one, unless batching): its URL and headers
    /// rendered from the first, or why it cannot be made.
    fn request(&self, items: &[&Item]) -> Result<Request, String> {
        let first = items.first().ok_or("no record")?;
        let record = || SinkRecord {
            stream: first.topic.as_ref().map(|t| t.to_string()),
            ..SinkRecord::json(first.value.to_json())
        };
        let url = if self.cfg.url.is_static() {
            self.cfg.url.to_string()
        } else {
            self.cfg.url.render(&record()).map_err(|e| e.to_string())?
        };
        let mut headers = Vec::with_capacity(self.headers.len() + 1);
        for (k, t) in &self.headers {
            let v = if t.is_static() {
                t.to_string()
            } else {
                t.render(&record()).map_err(|e| e.to_string())?
            };
            if v.bytes().any(|b| b == b'\r' || b == b'\n') {
                return Err(format!("header {k}: the value has a line break"));
            }
            headers.push((k.clone(), v));
        }
        let mut body = Vec::new();
        let ndjson = self.cfg.batch == Batching::Ndjson;
        if self.cfg.batch == Batching::JsonArray {
            body.push(b'[');
        }
        for (i, item) in items.iter().enumerate() {
            if i > 0 && !ndjson {
                body.push(b',');
            }
            super::file::line(item, &mut body);
            if !ndjson {
                body.pop();
            }
        }
        if self.cfg.batch == Batching::JsonArray {
            body.push(b']');
        }
        if !self.content_type {
            let ct = if ndjson {
                "application/x-ndjson"
            } else {
                "application/json"
            };
            headers.push(("Content-Type".into(), ct.into()));
        }
        Ok(Request {
            put: self.cfg.method == Method::Put,
            url,
            headers,
            authorization: self.authorization.clone(),
            body,
        })
    }

    /// Requests of `batch_size` records (one with `batch = "none"`), one
    /// after the other, from the first not answered yet.
    async fn write(&self, job: &Job, progress: &mut Progress) -> Result<(), WriteError> {
        let items: Vec<&Item> = job.items().collect();
        let per = match self.cfg.batch {
            Batching::None => 1,
            _ => self.cfg.batch_size,
        };
        let all: Vec<usize> = (0..items.len()).collect();
        for part in all.chunks(per) {
            self.send_part(&items, part, progress).await?;
        }
        Ok(())
    }

    /// Sends one request; `Ok(Some(..))` when the server refused its records.
    async fn send(&self, request: Request) -> Result<Option<(String, String)>, WriteError> {
        self.pause.wait().await;
        let shown = mqlink::secret::redact(&request.url).into_owned();
        let answer = self.client.send(request).await.map_err(WriteError::Retry)?;
        match http_out::classify(&answer, &self.cfg.success_codes, &shown) {
            Class::Written => Ok(None),
            Class::Records(why, class) => Ok(Some((why, class))),
            Class::Retry(why, after) => Err(http_out::retry(why, after, &self.pause)),
            Class::Fatal(why) => Err(WriteError::Fatal(why)),
        }
    }

    /// Sends the records of `indexes` that `progress` does not have yet
    /// in one request; a refused request of several is sent again record
    /// by record, and the records refused alone are record faults.
    async fn send_part(
        &self,
        items: &[&Item],
        indexes: &[usize],
        progress: &mut Progress,
    ) -> Result<(), WriteError> {
        let pending: Vec<usize> = indexes
            .iter()
            .copied()
            .filter(|&i| !progress.is_done(i))
            .collect();
        if pending.is_empty() {
            return Ok(());
        }
        let one_by_one = match self.attempt(items, &pending).await? {
            None => {
                pending.iter().for_each(|&i| progress.written(i));
                return Ok(());
            }
            Some((why, _)) if pending.len() > 1 => {
                tracing::warn!(url = %self.client.shown, error = %why, "Batch refused; sending its records one by one to find the refused ones.");
                pending
            }
            Some(refused) => return Ok(Self::refused(progress, pending[0], refused)),
        };
        for i in one_by_one {
            match self.attempt(items, &[i]).await? {
                None => progress.written(i),
                Some(refused) => Self::refused(progress, i, refused),
            }
        }
        Ok(())
    }

    /// One request of `indexes`' records: `Some((reason, class))` when
    /// refused for them.
    async fn attempt(
        &self,
        items: &[&Item],
        indexes: &[usize],
    ) -> Result<Option<(String, String)>, WriteError> {
        let part: Vec<&Item> = indexes.iter().map(|&i| items[i]).collect();
        match self.request(&part) {
            Ok(r) => self.send(r).await,
            Err(reason) => Ok(Some((reason, String::new()))),
        }
    }

    fn refused(progress: &mut Progress, index: usize, (reason, class): (String, String)) {
        progress.refused(RecordFault {
            index,
            reason: format!("refused: {reason}"),
            class: (!class.is_empty()).then_some(class),
        });
    }
}

impl Sink for HttpSink {
    fn max_records(&self) -> usize {
        match self.requests.cfg.batch {
            Batching::None => 100,
            _ => self.requests.cfg.batch_size,
        }
    }

    /// Starts the job's requests in the background (see [`InFlight`]); a
    /// retried job goes on from the first request not answered.
    async fn write(&mut self, job: &Job) -> Result<Confirmation, WriteError> {
        let requests = self.requests.clone();
        Ok(self.in_flight.start(job, |job, mut progress| async move {
            let written = requests.write(&job, &mut progress).await;
            (progress, written)
        }))
    }

    /// `concurrency` jobs' requests in flight at most.
    fn max_unconfirmed_jobs(&self) -> usize {
        self.requests.cfg.concurrency
    }

    fn dead_letters(&self) -> Option<DeadLetters> {
        self.dead_letters.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GEN: &str =
        "[sources.g]\ntype = \"generator\"\n[sinks.h]\ntype = \"webhook\"\ninputs = [\"g\"]\n";

    fn load(extra: &str) -> Result<HttpSinkConfig, String> {
        let env = |k: &str| (k == "TOKEN").then(|| "tok-secret".to_string());
        let p =
            crate::spec::parse(&format!("{GEN}{extra}"), false, &env).map_err(|e| e.to_string())?;
        Ok(p.sinks[0].1.kind.get::<HttpSinkConfig>().unwrap().clone())
    }

    #[test]
    fn requests_of_templates() {
        let c = load("url = \"http://h/d/{device_id}\"\nheaders = \"X-Seq: {seq}, X-A: 1\"\nbearer_token = \"${TOKEN}\"\nmethod = \"PUT\"").unwrap();
        assert!(!format!("{c:?}").contains("tok-secret"));
        let s = HttpSink::new(c, None).unwrap().requests;
        let item = Item {
            topic: None,
            payload: bytes::Bytes::new(),
            value: mqlink::format::Value::Json(serde_json::json!({"device_id": "d 1", "seq": 7})),
            origin: None,
        };
        let r = s.request(&[&item]).unwrap();
        assert!(r.put);
        assert_eq!(r.url, "http://h/d/d 1");
        assert_eq!(
            r.headers,
            [
                ("X-A".to_string(), "1".to_string()),
                ("X-Seq".to_string(), "7".to_string()),
                ("Content-Type".to_string(), "application/json".to_string())
            ]
        );
        assert_eq!(r.authorization.unwrap().expose(), "Bearer tok-secret");
        assert_eq!(r.body, br#"{"device_id":"d 1","seq":7}"#);
    }

    #[test]
    fn refusals_name_the_key() {
        let e = |extra: &str| load(extra).unwrap_err();
        assert!(
            e("url = \"http://h/{device_id}\"\nbatch = \"ndjson\"").starts_with("sinks.h.batch:")
        );
        assert!(e("url = \"http://h\"\nheaders = { Authorization = \"x\" }")
            .starts_with("sinks.h.headers.Authorization:"));
        assert!(e("url = \"http://h/{nope}\"").contains("\"nope\" is not a field"));
        assert!(e("url = \"h\"").starts_with("sinks.h.url:"));
        assert!(e("url = \"http://h\"\nsuccess_codes = [99]").starts_with("sinks.h.success_codes:"));
    }
}
