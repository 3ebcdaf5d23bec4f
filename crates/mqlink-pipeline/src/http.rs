//! `/metrics`, `/health`, `/ready` and `/status` over plain HTTP/1.1.
//!
//! Four GET endpoints do not justify an HTTP framework on 2-core build
//! machines: this reads one request head (at most 8 KiB, 5 s), answers and
//! closes the connection. Each connection is its own task, so a slow
//! scraper never holds up the pipeline.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::status::Registry;

pub async fn bind(listen: &str) -> std::io::Result<TcpListener> {
    TcpListener::bind(listen).await
}

pub async fn serve(listener: TcpListener, registry: Registry) {
    loop {
        let Ok((sock, _)) = listener.accept().await else {
            // Out of file descriptors, say: do not spin.
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            continue;
        };
        let registry = registry.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(5), answer(sock, &registry)).await;
        });
    }
}

async fn answer(mut sock: TcpStream, registry: &Registry) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = sock.read(&mut buf).await?;
        if n == 0 || head.len() > 8192 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split(' ');
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let (code, ctype, body) = if method != "GET" && method != "HEAD" {
        (405, "text/plain", "only GET\n".to_string())
    } else {
        route(path, registry)
    };
    let reason = match code {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
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
            "try /metrics, /health, /ready or /status\n".into(),
        ),
    }
}
