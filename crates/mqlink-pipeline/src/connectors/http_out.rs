//! What the sinks that write over HTTP (`influxdb`, `http`) share: one
//! blocking `ureq` agent run off the async workers, the classes of an
//! answer (written, retry, the records', fatal), `Retry-After`, and the
//! dead-letter topic they may publish refused records to through a
//! `[connections.NAME]`.
//!
//! Classes: a success code is written; 408, 429, 5xx and a network error
//! are retried with the runner's backoff (after `Retry-After`, when the
//! server says how long); 401, 403 and 407 are fatal (credentials); a
//! redirect is fatal (the URL is wrong); any other code is the records'
//! (the sink writes them one by one to find which).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use mqlink::Secret;

use crate::batch::Item;
use crate::sink::{DeadLetters, Job, RecordFault, WriteError};
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

/// An HTTP client with its timeout and TLS roots.
#[derive(Clone)]
pub struct Client {
    agent: ureq::Agent,
    timeout: Duration,
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
            shown,
        })
    }

    /// Sends `req` on a blocking thread. `Err` is a network fault or a
    /// timeout (retried); an invalid rendered URL is an answer of class
    /// `Records` (see [`classify`]) with status 0.
    pub async fn send(&self, req: Request) -> Result<Answer, String> {
        let agent = self.agent.clone();
        let timeout = self.timeout;
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
            if let Some(a) = &req.authorization {
                r = r.header("Authorization", a.expose());
            }
            let mut resp = match r.send(&req.body[..]) {
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

/// Waits out a `Retry-After` the server gave before the next request.
#[derive(Default)]
pub struct Pause(Option<Instant>);

impl Pause {
    pub fn set(&mut self, after: Option<Duration>) {
        self.0 = after.map(|d| Instant::now() + d);
    }
    pub async fn wait(&mut self) {
        if let Some(at) = self.0.take() {
            tokio::time::sleep_until(at.into()).await;
        }
    }
}

/// A retried answer as the runner's error, its `Retry-After` kept.
pub fn retry(why: String, after: Option<Duration>, pause: &mut Pause) -> WriteError {
    pause.set(after);
    match after {
        Some(d) => WriteError::Retry(format!("{why} (retry after {d:?})")),
        None => WriteError::Retry(why),
    }
}

/// A job being written record by record: what is written or refused
/// already. A request of it that must be retried returns the job to the
/// runner, which writes the same job again; the sink goes on where it
/// stopped instead of sending every record again (a flaky server would
/// otherwise never see the end of a long job).
#[derive(Default)]
pub struct Progress {
    /// The job's first record (its address: unique while the job lives)
    /// and length.
    job: Option<(usize, usize)>,
    done: Vec<bool>,
    faults: Vec<RecordFault>,
}

fn key(job: &Job) -> (usize, usize) {
    let first = job.items().next().map_or(0, |i| i as *const Item as usize);
    (first, job.len())
}

impl Progress {
    /// Whether `job` is the one being written record by record.
    pub fn resumes(&self, job: &Job) -> bool {
        self.job == Some(key(job))
    }
    /// Starts writing `job` record by record (unless it is already).
    pub fn start(&mut self, job: &Job) {
        if !self.resumes(job) {
            self.job = Some(key(job));
            self.done = vec![false; job.len()];
            self.faults.clear();
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
    pub fn finish(&mut self) -> Vec<RecordFault> {
        self.job = None;
        let mut f = std::mem::take(&mut self.faults);
        f.sort_by_key(|f| f.index);
        f
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
