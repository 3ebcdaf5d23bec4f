//! `/metrics`, `/health`, `/ready`, `/status`, `/query` and the web
//! console (`/`, see [`crate::console`]) over plain HTTP/1.1.
//!
//! A handful of endpoints do not justify an HTTP framework on 2-core build
//! machines: this reads one request head (at most 8 KiB) and, for
//! `POST /query`, a body of at most 64 KiB, all within 5 s; answers and
//! closes the connection. Each connection is its own task, so a slow
//! scraper never holds up the pipeline.
//!
//! A query cannot take the pipeline down: at most [`MAX_QUERIES`] run at
//! once, each within [`QUERY_MEMORY`] and [`QUERY_TIME`], and one whose
//! client leaves is stopped. With a token, every endpoint but /health
//! and /ready wants `Authorization: Bearer <token>` (probes carry no
//! secret); /ready without it says only "ready" or "not ready", with the
//! status code, not why. `/` also takes the token once as `?token=…`,
//! since a browser opening the console cannot send a header.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use super::status::{QueryHandler, QueryLimits, Registry};

/// The longest query text /query takes.
const MAX_BODY: usize = 64 * 1024;

/// Queries evaluated at once; more are answered 503 at once (the
/// pipeline keeps its cores).
pub const MAX_QUERIES: usize = 2;

/// Bytes the values and rows of one query may take.
pub const QUERY_MEMORY: u64 = 64 << 20;

/// How long one query may run.
pub const QUERY_TIME: Duration = Duration::from_secs(5);

/// Characters of an error message answered: messages quote the query,
/// which a client already has.
const MAX_ERROR: usize = 300;

/// The environment variable the token is read from without `[http] token_env`.
pub const TOKEN_ENV: &str = "MQLINK_HTTP_TOKEN";

/// The bearer token the endpoints want; never printed.
#[derive(Clone)]
pub struct Token(Arc<[u8]>);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

impl Token {
    pub fn new(secret: &str) -> Token {
        Token(secret.as_bytes().into())
    }

    /// Whether an `Authorization` header carries this token, compared in
    /// time independent of where they differ.
    fn admits(&self, header: Option<&str>) -> bool {
        // The scheme is case-insensitive (RFC 9110).
        let given = header
            .map(str::trim)
            .filter(|h| {
                h.get(..7)
                    .is_some_and(|s| s.eq_ignore_ascii_case("bearer "))
            })
            .map_or("", |h| h[7..].trim());
        self.is(given)
    }

    /// Whether a URL query (`a=1&token=…`) carries this token.
    fn admits_param(&self, query: &str) -> bool {
        let given = query
            .split('&')
            .find_map(|kv| kv.strip_prefix("token="))
            .and_then(|v| percent_decode(v).ok())
            .unwrap_or_default();
        self.is(given.trim())
    }

    /// `given` is the token, compared in time independent of where they differ.
    fn is(&self, given: &str) -> bool {
        let given = given.as_bytes();
        let mut diff = self.0.len() ^ given.len();
        for i in 0..self.0.len() {
            let g = given.get(i).copied().unwrap_or(0);
            diff |= usize::from(std::hint::black_box(self.0[i] ^ g));
        }
        diff == 0
    }
}

pub async fn bind(listen: &str) -> std::io::Result<TcpListener> {
    TcpListener::bind(listen).await
}

/// What every connection shares.
#[derive(Clone)]
struct Server {
    registry: Registry,
    query: Option<QueryHandler>,
    token: Option<Token>,
    /// Permits of the queries running (held until their work stops).
    running: Arc<Semaphore>,
}

pub async fn serve(
    listener: TcpListener,
    registry: Registry,
    query: Option<QueryHandler>,
    token: Option<Token>,
) {
    let server = Server {
        registry,
        query,
        token,
        running: Arc::new(Semaphore::new(MAX_QUERIES)),
    };
    loop {
        let Ok((sock, _)) = listener.accept().await else {
            // Out of file descriptors, say: do not spin.
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            continue;
        };
        let server = server.clone();
        tokio::spawn(async move {
            let _ = answer(sock, &server).await;
        });
    }
}

/// A request as far as the routes need it.
struct Request {
    method: String,
    path: String,
    query: String,
    authorization: Option<String>,
    body: Vec<u8>,
}

/// Reads a request head and the body its content-length announces;
/// `Err` is the status and message to answer with.
async fn read_request(sock: &mut TcpStream) -> std::io::Result<Result<Request, (u16, String)>> {
    let mut data = Vec::with_capacity(512);
    let mut buf = [0u8; 4096];
    let end = loop {
        if let Some(i) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        if data.len() > 8192 {
            return Ok(Err((431, "request head over 8 KiB\n".into())));
        }
        let n = sock.read(&mut buf).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        data.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&data[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let line = lines.next().unwrap_or_default();
    let mut parts = line.split(' ');
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut length = 0usize;
    let mut authorization = None;
    for h in lines {
        if let Some((k, v)) = h.split_once(':') {
            if k.trim().eq_ignore_ascii_case("authorization") {
                authorization = Some(v.to_string());
            }
            if k.trim().eq_ignore_ascii_case("content-length") {
                match v.trim().parse::<usize>() {
                    Ok(n) if n <= MAX_BODY => length = n,
                    Ok(n) => {
                        return Ok(Err((
                            413,
                            format!("request body of {n} bytes: at most {MAX_BODY}\n"),
                        )))
                    }
                    Err(_) => {
                        return Ok(Err((
                            400,
                            format!("content-length {:?} is not a number\n", brief(v.trim())),
                        )))
                    }
                }
            }
        }
    }
    let mut body = data[end + 4..].to_vec();
    while body.len() < length {
        let n = sock.read(&mut buf).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        body.extend_from_slice(&buf[..n]);
    }
    body.truncate(length);
    Ok(Ok(Request {
        method: method.to_string(),
        path: path.to_string(),
        query: query.to_string(),
        authorization,
        body,
    }))
}

type Answer = (u16, &'static str, String);

async fn answer(mut sock: TcpStream, server: &Server) -> std::io::Result<()> {
    let request = tokio::time::timeout(Duration::from_secs(5), read_request(&mut sock))
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    let (head_only, page, (code, ctype, body)) = match request {
        Ok(req) => {
            let head_only = req.method == "HEAD";
            let console = req.path == "/";
            let r = match (req.method.as_str(), req.path.as_str()) {
                // Probes (kubelet's, a load balancer's) carry no secret:
                // /health and /ready answer them, /ready without its
                // reasons (they name components and brokers).
                ("GET" | "HEAD", "/ready") if !server.admits(&req) => {
                    let (code, ctype, _why) = route("/ready", &server.registry);
                    let word = if code == 200 {
                        "ready\n"
                    } else {
                        "not ready\n"
                    };
                    (code, ctype, word.into())
                }
                (_, path) if path != "/health" && !server.admits(&req) => unauthorized(),
                ("GET" | "HEAD" | "POST", "/query") => match server.query(&mut sock, req).await {
                    Some(r) => r,
                    // The client left: nobody to answer.
                    None => return Ok(()),
                },
                ("GET" | "HEAD", "/metrics") => server.metrics(),
                ("GET" | "HEAD", "/") => (
                    200,
                    "text/html; charset=utf-8",
                    crate::console::page().to_string(),
                ),
                ("GET" | "HEAD", path) => route(path, &server.registry),
                _ => (
                    405,
                    "text/plain",
                    "only GET, and POST to /query\n".to_string(),
                ),
            };
            (head_only, console && r.0 == 200, r)
        }
        Err((code, msg)) => (false, false, (code, "text/plain", msg)),
    };
    let reason = match code {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        413 => "Payload Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        _ => "Service Unavailable",
    };
    let extra = match code {
        401 => "www-authenticate: Bearer\r\n",
        503 => "retry-after: 1\r\n",
        _ if page => crate::console::headers(),
        _ => "",
    };
    let mut out = format!(
        "HTTP/1.1 {code} {reason}\r\ncontent-type: {ctype}\r\ncontent-length: {}\r\n{extra}connection: close\r\n\r\n",
        body.len()
    );
    if !head_only {
        out.push_str(&body);
    }
    let write = async {
        sock.write_all(out.as_bytes()).await?;
        sock.shutdown().await
    };
    tokio::time::timeout(Duration::from_secs(5), write)
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))?
}

fn unauthorized() -> Answer {
    (
        401,
        "text/plain",
        "this endpoint wants the header `Authorization: Bearer <token>`, the token the pipeline reads from its environment ([http] token_env, else MQLINK_HTTP_TOKEN)\n".into(),
    )
}

/// A JSON error answer, its message cut to [`MAX_ERROR`] characters.
fn error(code: u16, msg: &str) -> Answer {
    let mut body = serde_json::json!({ "error": brief(msg) }).to_string();
    body.push('\n');
    (code, "application/json", body)
}

/// `msg` cut to [`MAX_ERROR`] characters, saying how much was left out.
fn brief(msg: &str) -> String {
    match msg.char_indices().nth(MAX_ERROR) {
        None => msg.to_string(),
        Some((i, _)) => format!("{}… ({} bytes more)", &msg[..i], msg.len() - i),
    }
}

/// Returns when the client closed its side (or the connection failed):
/// its answer is no longer wanted.
async fn client_gone(sock: &mut TcpStream) {
    let mut buf = [0u8; 256];
    while let Ok(n) = sock.read(&mut buf).await {
        if n == 0 {
            return;
        }
    }
}

impl Server {
    /// The pipeline's metrics and the queries running.
    fn metrics(&self) -> Answer {
        let mut text = self.registry.prometheus();
        let running = MAX_QUERIES - self.running.available_permits();
        text.push_str(&format!(
            "# HELP mqlink_queries_running /query evaluations running (stopped ones until their work ends).\n# TYPE mqlink_queries_running gauge\nmqlink_queries_running {running}\n"
        ));
        (200, "text/plain; version=0.0.4", text)
    }

    fn admits(&self, req: &Request) -> bool {
        self.token.as_ref().is_none_or(|t| {
            t.admits(req.authorization.as_deref())
                || (req.path == "/" && t.admits_param(&req.query))
        })
    }

    /// Runs a query off the runtime the pipeline runs on, within the
    /// limits; `None` when the client left before the answer (the work is
    /// then stopped).
    async fn query(&self, sock: &mut TcpStream, req: Request) -> Option<Answer> {
        let Some(handler) = self.query.clone() else {
            return Some(error(
                501,
                "this mqlink was built without SQL (feature sql): /query is not available",
            ));
        };
        let Ok(permit) = self.running.clone().try_acquire_owned() else {
            return Some(error(
                503,
                &format!("{MAX_QUERIES} queries are running, the most /query evaluates at once: retry when one has answered"),
            ));
        };
        let limits = QueryLimits {
            memory: QUERY_MEMORY,
            deadline: Instant::now() + QUERY_TIME,
            cancel: Arc::new(AtomicBool::new(false)),
        };
        let cancel = limits.cancel.clone();
        let registry = self.registry.clone();
        // The permit goes with the work: a query stopped late still counts.
        let work = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            run_query(&req, &registry, &handler, &limits)
        });
        let answer = tokio::select! {
            r = work => Some(r.unwrap_or_else(|_| error(500, "the query failed (internal error)"))),
            _ = tokio::time::sleep(QUERY_TIME + Duration::from_millis(100)) => Some(error(
                503,
                &format!("the query ran out of time ({} s, the limit of /query) and was stopped", QUERY_TIME.as_secs()),
            )),
            _ = client_gone(sock) => None,
        };
        cancel.store(true, Ordering::Relaxed);
        answer
    }
}

/// `GET /query?sql=…` or `POST /query` with the SQL as the body: the rows
/// as JSON, or 400 and `{"error": "…"}` naming what is wrong.
fn run_query(
    req: &Request,
    registry: &Registry,
    handler: &QueryHandler,
    limits: &QueryLimits,
) -> Answer {
    let sql = if req.method == "POST" {
        match std::str::from_utf8(&req.body) {
            Ok(s) => s.to_string(),
            Err(_) => return error(400, "the query (request body) is not UTF-8"),
        }
    } else {
        match req
            .query
            .split('&')
            .find_map(|kv| kv.strip_prefix("sql="))
            .map(percent_decode)
        {
            Some(Ok(s)) => s,
            Some(Err(e)) => return error(400, &format!("parameter sql: {e}")),
            None => {
                return error(
                    400,
                    "no query: GET /query?sql=SELECT… (URL-encoded), or POST /query with the SQL as the body",
                )
            }
        }
    };
    if sql.trim().is_empty() {
        return error(400, "the query is empty");
    }
    match handler(&sql, &registry.system_tables(), limits) {
        Ok(rows) => {
            let mut body = rows.to_string();
            body.push('\n');
            (200, "application/json", body)
        }
        // Stopped by the time limit: as when the answer comes first.
        Err(e) if Instant::now() >= limits.deadline => error(503, &e),
        Err(e) => error(400, &e),
    }
}

/// A URL query parameter's value: `%XX` escapes and `+` for a space.
fn percent_decode(s: &str) -> Result<String, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = s
                    .get(i + 1..i + 3)
                    // (from_str_radix alone would take "+f")
                    .filter(|h| h.bytes().all(|c| c.is_ascii_hexdigit()))
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| {
                        format!(
                            "bad escape at byte {i}: {:?}",
                            String::from_utf8_lossy(&b[i..(i + 3).min(b.len())])
                        )
                    })?;
                out.push(hex);
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| "not UTF-8 once decoded".to_string())
}

fn route(path: &str, registry: &Registry) -> (u16, &'static str, String) {
    match path {
        "/health" => (200, "text/plain", "ok\n".into()),
        "/ready" => {
            let reasons = registry.not_ready();
            if reasons.is_empty() {
                (200, "text/plain", "ready\n".into())
            } else {
                (
                    503,
                    "text/plain",
                    format!("not ready:\n{}\n", reasons.join("\n")),
                )
            }
        }
        "/status" => {
            let mut body =
                serde_json::to_string_pretty(&registry.status_json()).unwrap_or_default();
            body.push('\n');
            (200, "application/json", body)
        }
        _ => (
            404,
            "text/plain",
            "try / (the console), /metrics, /health, /ready, /status or /query\n".into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: &str, query: &str, body: &str) -> Request {
        Request {
            method: method.into(),
            path: "/query".into(),
            query: query.into(),
            authorization: None,
            body: body.as_bytes().to_vec(),
        }
    }

    fn limits() -> QueryLimits {
        QueryLimits {
            memory: QUERY_MEMORY,
            deadline: Instant::now() + QUERY_TIME,
            cancel: Arc::default(),
        }
    }

    #[test]
    fn query_parameters_and_errors() {
        let r = Registry::default();
        let echo: QueryHandler = std::sync::Arc::new(
            |sql: &str, tables: &[crate::status::SystemTable], _: &QueryLimits| {
                if sql.starts_with("bad") {
                    return Err(format!("bad query: {sql}"));
                }
                Ok(
                    serde_json::json!({"sql": sql, "tables": tables.iter().map(|t| t.name).collect::<Vec<_>>()}),
                )
            },
        );
        let run = |req: &Request| run_query(req, &r, &echo, &limits());
        let (code, _, body) = run(&request("GET", "x=1&sql=SELECT%20*%20FROM+t", ""));
        assert_eq!(code, 200, "{body}");
        let j: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(j["sql"], "SELECT * FROM t");
        assert_eq!(
            j["tables"],
            serde_json::json!(["system.connector_status", "system.connector_logs"])
        );
        let (code, _, body) = run(&request("POST", "", "SELECT 'é'"));
        assert_eq!(
            (
                code,
                serde_json::from_str::<serde_json::Value>(&body).unwrap()["sql"].clone()
            ),
            (200, "SELECT 'é'".into())
        );
        for (req, want) in [
            (request("POST", "", "bad"), "bad query"),
            (request("GET", "", ""), "no query"),
            (request("POST", "", "  "), "empty"),
            (request("GET", "sql=%zz", ""), "parameter sql"),
        ] {
            let (code, _, body) = run(&req);
            assert_eq!(code, 400, "{body}");
            let j: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert!(j["error"].as_str().unwrap().contains(want), "{body}");
        }
        // An error quoting a long query is cut.
        let long = format!("bad {}", "x".repeat(10_000));
        let (code, _, body) = run(&request("POST", "", &long));
        assert_eq!(code, 400);
        assert!(body.len() < 400, "{body}");
        assert!(body.contains("bytes more"), "{body}");
    }

    #[test]
    fn tokens() {
        let t = Token::new("s3cret");
        assert!(t.admits(Some(" Bearer s3cret")));
        assert!(t.admits(Some("bearer s3cret")));
        for h in [
            None,
            Some("Bearer s3cre"),
            Some("Bearer s3cret2"),
            Some("s3cret"),
            Some("Bearer "),
        ] {
            assert!(!t.admits(h), "{h:?}");
        }
        assert_eq!(format!("{t:?}"), "***");
        assert!(t.admits_param("token=s3cret"));
        assert!(t.admits_param("a=1&token=s3c%72et"));
        for q in ["", "token=", "token=s3cre", "tokens=s3cret", "a=s3cret"] {
            assert!(!t.admits_param(q), "{q}");
        }
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(
            percent_decode("SELECT+*+FROM+x+WHERE+a+%3D+%27b%27").unwrap(),
            "SELECT * FROM x WHERE a = 'b'"
        );
        assert_eq!(percent_decode("%C3%A9").unwrap(), "é");
        assert!(percent_decode("%4").is_err());
        assert!(percent_decode("%zz").is_err());
        assert!(percent_decode("%+f").is_err());
        assert!(percent_decode("%ff").is_err());
        // A multi-byte character right after '%' is an error, not a panic.
        assert!(percent_decode("%é").is_err());
        assert!(percent_decode("%日").is_err());
    }
}
