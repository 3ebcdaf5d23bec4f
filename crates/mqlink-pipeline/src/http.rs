//! `/metrics`, `/health`, `/ready`, `/status` and `/query` over plain
//! HTTP/1.1.
//!
//! A handful of endpoints do not justify an HTTP framework on 2-core build
//! machines: this reads one request head (at most 8 KiB) and, for
//! `POST /query`, a body of at most 64 KiB, all within 5 s; answers and
//! closes the connection. Each connection is its own task, so a slow
//! scraper never holds up the pipeline.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::status::{QueryHandler, Registry};

/// The longest query text /query takes.
const MAX_BODY: usize = 64 * 1024;

pub async fn bind(listen: &str) -> std::io::Result<TcpListener> {
    TcpListener::bind(listen).await
}

pub async fn serve(listener: TcpListener, registry: Registry, query: Option<QueryHandler>) {
    loop {
        let Ok((sock, _)) = listener.accept().await else {
            // Out of file descriptors, say: do not spin.
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            continue;
        };
        let registry = registry.clone();
        let query = query.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(
                Duration::from_secs(5),
                answer(sock, &registry, query.as_ref()),
            )
            .await;
        });
    }
}

/// A request as far as the routes need it.
struct Request {
    method: String,
    path: String,
    query: String,
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
    for h in lines {
        if let Some((k, v)) = h.split_once(':') {
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
                            format!("content-length {:?} is not a number\n", v.trim()),
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
        body,
    }))
}

async fn answer(
    mut sock: TcpStream,
    registry: &Registry,
    query: Option<&QueryHandler>,
) -> std::io::Result<()> {
    let (method, (code, ctype, body)) = match read_request(&mut sock).await? {
        Ok(mut req) => {
            let r = match (req.method.as_str(), req.path.as_str()) {
                // DataFusion's work, off the runtime the pipeline runs on.
                ("GET" | "HEAD" | "POST", "/query") => {
                    let (registry, query) = (registry.clone(), query.cloned());
                    let req = Request {
                        method: req.method.clone(),
                        path: String::new(),
                        query: std::mem::take(&mut req.query),
                        body: std::mem::take(&mut req.body),
                    };
                    tokio::task::spawn_blocking(move || run_query(&req, &registry, query.as_ref()))
                        .await
                        .unwrap_or_else(|_| (500, "text/plain", "the query failed\n".to_string()))
                }
                ("GET" | "HEAD", path) => route(path, registry),
                _ => (
                    405,
                    "text/plain",
                    "only GET, and POST to /query\n".to_string(),
                ),
            };
            (req.method, r)
        }
        Err((code, msg)) => (String::new(), (code, "text/plain", msg)),
    };
    let reason = match code {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        413 => "Payload Too Large",
        431 => "Request Header Fields Too Large",
        501 => "Not Implemented",
        _ => "Service Unavailable",
    };
    let mut out = format!(
        "HTTP/1.1 {code} {reason}\r\ncontent-type: {ctype}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    if method != "HEAD" {
        out.push_str(&body);
    }
    sock.write_all(out.as_bytes()).await?;
    sock.shutdown().await
}

/// `GET /query?sql=…` or `POST /query` with the SQL as the body: the rows
/// as JSON, or 400 and `{"error": "…"}` naming what is wrong.
fn run_query(
    req: &Request,
    registry: &Registry,
    handler: Option<&QueryHandler>,
) -> (u16, &'static str, String) {
    let error = |code: u16, msg: String| {
        let mut body = serde_json::json!({ "error": msg }).to_string();
        body.push('\n');
        (code, "application/json", body)
    };
    let Some(handler) = handler else {
        return error(
            501,
            "this mqlink was built without SQL (feature sql): /query is not available".into(),
        );
    };
    let sql = if req.method == "POST" {
        match String::from_utf8(req.body.clone()) {
            Ok(s) => s,
            Err(_) => return error(400, "the query (request body) is not UTF-8".into()),
        }
    } else {
        match req
            .query
            .split('&')
            .find_map(|kv| kv.strip_prefix("sql="))
            .map(percent_decode)
        {
            Some(Ok(s)) => s,
            Some(Err(e)) => return error(400, format!("parameter sql: {e}")),
            None => {
                return error(
                    400,
                    "no query: GET /query?sql=SELECT… (URL-encoded), or POST /query with the SQL as the body".into(),
                )
            }
        }
    };
    if sql.trim().is_empty() {
        return error(400, "the query is empty".into());
    }
    match handler(&sql, &registry.system_tables()) {
        Ok(rows) => {
            let mut body = rows.to_string();
            body.push('\n');
            (200, "application/json", body)
        }
        Err(e) => error(400, e),
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
        "/metrics" => (200, "text/plain; version=0.0.4", registry.prometheus()),
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
            "try /metrics, /health, /ready, /status or /query\n".into(),
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
            body: body.as_bytes().to_vec(),
        }
    }

    #[test]
    fn query_without_sql_or_a_handler() {
        let r = Registry::default();
        let (code, _, body) = run_query(&request("GET", "sql=SELECT+1", ""), &r, None);
        assert_eq!(code, 501);
        assert!(body.contains("built without SQL"), "{body}");
        let echo: QueryHandler = std::sync::Arc::new(
            |sql: &str, tables: &[crate::status::SystemTable]| {
                if sql == "bad" {
                    return Err("bad query".into());
                }
                Ok(
                    serde_json::json!({"sql": sql, "tables": tables.iter().map(|t| t.name).collect::<Vec<_>>()}),
                )
            },
        );
        let h = Some(&echo);
        let (code, _, body) = run_query(&request("GET", "x=1&sql=SELECT%20*%20FROM+t", ""), &r, h);
        assert_eq!(code, 200, "{body}");
        let j: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(j["sql"], "SELECT * FROM t");
        assert_eq!(
            j["tables"],
            serde_json::json!(["system.connector_status", "system.connector_logs"])
        );
        let (code, _, body) = run_query(&request("POST", "", "SELECT 'é'"), &r, h);
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
            let (code, _, body) = run_query(&req, &r, h);
            assert_eq!(code, 400, "{body}");
            let j: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert!(j["error"].as_str().unwrap().contains(want), "{body}");
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
