//! The web console at `GET /`: one page, embedded in the binary, that
//! polls `/status` and draws the pipeline as a graph (connections, the
//! embedded broker, sources, stages, sinks), each source's accounting,
//! small charts of rate and lag, the recent faults from
//! `system.connector_logs`, and a query box over `/query`.
//!
//! The page is read-only: it only ever GETs `/status` and POSTs queries,
//! which are read-only themselves. Its history (the charts) lives in the
//! browser, bounded there; the server keeps nothing for it.
//!
//! The page's HTML, CSS and JavaScript are plain files in this directory,
//! put together into one self-contained document (no CDN, nothing to
//! build). With a token, the browser cannot send a header when it opens
//! the page, so `/` also takes the token once as `?token=…`; the page then
//! drops it from the address, keeps it in `sessionStorage` and sends it as
//! `Authorization: Bearer` on every request.

use std::sync::LazyLock;

use serde_json::{json, Value};

use crate::spec::Pipeline;

const HTML: &str = include_str!("index.html");
const CSS: &str = include_str!("console.css");
const JS: &str = include_str!("console.js");

/// The document served at `/`.
static PAGE: LazyLock<String> =
    LazyLock::new(|| HTML.replacen("/*CSS*/", CSS, 1).replacen("/*JS*/", JS, 1));

/// The console's page.
pub fn page() -> &'static str {
    &PAGE
}

/// Headers the page is served with: it runs only its own script and
/// style (by their SHA-256), loads nothing from elsewhere and talks only
/// to this server.
static HEADERS: LazyLock<String> = LazyLock::new(|| {
    format!(
        "content-security-policy: default-src 'none'; script-src '{}'; style-src '{}'; connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'\r\ncache-control: no-store\r\nx-content-type-options: nosniff\r\nreferrer-policy: no-referrer\r\n",
        sha256(JS),
        sha256(CSS)
    )
});

/// The page's headers, each ending in CRLF.
pub fn headers() -> &'static str {
    &HEADERS
}

/// A CSP source for inline content: `sha256-<base64 of its SHA-256>`.
fn sha256(text: &str) -> String {
    use base64::Engine as _;
    let digest = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
    format!(
        "sha256-{}",
        base64::engine::general_purpose::STANDARD.encode(digest.as_ref())
    )
}

/// What the pipeline is made of, as `/status` shows it under `topology`:
/// the console draws its graph from this, and shows each part's
/// configuration as loaded with its secrets masked ([`crate::masked`]).
#[derive(Clone, Debug, Default)]
pub struct Topology(Value);

impl Topology {
    pub fn of(p: &Pipeline) -> Topology {
        let connections: Vec<Value> = p
            .connections
            .iter()
            .map(|(name, c)| {
                let brokers: Vec<String> = c
                    .broker
                    .to_vec()
                    .iter()
                    .map(|b| mqlink::secret::redact(b).into_owned())
                    .collect();
                json!({
                    "name": name,
                    "brokers": brokers,
                    "embedded": c.is_embedded(),
                    "protocol": c.protocol.map(|v| format!("{v:?}")),
                    "clean_session": c.clean_session,
                    "config": p.shown.get(&format!("connections.{name}")),
                })
            })
            .collect();
        let sources: Vec<Value> = p
            .sources
            .iter()
            .map(|(name, s)| {
                json!({
                    "name": name,
                    "connection": s.connection().map(|(c, _)| c),
                    "parallelism": s.connection().map(|(_, n)| n),
                    "stage": p.transforms.get(name).map(|t| t.kind()),
                    "config": p.shown.get(&format!("sources.{name}")),
                })
            })
            .collect();
        let sinks: Vec<Value> = p
            .sinks
            .iter()
            .map(|(name, s)| {
                json!({
                    "name": name,
                    "inputs": s.inputs,
                    "connection": s.kind.connection().map(|(c, _)| c),
                    "parallelism": s.kind.connection().map(|(_, n)| n),
                    "config": p.shown.get(&format!("sinks.{name}")),
                })
            })
            .collect();
        Topology(json!({
            "connections": connections,
            "sources": sources,
            "sinks": sinks,
            "stall_timeout": p.run.stall_timeout,
        }))
    }

    pub fn to_json(&self) -> Value {
        self.0.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_is_whole_and_self_contained() {
        let p = page();
        assert!(!p.contains("/*CSS*/") && !p.contains("/*JS*/"));
        assert!(p.contains("function poll"), "the script is inlined");
        assert!(headers().contains("script-src 'sha256-"), "{}", headers());
        // The script and style cannot end their elements early.
        assert!(!JS.contains("</script") && !CSS.contains("</style"));
        // Nothing is loaded from elsewhere.
        for outside in ["https://", "src=", "href=\"http", "//cdn"] {
            assert!(!p.contains(outside), "{outside}");
        }
    }

    #[test]
    fn topology_names_every_part_and_no_credentials() {
        let p = crate::parse(
            r#"
[connections.far]
broker = "mqtt://h:1883"
username = "u"
password = "pw-secret"
[connections.local]
broker = "embedded"
[sources.gen]
type = "generator"
count = 1
[sinks.up]
type = "mqtt"
inputs = ["gen"]
connection = "local"
topic = "t"
[sources.in]
type = "mqtt"
connection = "local"
topics = ["t"]
[sinks.out]
type = "mqtt"
inputs = ["in"]
connection = "far"
topic = "u"
"#,
            false,
            &|_| None,
        )
        .unwrap();
        let t = Topology::of(&p).to_json();
        let text = t.to_string();
        assert!(!text.contains("pw-secret"), "{text}");
        let named = |list: &str, name: &str| {
            t[list]
                .as_array()
                .unwrap()
                .iter()
                .find(|x| x["name"] == name)
                .unwrap_or_else(|| panic!("{list} {name}: {t}"))
                .clone()
        };
        assert_eq!(named("connections", "far")["brokers"][0], "mqtt://h:1883");
        assert_eq!(named("connections", "local")["embedded"], true);
        assert_eq!(named("sinks", "out")["inputs"], json!(["in"]));
        assert_eq!(named("sinks", "out")["connection"], "far");
        assert_eq!(named("sources", "gen")["connection"], Value::Null);
        assert_eq!(named("sources", "in")["connection"], "local");
        assert_eq!(named("connections", "far")["config"]["password"], "***");
        assert_eq!(named("connections", "far")["config"]["username"], "u");
        assert_eq!(named("sinks", "out")["config"]["topic"], "u");
        assert_eq!(named("sources", "gen")["config"]["count"], 1);
    }
}
