//! A schema registry client for the Confluent wire format: `GET
//! {url}/schemas/ids/{id}` over HTTP or HTTPS (with the `tls` feature),
//! answers cached by id. Every request is bounded by a timeout, and errors
//! name the registry's URL without its credentials.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;

use super::avro::AvroSchema;

/// Schemas are small; an answer larger than this is not a schema.
const MAX_ANSWER_BYTES: u64 = 16 << 20;

/// A Confluent-compatible schema registry: `http[s]://[user:password@]host[:port][/prefix]`.
///
/// User and password in the URL are sent as HTTP basic authentication and
/// never printed.
pub struct Registry {
    /// The URL without credentials and trailing `/`.
    url: String,
    /// `Authorization` header value, from the URL's user info.
    authorization: Option<crate::Secret>,
    timeout: Duration,
    agent: ureq::Agent,
    cache: Mutex<HashMap<u32, Arc<AvroSchema>>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("url", &self.url)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl PartialEq for Registry {
    fn eq(&self, other: &Self) -> bool {
        self.url == other.url && self.authorization == other.authorization
    }
}

impl Registry {
    /// How long one request may take, connecting included, unless
    /// [`timeout`](Self::timeout) says otherwise.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

    /// A client for the registry at `url`; https uses the system's root
    /// certificates (see [`ca_file`](Self::ca_file)).
    pub fn new(url: &str) -> Result<Registry, String> {
        let shown = crate::secret::redact(url);
        let bad = |why: &str| format!("schema_registry_url {shown:?} {why}");
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| bad("must start with http:// or https://"))?;
        let scheme = scheme.to_ascii_lowercase();
        match scheme.as_str() {
            "http" => {}
            "https" if cfg!(feature = "tls") => {}
            "https" => return Err(bad("needs TLS support (feature \"tls\")")),
            _ => return Err(bad("must start with http:// or https://")),
        }
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(end);
        let (userinfo, host) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        if host.is_empty() {
            return Err(bad("has no host"));
        }
        let authorization = userinfo.map(|u| {
            let basic = base64::engine::general_purpose::STANDARD.encode(u);
            crate::Secret::new(format!("Basic {basic}"))
        });
        let mut registry = Registry {
            url: format!("{scheme}://{host}{}", path.trim_end_matches('/')),
            authorization,
            timeout: Self::DEFAULT_TIMEOUT,
            agent: ureq::Agent::new_with_defaults(),
            cache: Mutex::default(),
        };
        registry.agent = registry.make_agent(None)?;
        Ok(registry)
    }

    /// Bounds each request (connecting, sending, reading the answer).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        // Rebuilding with the same roots cannot fail where `new` did not.
        if let Ok(agent) = self.make_agent(None) {
            self.agent = agent;
        }
        self
    }

    /// Trusts the CA certificates of this PEM file for https instead of the
    /// system's (a private registry's CA).
    #[cfg(feature = "tls")]
    pub fn ca_file(mut self, path: &Path) -> Result<Self, String> {
        self.agent = self.make_agent(Some(path))?;
        Ok(self)
    }

    #[cfg_attr(not(feature = "tls"), allow(unused_variables))]
    fn make_agent(&self, ca_file: Option<&Path>) -> Result<ureq::Agent, String> {
        let config = ureq::Agent::config_builder()
            .timeout_global(Some(self.timeout))
            .http_status_as_error(false)
            .user_agent(concat!("mqlink/", env!("CARGO_PKG_VERSION")));
        #[cfg(feature = "tls")]
        let config = if self.url.starts_with("https://") {
            config.tls_config(tls_config(ca_file)?)
        } else {
            config
        };
        Ok(config.build().new_agent())
    }

    /// A schema fetched before.
    pub fn cached(&self, id: u32) -> Option<Arc<AvroSchema>> {
        self.cache.lock().ok()?.get(&id).cloned()
    }

    /// Fetches and caches schema `id`. Fails within the timeout, naming the
    /// registry's URL (without credentials).
    pub async fn fetch(&self, id: u32) -> Result<Arc<AvroSchema>, String> {
        let agent = self.agent.clone();
        let url = format!("{}/schemas/ids/{id}", self.url);
        let authorization = self.authorization.clone();
        let shown = self.url.clone();
        let timeout = self.timeout;
        // ureq blocks; the runtime's threads must not.
        let answer = tokio::task::spawn_blocking(move || {
            let mut request = agent.get(&url).header("Accept", "application/json");
            if let Some(a) = &authorization {
                request = request.header("Authorization", a.expose());
            }
            let mut response = request.call().map_err(|e| match e {
                ureq::Error::Timeout(_) => {
                    format!("schema registry {shown}: no answer within {timeout:?} ({e})")
                }
                e => format!("schema registry {shown}: {e}"),
            })?;
            let status = response.status().as_u16();
            let body = response
                .body_mut()
                .with_config()
                .limit(MAX_ANSWER_BYTES)
                .read_to_string()
                .map_err(|e| format!("schema registry {shown}: reading the answer: {e}"))?;
            if status != 200 {
                return Err(format!(
                    "schema registry {shown} answered {status} for schema id {id}"
                ));
            }
            Ok(body)
        })
        .await
        .map_err(|e| format!("schema registry {}: {e}", self.url))??;
        let v: serde_json::Value =
            serde_json::from_str(&answer).map_err(|e| format!("schema id {id}: {e}"))?;
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

/// Rustls with ring (as the MQTT connections) and the system's roots or
/// those of `ca_file`: the TLS of every HTTP client of mqlink (this
/// registry, the pipeline's HTTP and InfluxDB sinks).
#[cfg(feature = "tls")]
pub fn tls_config(ca_file: Option<&Path>) -> Result<ureq::tls::TlsConfig, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::CertificateDer;
    use ureq::tls::{Certificate, RootCerts, TlsConfig, TlsProvider};

    let roots: Vec<Certificate<'static>> = match ca_file {
        Some(path) => {
            let err = |e: &dyn std::fmt::Display| format!("ca_file {}: {e}", path.display());
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| err(&e))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| err(&e))?;
            if certs.is_empty() {
                return Err(err(&"no PEM certificate in it"));
            }
            certs
                .iter()
                .map(|c| Certificate::from_der(c.as_ref()).to_owned())
                .collect()
        }
        None => rustls_native_certs::load_native_certs()
            .certs
            .iter()
            .map(|c| Certificate::from_der(c.as_ref()).to_owned())
            .collect(),
    };
    Ok(TlsConfig::builder()
        .provider(TlsProvider::Rustls)
        .root_certs(RootCerts::Specific(Arc::new(roots)))
        .unversioned_rustls_crypto_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .build())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;

    const SCHEMA: &str = r#"{"schema":"{\"type\":\"record\",\"name\":\"r\",\"fields\":[{\"name\":\"a\",\"type\":\"long\"}]}"}"#;

    /// A one-connection-at-a-time HTTP server answering every request with
    /// `answer`; returns its address and the requests it saw.
    fn serve(answer: String, connections: usize) -> (String, std::sync::mpsc::Receiver<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for _ in 0..connections {
                let Ok((mut s, _)) = listener.accept() else {
                    return;
                };
                let mut req = Vec::new();
                let mut buf = [0u8; 1024];
                while !req.ends_with(b"\r\n\r\n") {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = tx.send(String::from_utf8_lossy(&req).into_owned());
                let _ = s.write_all(answer.as_bytes());
            }
        });
        (addr, rx)
    }

    fn http_answer(status: &str, body: &str) -> String {
        format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    }

    #[tokio::test]
    async fn fetches_caches_and_authenticates() {
        let (addr, requests) = serve(http_answer("200 OK", SCHEMA), 1);
        let r = Registry::new(&format!("http://key:s3cret@{addr}/prefix/")).unwrap();
        assert!(!format!("{r:?}").contains("s3cret"));
        assert!(r.cached(7).is_none());
        r.fetch(7).await.unwrap();
        assert!(r.cached(7).is_some());
        let req = requests.recv().unwrap();
        assert!(
            req.starts_with("GET /prefix/schemas/ids/7 HTTP/1.1\r\n"),
            "{req}"
        );
        // key:s3cret in base64.
        assert!(
            req.contains("authorization: Basic a2V5OnMzY3JldA==\r\n")
                || req.contains("Authorization: Basic a2V5OnMzY3JldA==\r\n"),
            "{req}"
        );
    }

    #[tokio::test]
    async fn an_error_status_names_the_url_and_id() {
        let (addr, _requests) = serve(http_answer("404 Not Found", "{}"), 1);
        let e = Registry::new(&format!("http://u:pw@{addr}"))
            .unwrap()
            .fetch(3)
            .await
            .unwrap_err();
        assert_eq!(
            e,
            format!("schema registry http://{addr} answered 404 for schema id 3")
        );
    }

    /// A registry that accepts the connection and never answers: the fetch
    /// fails within the timeout, naming the URL without the password.
    #[tokio::test]
    async fn a_silent_registry_times_out() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let hold = std::thread::spawn(move || {
            let conn = listener.accept();
            std::thread::sleep(Duration::from_secs(5));
            drop(conn);
        });
        let r = Registry::new(&format!("http://u:pw@{addr}"))
            .unwrap()
            .timeout(Duration::from_millis(300));
        let started = std::time::Instant::now();
        let e = r.fetch(1).await.unwrap_err();
        let took = started.elapsed();
        assert!(took < Duration::from_secs(2), "took {took:?}");
        assert!(took >= Duration::from_millis(300), "took {took:?}");
        assert!(
            e.starts_with(&format!(
                "schema registry http://{addr}: no answer within 300ms"
            )),
            "{e}"
        );
        assert!(!e.contains("pw"), "{e}");
        drop(hold);
    }

    #[tokio::test]
    async fn nobody_listening_names_the_url() {
        let addr = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let e = Registry::new(&format!("http://{addr}"))
            .unwrap()
            .fetch(1)
            .await
            .unwrap_err();
        assert!(
            e.starts_with(&format!("schema registry http://{addr}: ")),
            "{e}"
        );
    }

    /// https against a local TLS server (`openssl s_server -WWW` serving
    /// the schema as a file): verified with the test CA, refused with the
    /// system's roots.
    #[cfg(feature = "tls")]
    #[tokio::test]
    async fn https_with_a_private_ca() {
        let dir = tempfile_dir();
        let certs = testkit::Certs::generate(&dir.join("certs"), "registry test CA");
        std::fs::create_dir_all(dir.join("www/schemas/ids")).unwrap();
        std::fs::write(dir.join("www/schemas/ids/5"), SCHEMA).unwrap();
        let port = testkit::free_port();
        let mut server = std::process::Command::new("openssl")
            .args([
                "s_server",
                "-quiet",
                "-WWW",
                "-accept",
                &port.to_string(),
                "-cert",
            ])
            .arg(&certs.server_cert)
            .arg("-key")
            .arg(&certs.server_key)
            .current_dir(dir.join("www"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let up = (0..100).any(|_| {
            std::thread::sleep(Duration::from_millis(50));
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        let url = format!("https://localhost:{port}");
        let trusted = Registry::new(&url).unwrap().ca_file(&certs.ca).unwrap();
        let fetched = if up {
            Some(trusted.fetch(5).await)
        } else {
            None
        };
        let untrusted = Registry::new(&url).unwrap().fetch(5).await;
        let _ = server.kill();
        let _ = server.wait();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(up, "openssl s_server did not start");
        fetched.unwrap().unwrap();
        let e = untrusted.unwrap_err();
        assert!(e.starts_with(&format!("schema registry {url}: ")), "{e}");
        assert!(
            e.to_lowercase().contains("certificate") || e.contains("UnknownIssuer"),
            "{e}"
        );
    }

    fn tempfile_dir() -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(testkit::unique_id("mqlink-registry"));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn bad_urls() {
        for (url, why) in [
            ("ftp://h", "must start with http:// or https://"),
            ("h:8081", "must start with http:// or https://"),
            ("http://", "has no host"),
        ] {
            let e = Registry::new(url).unwrap_err();
            assert!(e.ends_with(why), "{url}: {e}");
        }
        let e = Registry::new("ftp://u:secret@h").unwrap_err();
        assert!(!e.contains("secret"), "{e}");
    }
}
