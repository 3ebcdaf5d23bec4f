//! A schema registry client for the Confluent wire format: `GET
//! {url}/schemas/ids/{id}` over plain HTTP/1.1, answers cached by id.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::avro::AvroSchema;

#[derive(Debug)]
pub struct Registry {
    url: String,
    cache: Mutex<HashMap<u32, Arc<AvroSchema>>>,
}

impl PartialEq for Registry {
    fn eq(&self, other: &Self) -> bool {
        self.url == other.url
    }
}

impl Registry {
    /// `http://host:port[/prefix]`; https is not supported yet.
    pub fn new(url: &str) -> Result<Registry, String> {
        if !url.starts_with("http://") {
            return Err(format!(
                "schema_registry_url {url:?} must start with http://"
            ));
        }
        Ok(Registry {
            url: url.trim_end_matches('/').to_owned(),
            cache: Mutex::default(),
        })
    }

    pub fn cached(&self, id: u32) -> Option<Arc<AvroSchema>> {
        self.cache.lock().ok()?.get(&id).cloned()
    }

    /// Fetches and caches schema `id`.
    pub async fn fetch(&self, id: u32) -> Result<Arc<AvroSchema>, String> {
        let rest = &self.url["http://".len()..];
        let (authority, prefix) = rest.split_once('/').map_or((rest, ""), |(a, p)| (a, p));
        let path = format!(
            "/{prefix}{}schemas/ids/{id}",
            if prefix.is_empty() { "" } else { "/" }
        );
        let host_port = if authority.contains(':') {
            authority.to_owned()
        } else {
            format!("{authority}:80")
        };
        let mut s = tokio::net::TcpStream::connect(&host_port)
            .await
            .map_err(|e| format!("schema registry {}: {e}", self.url))?;
        let req = format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\nAccept: application/json\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut resp = Vec::new();
        s.read_to_end(&mut resp).await.map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&resp);
        let (head, body) = text
            .split_once("\r\n\r\n")
            .ok_or_else(|| format!("schema registry {}: malformed HTTP answer", self.url))?;
        let status = head.split_whitespace().nth(1).unwrap_or("");
        if status != "200" {
            return Err(format!(
                "schema registry {} answered {status} for schema id {id}",
                self.url
            ));
        }
        let body = if head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            dechunk(body)
        } else {
            body.to_owned()
        };
        let v: serde_json::Value =
            serde_json::from_str(&body).map_err(|e| format!("schema id {id}: {e}"))?;
        let text = v
            .get("schema")
            .and_then(|s| s.as_str())
            .ok_or_else(|| format!("schema id {id}: no \"schema\" in the answer"))?;
        let schema = Arc::new(AvroSchema::parse(text).map_err(|e| format!("schema id {id}: {e}"))?);
        if let Ok(mut c) = self.cache.lock() {
            c.insert(id, schema.clone());
        }
        Ok(schema)
    }
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}
