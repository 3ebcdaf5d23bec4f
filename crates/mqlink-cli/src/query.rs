//! `mqlink query 'SELECT …'`: a query over a running pipeline's system
//! tables (`system.connector_status`, `system.connector_logs`), sent to
//! its /query on `http.listen` and printed as a table (as psql does) or as
//! JSON lines.

use std::io::Write;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use clap::Args;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// `mqlink query`.
#[derive(Args, Debug)]
pub struct QueryArgs {
    /// The query, e.g. "SELECT * FROM system.connector_status WHERE connector_name = 'mqtt_source'".
    pub sql: String,
    /// The running pipeline's HTTP address (its http.listen, or
    /// `mqlink run --http-listen`) [default: the address in
    /// ./mqlink-state/http-address, written by `mqlink run` of a pipeline
    /// file in this directory (./mqlink-state/<MQLINK_INSTANCE>/http-address
    /// with MQLINK_INSTANCE set), else http://127.0.0.1:9464].
    #[arg(long, env = "MQLINK_URL")]
    pub url: Option<String>,
    /// One JSON object per row instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Where `mqlink run` writes the address it serves, under its state directory.
const ADDRESS_FILE: &str = "mqlink-state/http-address";

/// The environment variable of the bearer token sent.
const TOKEN_ENV: &str = "MQLINK_HTTP_TOKEN";

/// The URL given, else the address a pipeline run from this directory
/// wrote (that of instance `MQLINK_INSTANCE` when it is set:
/// `mqlink-state/<instance>/http-address`), else the default.
fn url(given: Option<String>) -> String {
    given.unwrap_or_else(|| {
        let file = match std::env::var(mqlink_pipeline::spec::INSTANCE_ENV) {
            Ok(i) if !i.is_empty() => ADDRESS_FILE.replace('/', &format!("/{i}/")),
            _ => ADDRESS_FILE.to_string(),
        };
        std::fs::read_to_string(file)
            .ok()
            .map(|a| a.trim().to_string())
            .filter(|a| a.parse::<std::net::SocketAddr>().is_ok())
            .map_or_else(|| "http://127.0.0.1:9464".into(), |a| format!("http://{a}"))
    })
}

pub async fn run(args: QueryArgs) -> anyhow::Result<()> {
    let url = url(args.url);
    let addr = address(&url)?;
    let token = std::env::var(TOKEN_ENV)
        .ok()
        .filter(|t| !t.trim().is_empty());
    let answer = tokio::time::timeout(
        Duration::from_secs(10),
        post(&addr, &args.sql, token.as_deref()),
    )
    .await
    .map_err(|_| anyhow!("{url}: no answer within 10 s"))?
    .with_context(|| format!("cannot query {url} (is `mqlink run` serving http.listen there?)"))?;
    let (code, body) = answer;
    if code == 401 {
        bail!("{url}: HTTP 401: the pipeline wants a token: set {TOKEN_ENV} to the token it reads");
    }
    let json: Value = serde_json::from_str(&body)
        .map_err(|_| anyhow!("{url}: HTTP {code}, not a query answer: {}", body.trim()))?;
    if code != 200 {
        let msg = json["error"].as_str().unwrap_or(body.trim());
        bail!("query: {msg}");
    }
    let columns: Vec<String> = json["columns"]
        .as_array()
        .map(|c| {
            c.iter()
                .map(|v| v.as_str().unwrap_or("").to_string())
                .collect()
        })
        .unwrap_or_default();
    let rows: Vec<Vec<Value>> = json["rows"]
        .as_array()
        .map(|r| {
            r.iter()
                .map(|row| row.as_array().cloned().unwrap_or_default())
                .collect()
        })
        .unwrap_or_default();
    let out = if args.json {
        json_lines(&columns, &rows)
    } else {
        table(&columns, &rows)
    };
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(out.as_bytes())?;
    stdout.flush()?;
    Ok(())
}

/// `host:port` of `http://host:port[/…]` (or of `host:port`).
fn address(url: &str) -> anyhow::Result<String> {
    if url.starts_with("https://") {
        bail!("--url {url}: https is not supported (/query is plain HTTP on http.listen)");
    }
    let rest = url.strip_prefix("http://").unwrap_or(url);
    let host = rest.split('/').next().unwrap_or("");
    if host.is_empty() || !host.contains(':') {
        bail!("--url {url:?}: expected http://HOST:PORT, e.g. http://127.0.0.1:9464");
    }
    Ok(host.to_string())
}

/// POST /query; the status code and the body.
async fn post(addr: &str, sql: &str, token: Option<&str>) -> std::io::Result<(u16, String)> {
    let mut sock = tokio::net::TcpStream::connect(addr).await?;
    let auth = token.map_or(String::new(), |t| {
        format!("authorization: Bearer {}\r\n", t.trim())
    });
    let req = format!(
        "POST /query HTTP/1.1\r\nhost: {addr}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\n{auth}connection: close\r\n\r\n{sql}",
        sql.len()
    );
    sock.write_all(req.as_bytes()).await?;
    let mut data = Vec::new();
    // The answer of a pipeline's /query is small; a bound keeps a wrong
    // address from filling memory.
    (&mut sock).take(64 << 20).read_to_end(&mut data).await?;
    let text = String::from_utf8_lossy(&data);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other("not an HTTP answer"))?;
    Ok((code, body.to_string()))
}

fn json_lines(columns: &[String], rows: &[Vec<Value>]) -> String {
    let mut out = String::new();
    for r in rows {
        let obj: serde_json::Map<String, Value> =
            columns.iter().cloned().zip(r.iter().cloned()).collect();
        out.push_str(&Value::Object(obj).to_string());
        out.push('\n');
    }
    out
}

/// A cell as psql shows it: NULL empty, text as it is (one line), the rest as JSON.
fn cell(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.replace('\n', "\\n"),
        v => v.to_string(),
    }
}

/// An aligned table, numbers right-aligned, and a row count.
fn table(columns: &[String], rows: &[Vec<Value>]) -> String {
    let cells: Vec<Vec<String>> = rows.iter().map(|r| r.iter().map(cell).collect()).collect();
    let width = |i: usize| {
        cells
            .iter()
            .filter_map(|r| r.get(i))
            .map(|c| c.chars().count())
            .chain(std::iter::once(columns[i].chars().count()))
            .max()
            .unwrap_or(0)
    };
    let widths: Vec<usize> = (0..columns.len()).map(width).collect();
    let numeric: Vec<bool> = (0..columns.len())
        .map(|i| {
            rows.iter().any(|r| r.get(i).is_some_and(Value::is_number))
                && rows
                    .iter()
                    .all(|r| r.get(i).is_none_or(|v| v.is_number() || v.is_null()))
        })
        .collect();
    let pad = |s: &str, w: usize, right: bool| {
        let fill = " ".repeat(w.saturating_sub(s.chars().count()));
        if right {
            format!("{fill}{s}")
        } else {
            format!("{s}{fill}")
        }
    };
    let mut out = String::new();
    let header: Vec<String> = columns
        .iter()
        .zip(&widths)
        .map(|(c, &w)| {
            // Centred, as psql does.
            let left = (w - c.chars().count()) / 2;
            pad(&format!("{}{c}", " ".repeat(left)), w, false)
        })
        .collect();
    out.push_str(format!(" {}", header.join(" | ")).trim_end());
    out.push('\n');
    out.push_str(
        &widths
            .iter()
            .map(|&w| "-".repeat(w + 2))
            .collect::<Vec<_>>()
            .join("+"),
    );
    out.push('\n');
    for r in &cells {
        let line: Vec<String> = (0..columns.len())
            .map(|i| pad(r.get(i).map_or("", String::as_str), widths[i], numeric[i]))
            .collect();
        out.push_str(format!(" {}", line.join(" | ")).trim_end());
        out.push('\n');
    }
    out.push_str(&format!(
        "({} row{})\n",
        rows.len(),
        if rows.len() == 1 { "" } else { "s" }
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_table_as_psql_prints_it() {
        let t = table(
            &["name".into(), "n".into(), "error".into()],
            &[
                vec![json!("t"), json!(12), Value::Null],
                vec![json!("long_name"), json!(3), json!("a\nb")],
            ],
        );
        assert_eq!(
            t,
            "   name    | n  | error\n-----------+----+-------\n t         | 12 |\n long_name |  3 | a\\nb\n(2 rows)\n"
        );
        assert_eq!(table(&["x".into()], &[]), " x\n---\n(0 rows)\n");
    }

    #[test]
    fn urls() {
        assert_eq!(address("http://127.0.0.1:9464").unwrap(), "127.0.0.1:9464");
        assert_eq!(address("localhost:1/x").unwrap(), "localhost:1");
        assert!(address("https://h:1").is_err());
        assert!(address("http://h").is_err());
    }
}
