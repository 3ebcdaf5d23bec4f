//! What the sinks that write over HTTP (`influxdb`, `http`) share: one
//! blocking `ureq` agent run off the async workers, gzip bodies, the
//! classes of an answer (written, retry, the records', fatal),
//! `Retry-After`, jobs written in the background up to `concurrency` at
//! once ([`InFlight`]: their confirmation is the answer), and the
//! dead-letter topic they may publish refused records to through a
//! `[connections.NAME]`.
//!
//! Classes: a success code is written; 408, 429, 5xx and a network error
//! are retried with the runner's backoff (after `Retry-After`, when the
//! server says how long); 401, 403 and 407 are fatal (credentials); a
//! redirect is fatal (the URL is wrong); any other code is the records'
//! (the sink writes them one by one to find which).

use std::collections::HashMap;
use std::future::Future;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mqlink::Secret;
use serde::Deserialize;

use crate::batch::Item;
use crate::sink::{Confirmation, DeadLetters, Job, RecordFault, WriteError};
use crate::spec::{err, ConfigError, Context};

/// An answer's body is kept up to this size (for the error message).
const MAX_ANSWER_BYTES: u64 = 64 << 10;
/// The longest `Retry-After` honoured: a server asking for more is asked
/// again sooner.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

/// A request: method, URL, headers (a secret one never printed), body.
pub struct Request {
    pub put: bool,
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub authorization: Option<Secret>,
    pub body: Vec<u8>,
}

/// What the server answered.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    /// Its body, up to 64 KiB, for the error message.
    pub body: String,
    pub retry_after: Option<Duration>,
}

/// How an answer (or its absence) is taken.
#[derive(Debug, Clone, PartialEq)]
pub enum Class {
    Written,
    /// Try again later (after at least the duration, when given).
    Retry(String, Option<Duration>),
    /// The records' fault: written one by one, the refused ones are
    /// record faults of this class (`HTTP 400`).
    Records(String, String),
    Fatal(String),
}

/// Requests at once per sink unless `concurrency` says otherwise.
pub const fn default_concurrency() -> usize {
    4
}
/// The most requests at once a sink may send.
pub const MAX_CONCURRENCY: usize = 64;

/// How request bodies are sent.
#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum Compression {
    /// As they are.
    #[default]
    None,
    /// Compressed, with `Content-Encoding: gzip`.
    Gzip,
}

/// Checks a sink's `concurrency`.
pub fn check_concurrency(path: &str, concurrency: usize) -> Result<(), ConfigError> {
    if concurrency == 0 {
        return Err(err(format!("{path}.concurrency"), "must be at least 1"));
    }
    crate::spec::at_most(
        path,
        "concurrency",
        concurrency,
        MAX_CONCURRENCY,
        "requests",
    )
}

/// An HTTP client with its timeout, TLS roots and body compression.
#[derive(Clone)]
pub struct Client {
    agent: ureq::Agent,
    timeout: Duration,
    gzip: bool,
    /// The URL as errors show it (credentials redacted).
    pub shown: String,
}

impl Client {
    /// A client for `url` (its scheme checked), bounded by `timeout`;
    /// https trusts `ca_file` or the system's roots.
    pub fn new(url: &str, timeout: Duration, ca_file: Option<&PathBuf>) -> Result<Client, String> {
        let shown = mqlink::secret::redact(url).into_owned();
        let https = url.to_ascii_lowercase().starts_with("https://");
        if !https && !url.to_ascii_lowercase().starts_with("http://") {
            return Err(format!("{shown:?} must start with http:// or https://"));
        }
        let config = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .http_status_as_error(false)
            .max_redirects(0)
            // A connection kept for each request a sink has in flight.
            .max_idle_connections_per_host(MAX_CONCURRENCY)
            .max_idle_connections(MAX_CONCURRENCY)
            .user_agent(concat!("mqlink/", env!("CARGO_PKG_VERSION")));
        let config = if https {
            config.tls_config(mqlink::format::registry::tls_config(
                ca_file.map(|p| p.as_path()),
            )?)
        } else {
            config
        };
        Ok(Client {
            agent: config.build().new_agent(),
            timeout,
            gzip: false,
            shown,
        })
    }

    /// Bodies sent compressed as `compression` says.
    pub fn compression(mut self, compression: Compression) -> Client {
        self.gzip = compression == Compression::Gzip;
        self
    }

    /// Sends `req` on a blocking thread. `Err` is a network fault or a
    /// timeout (retried); an invalid rendered URL is an answer of class
    /// `Records` (see [`classify`]) with status 0.
    pub async fn send(&self, req: Request) -> Result<Answer, String> {
        let agent = self.agent.clone();
        let (timeout, gzip) = (self.timeout, self.gzip);
        let shown = mqlink::secret::redact(&req.url).into_owned();
        tokio::task::spawn_blocking(move || {
            let mut r = if req.put {
                agent.put(&req.url)
            } else {
                agent.post(&req.url)
            };
            for (k, v) in &req.headers {
                r = r.header(k, v);
            }
            let body = if gzip {
                r = r.header("Content-Encoding", "gzip");
                gzipped(&req.body)
            } else {
                req.body
            };
            if let Some(a) = &req.authorization {
                r = r.header("Authorization", a.expose());
            }
            let mut resp = match r.send(&body[..]) {
                Ok(resp) => resp,
                Err(ureq::Error::BadUri(e)) => {
                    return Ok(Answer {
                        status: 0,
                        body: format!("{shown:?} is not a URL: {e}"),
                        retry_after: None,
                    })
                }
                Err(ureq::Error::Http(e)) => {
                    return Ok(Answer {
                        status: 0,
                        body: format!("request to {shown} cannot be made: {e}"),
                        retry_after: None,
                    })
                }
                Err(e @ ureq::Error::Timeout(_)) => {
                    return Err(format!("{shown}: no answer within {timeout:?} ({e})"))
                }
                Err(e) => return Err(format!("{shown}: {e}")),
            };
            let retry_after = resp
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(|s| Duration::from_secs(s).min(MAX_RETRY_AFTER));
            let status = resp.status().as_u16();
            let body = resp
                .body_mut()
                .with_config()
                .limit(MAX_ANSWER_BYTES)
                .read_to_string()
                .unwrap_or_default();
            Ok(Answer {
                status,
                body: body.trim().to_string(),
                retry_after,
            })
        })
        .await
        .map_err(|e| format!("{}: {e}", self.shown))?
    }
}

/// `body` compressed with gzip (fast: bodies are sent once).
fn gzipped(body: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(
        Vec::with_capacity(body.len() / 4),
        flate2::Compression::fast(),
    );
    gz.write_all(body).expect("writing to memory");
    gz.finish().expect("writing to memory")
}

/// The class of `answer` to a request to `shown`; `success` lists the
/// codes that mean written (empty: any 2xx).
pub fn classify(answer: &Answer, success: &[u16], shown: &str) -> Class {
    let Answer { status, body, .. } = answer;
    let said = if body.is_empty() {
        String::new()
    } else {
        format!(": {body}")
    };
    let why = format!("{shown} answered {status}{said}");
    match *status {
        s if success.contains(&s) || (success.is_empty() && (200..300).contains(&s)) => {
            Class::Written
        }
        0 => Class::Records(body.clone(), "invalid request".into()),
        408 | 429 | 500..=599 => Class::Retry(why, answer.retry_after),
        401 | 403 | 407 => Class::Fatal(format!("{why} (check the credentials)")),
        300..=399 => Class::Fatal(format!("{why} (a redirect: set the URL to its target)")),
        s => Class::Records(why, format!("HTTP {s}")),
    }
}

/// Waits out a `Retry-After` the server gave before the sink's next
/// request (shared by its requests in flight).
#[derive(Clone, Default)]
pub struct Pause(Arc<Mutex<Option<Instant>>>);

impl Pause {
    /// No request before `after` from now (the later of two wins).
    pub fn set(&self, after: Option<Duration>) {
        if let Some(at) = after.map(|d| Instant::now() + d) {
            let mut until = self.0.lock().expect("pause lock");
            *until = Some(until.map_or(at, |u| u.max(at)));
        }
    }
    pub async fn wait(&self) {
        let until = *self.0.lock().expect("pause lock");
        if let Some(at) = until.filter(|at| *at > Instant::now()) {
            tokio::time::sleep_until(at.into()).await;
        }
    }
}

/// A retried answer as the runner's error, its `Retry-After` kept.
pub fn retry(why: String, after: Option<Duration>, pause: &Pause) -> WriteError {
    pause.set(after);
    match after {
        Some(d) => WriteError::Retry(format!("{why} (retry after {d:?})")),
        None => WriteError::Retry(why),
    }
}

/// A job being written: what is written or refused already. A request of
/// it that must be retried ends the attempt; the runner writes the same
/// job again and the sink goes on where it stopped ([`InFlight`] keeps
/// this meanwhile) instead of sending every record again (a flaky server
/// would otherwise never see the end of a long job).
pub struct Progress {
    done: Vec<bool>,
    faults: Vec<RecordFault>,
}

impl Progress {
    fn new(records: usize) -> Progress {
        Progress {
            done: vec![false; records],
            faults: Vec::new(),
        }
    }
    pub fn is_done(&self, index: usize) -> bool {
        self.done.get(index).copied().unwrap_or(true)
    }
    pub fn written(&mut self, index: usize) {
        if let Some(d) = self.done.get_mut(index) {
            *d = true;
        }
    }
    pub fn refused(&mut self, fault: RecordFault) {
        self.written(fault.index);
        self.faults.push(fault);
    }
    /// The job is through: its record faults, in order.
    fn finish(mut self) -> Vec<RecordFault> {
        self.faults.sort_by_key(|f| f.index);
        self.faults
    }
}

/// Identifies a job while it lives: its first record's address, its length.
type JobKey = (usize, usize);

fn key(job: &Job) -> JobKey {
    let first = job.items().next().map_or(0, |i| i as *const Item as usize);
    (first, job.len())
}

/// An HTTP sink's jobs, each written in a task of its own so that several
/// requests are in flight at once (the runner bounds how many: the sink's
/// `max_unconfirmed_jobs`, its `concurrency`); a job's confirmation is its
/// answers. Confirming stays the runner's, in order.
#[derive(Default)]
pub struct InFlight {
    /// The progress of jobs whose attempt ended with a retry.
    stopped: Arc<Mutex<HashMap<JobKey, Progress>>>,
}

impl InFlight {
    /// Starts `write` on `job` (its records shared) from where an earlier
    /// attempt of it stopped; the confirmation completes with the outcome:
    /// the record faults, or a retry (the progress kept) or a fatal error.
    pub fn start<W, F>(&self, job: &Job, write: W) -> Confirmation
    where
        W: FnOnce(Job, Progress) -> F,
        F: Future<Output = (Progress, Result<(), WriteError>)> + Send + 'static,
    {
        let key = key(job);
        let progress = self.stopped.lock().expect("progress lock").remove(&key);
        let progress = progress.unwrap_or_else(|| Progress::new(job.len()));
        let task = Task(tokio::spawn(write(job.clone(), progress)));
        let stopped = self.stopped.clone();
        Box::pin(async move {
            match task.await {
                Ok((progress, Ok(()))) => Ok(progress.finish()),
                Ok((progress, Err(WriteError::Retry(e)))) => {
                    stopped.lock().expect("progress lock").insert(key, progress);
                    Err(WriteError::Retry(e))
                }
                Ok((_, Err(fatal))) => Err(fatal),
                Err(e) => Err(WriteError::Fatal(format!("the write panicked: {e}"))),
            }
        })
    }
}

/// A job's task, stopped when its confirmation is dropped (the run failed).
struct Task<T>(tokio::task::JoinHandle<T>);

impl<T> Future for Task<T> {
    type Output = Result<T, tokio::task::JoinError>;
    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0).poll(cx)
    }
}

impl<T> Drop for Task<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Checks a sink's `dead_letter_topic` and its `connection`.
pub fn check_dead_letters(
    ctx: &Context,
    connection: &Option<String>,
    topic: &Option<String>,
) -> Result<(), ConfigError> {
    let path = ctx.path;
    match (connection, topic) {
        (Some(c), _) => {
            crate::spec::connection(path, c, ctx.connections)?;
        }
        (None, Some(_)) => {
            return Err(err(
                format!("{path}.dead_letter_topic"),
                "needs `connection`: the [connections.NAME] the dead letters are published through",
            ))
        }
        (None, None) => {}
    }
    if let Some(t) = topic {
        mqlink::topic::validate_topic_name(t)
            .map_err(|e| err(format!("{path}.dead_letter_topic"), e.to_string()))?;
    }
    Ok(())
}

/// The dead letters of a sink with a `dead_letter_topic`, through a
/// session on its connection (started in the background).
pub fn dead_letters(
    topic: &Option<String>,
    options: Option<mqlink::ConnectOptions>,
) -> Result<Option<DeadLetters>, String> {
    let (Some(topic), Some(options)) = (topic, options) else {
        return Ok(None);
    };
    let (client, _incoming) = mqlink::Client::start(options).map_err(|e| e.to_string())?;
    Ok(Some(DeadLetters::new(topic.clone(), client)))
}

/// Starts an HTTP sink made by `make` (given its dead letters) on the
/// runner, or a task that fails with why it could not be made.
pub fn spawn<S: crate::sink::Sink + Send + 'static>(
    mut start: super::SinkStart,
    dead_letter_topic: &Option<String>,
    make: impl FnOnce(Option<DeadLetters>) -> Result<S, String>,
) -> tokio::task::JoinHandle<Result<(), String>> {
    match dead_letters(dead_letter_topic, start.options.take()).and_then(make) {
        Ok(sink) => start.run(sink),
        Err(e) => tokio::spawn(std::future::ready(Err(e))),
    }
}

/// `Basic base64(user:password)`.
pub fn basic(user: &str, password: Option<&Secret>) -> Secret {
    use base64::Engine;
    let pw = password.map(Secret::expose).unwrap_or("");
    let b = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pw}"));
    Secret::new(format!("Basic {b}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, retry_after: Option<u64>) -> Answer {
        Answer {
            status,
            body: "why".into(),
            retry_after: retry_after.map(Duration::from_secs),
        }
    }

    #[test]
    fn classes() {
        let c = |s, r| classify(&answer(s, r), &[], "http://h");
        assert_eq!(c(204, None), Class::Written);
        assert_eq!(
            c(429, Some(3)),
            Class::Retry(
                "http://h answered 429: why".into(),
                Some(Duration::from_secs(3))
            )
        );
        assert!(matches!(c(503, None), Class::Retry(..)));
        assert!(matches!(c(401, None), Class::Fatal(..)));
        assert!(matches!(c(302, None), Class::Fatal(..)));
        assert_eq!(
            c(400, None),
            Class::Records("http://h answered 400: why".into(), "HTTP 400".into())
        );
        assert!(matches!(
            classify(&answer(200, None), &[202], "u"),
            Class::Records(..)
        ));
        assert_eq!(classify(&answer(202, None), &[202], "u"), Class::Written);
    }
}
