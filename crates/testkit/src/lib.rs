//! Real brokers for tests: a Mosquitto process per test, on free ports,
//! with its own config and data directory, killed on drop. Certificates are
//! made per test with the `openssl` command.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

pub use tempfile::TempDir;

/// `base` with a few random edits (a byte replaced by one of `alphabet`,
/// removed, or one inserted): user input for tests that no parser panics.
pub fn mutate(
    rng: &mut fastrand::Rng,
    base: &str,
    alphabet: &[u8],
    edits: std::ops::Range<usize>,
) -> String {
    let mut b = base.as_bytes().to_vec();
    for _ in 0..rng.usize(edits) {
        let at = rng.usize(..b.len());
        match rng.u8(..3) {
            0 => b[at] = alphabet[rng.usize(..alphabet.len())],
            1 => {
                b.remove(at);
            }
            _ => b.insert(at, alphabet[rng.usize(..alphabet.len())]),
        }
    }
    String::from_utf8_lossy(&b).into_owned()
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0")
}

/// A client id no other test run uses.
pub fn unique_id(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed),
        SystemNanos::now()
    )
}

struct SystemNanos;
impl SystemNanos {
    fn now() -> u32 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0)
    }
}

/// Certificates for a TLS test: a CA, a server certificate for
/// localhost/127.0.0.1, and a client certificate, all signed by the CA.
pub struct Certs {
    pub dir: PathBuf,
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Certs {
    /// Makes a CA named `ca_name` and certificates signed by it in `dir`.
    pub fn generate(dir: &Path, ca_name: &str) -> Certs {
        std::fs::create_dir_all(dir).unwrap();
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        let subj = format!("/CN={ca_name}");
        let mut a = vec!["req", "-x509"];
        a.extend(ec);
        a.extend([
            "-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", &subj,
        ]);
        openssl(dir, &a);
        std::fs::write(dir.join("server.ext"), "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n").unwrap();
        std::fs::write(
            dir.join("client.ext"),
            "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n",
        )
        .unwrap();
        for who in ["server", "client"] {
            let key = format!("{who}.key");
            let csr = format!("{who}.csr");
            let crt = format!("{who}.crt");
            let ext = format!("{who}.ext");
            let cn = format!(
                "/CN={}",
                if who == "server" {
                    "localhost"
                } else {
                    "mqlink-test-client"
                }
            );
            let mut a = vec!["req"];
            a.extend(ec);
            a.extend(["-keyout", &key, "-out", &csr, "-subj", &cn]);
            openssl(dir, &a);
            openssl(
                dir,
                &[
                    "x509",
                    "-req",
                    "-in",
                    &csr,
                    "-CA",
                    "ca.crt",
                    "-CAkey",
                    "ca.key",
                    "-CAcreateserial",
                    "-out",
                    &crt,
                    "-days",
                    "2",
                    "-extfile",
                    &ext,
                ],
            );
        }
        Certs {
            dir: dir.to_owned(),
            ca: dir.join("ca.crt"),
            server_cert: dir.join("server.crt"),
            server_key: dir.join("server.key"),
            client_cert: dir.join("client.crt"),
            client_key: dir.join("client.key"),
        }
    }
}

impl Certs {
    /// Certificates made exactly as the mosquitto-tls man page says (RSA,
    /// `openssl x509 -req` without extensions: X.509 v1 server and client
    /// certificates), plus `server_san.crt`, the same server key in a v3
    /// certificate with a subjectAltName for 127.0.0.1 and localhost.
    pub fn mosquitto_tls_recipe(dir: &Path) -> Certs {
        std::fs::create_dir_all(dir).unwrap();
        openssl(
            dir,
            &[
                "req",
                "-new",
                "-x509",
                "-days",
                "2",
                "-extensions",
                "v3_ca",
                "-keyout",
                "ca.key",
                "-out",
                "ca.crt",
                "-nodes",
                "-subj",
                "/CN=recipe-ca",
            ],
        );
        for (who, cn) in [("server", "localhost"), ("client", "recipe-client")] {
            let (key, csr, crt) = (
                format!("{who}.key"),
                format!("{who}.csr"),
                format!("{who}.crt"),
            );
            openssl(dir, &["genrsa", "-out", &key, "2048"]);
            openssl(
                dir,
                &[
                    "req",
                    "-out",
                    &csr,
                    "-key",
                    &key,
                    "-new",
                    "-subj",
                    &format!("/CN={cn}"),
                ],
            );
            openssl(
                dir,
                &[
                    "x509",
                    "-req",
                    "-in",
                    &csr,
                    "-CA",
                    "ca.crt",
                    "-CAkey",
                    "ca.key",
                    "-CAcreateserial",
                    "-out",
                    &crt,
                    "-days",
                    "2",
                ],
            );
        }
        std::fs::write(
            dir.join("san.ext"),
            "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
        )
        .unwrap();
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                "server_san.crt",
                "-days",
                "2",
                "-extfile",
                "san.ext",
            ],
        );
        Certs {
            dir: dir.to_owned(),
            ca: dir.join("ca.crt"),
            server_cert: dir.join("server.crt"),
            server_key: dir.join("server.key"),
            client_cert: dir.join("client.crt"),
            client_key: dir.join("client.key"),
        }
    }
}

/// How the broker is set up.
#[derive(Default, Clone)]
pub struct MosquittoConfig {
    /// (user, password) pairs; when given, anonymous clients are refused.
    pub users: Vec<(String, String)>,
    /// Keep sessions and queued messages on disk across restarts.
    pub persistence: bool,
    /// A TLS listener; `require_certificate` makes it mutual TLS.
    pub tls: bool,
    pub require_certificate: bool,
    /// A WebSocket listener.
    pub websockets: bool,
    /// Lines appended to the config as they are.
    pub extra: Vec<String>,
    /// Mosquitto's own queue limits (`max_queued_messages 1000`: a slow
    /// client's excess is dropped), as installed, instead of none.
    pub queue_defaults: bool,
}

/// A Mosquitto broker process owned by a test.
pub struct Mosquitto {
    child: Option<Child>,
    pub dir: TempDir,
    pub port: u16,
    pub tls_port: Option<u16>,
    pub ws_port: Option<u16>,
    pub certs: Option<Certs>,
    conf: PathBuf,
}

impl Mosquitto {
    /// An anonymous broker on a free port.
    pub fn start() -> Mosquitto {
        Self::with(MosquittoConfig::default())
    }

    pub fn with(cfg: MosquittoConfig) -> Mosquitto {
        let dir = tempfile::Builder::new()
            .prefix("mqlink-mosq-")
            .tempdir()
            .unwrap();
        let certs = (cfg.tls).then(|| Certs::generate(&dir.path().join("certs"), "mqlink test CA"));
        let conf = dir.path().join("mosquitto.conf");
        let mut m = Mosquitto {
            child: None,
            dir,
            port: 0,
            tls_port: None,
            ws_port: None,
            certs,
            conf,
        };
        for _ in 0..5 {
            m.port = free_port();
            m.tls_port = cfg.tls.then(free_port);
            m.ws_port = cfg.websockets.then(free_port);
            m.write_conf(&cfg);
            if m.spawn() {
                return m;
            }
            // A port was taken between probing and binding: try others.
        }
        panic!("mosquitto did not start: {}", m.log());
    }

    fn write_conf(&self, cfg: &MosquittoConfig) {
        let dir = self.dir.path();
        let mut c = String::new();
        // Started as root, mosquitto would switch to the `mosquitto` user and
        // could not write its log and persistence into the test's directory.
        c += "user root\n";
        c += &format!("listener {} 127.0.0.1\n", self.port);
        if let (Some(p), Some(certs)) = (self.tls_port, &self.certs) {
            c += &format!(
                "listener {p} 127.0.0.1\ncafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate {}\n",
                certs.ca.display(),
                certs.server_cert.display(),
                certs.server_key.display(),
                cfg.require_certificate
            );
        }
        if let Some(p) = self.ws_port {
            c += &format!("listener {p} 127.0.0.1\nprotocol websockets\n");
        }
        if cfg.users.is_empty() {
            c += "allow_anonymous true\n";
        } else {
            let pw = dir.join("passwd");
            std::fs::write(&pw, "").unwrap();
            for (u, p) in &cfg.users {
                let st = Command::new("mosquitto_passwd")
                    .arg("-b")
                    .arg(&pw)
                    .args([u, p])
                    .status()
                    .expect("mosquitto_passwd");
                assert!(st.success());
            }
            c += &format!("allow_anonymous false\npassword_file {}\n", pw.display());
        }
        if cfg.persistence {
            c += &format!(
                "persistence true\npersistence_location {}/\nautosave_interval 1\n",
                dir.display()
            );
        }
        // No queue limits: tests and benchmarks queue 10^5 messages for offline sessions.
        if !cfg.queue_defaults {
            c += "max_queued_messages 0\nmax_queued_bytes 0\n";
        }
        c += &format!("log_dest file {}\n", self.log_path().display());
        c += "log_type error\nlog_type warning\nlog_type notice\nlog_type information\n";
        if std::env::var_os("MQLINK_TEST_BROKER_DEBUG").is_some() {
            c += "log_type all\n";
            eprintln!("mosquitto log: {}", self.log_path().display());
        }
        for line in &cfg.extra {
            c += line;
            c += "\n";
        }
        std::fs::write(&self.conf, c).unwrap();
    }

    /// Starts the process and waits until it says it is running, which it
    /// does only after binding every listener. (Probing the ports is not
    /// enough: another test's broker may hold the same port a moment.)
    fn spawn(&mut self) -> bool {
        let log_before = std::fs::metadata(self.log_path())
            .map(|m| m.len())
            .unwrap_or(0);
        let child = Command::new(mosquitto_bin())
            .arg("-c")
            .arg(&self.conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start mosquitto (is it installed? the test command installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(Ok(Some(_))) = self.child.as_mut().map(|c| c.try_wait()) {
                self.child = None;
                return false;
            }
            let log = std::fs::read(self.log_path()).unwrap_or_default();
            let new = String::from_utf8_lossy(log.get(log_before as usize..).unwrap_or_default());
            if new.contains(" running") {
                return true;
            }
            if new.contains("Error") {
                // Address in use: it is exiting; let the caller pick other ports.
                if let Some(mut c) = self.child.take() {
                    let _ = c.kill();
                    let _ = c.wait();
                }
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!(
            "mosquitto did not start listening: see {}",
            self.log_path().display()
        );
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }
    pub fn tls_url(&self) -> String {
        format!("mqtts://localhost:{}", self.tls_port.expect("tls listener"))
    }
    pub fn ws_url(&self) -> String {
        format!("ws://127.0.0.1:{}/mqtt", self.ws_port.expect("ws listener"))
    }
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("mosquitto.log")
    }
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn signal(&mut self, sig: &str) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args([sig, &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
    }

    /// SIGTERM: a clean stop (persistence is written).
    pub fn stop(&mut self) {
        self.signal("-TERM");
    }

    /// SIGKILL: a crash.
    pub fn kill(&mut self) {
        self.signal("-KILL");
    }

    /// SIGSTOP: the broker stays connected but answers nothing.
    pub fn pause(&mut self) {
        if let Some(c) = &self.child {
            let _ = Command::new("kill")
                .args(["-STOP", &c.id().to_string()])
                .status();
        }
    }

    /// SIGCONT after [`pause`](Self::pause).
    pub fn resume(&mut self) {
        if let Some(c) = &self.child {
            let _ = Command::new("kill")
                .args(["-CONT", &c.id().to_string()])
                .status();
        }
    }

    /// Starts the broker again with the same config and ports.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop or kill first");
        for _ in 0..50 {
            if self.spawn() {
                return;
            }
            // The old socket may linger for a moment.
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("mosquitto did not restart: {}", self.log());
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::env::var_os("MQLINK_TEST_BROKER_DEBUG").is_some() {
            // Keep the directory (config, log) for a look after the test.
            let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
            let _ = dir.keep();
        }
    }
}

fn mosquitto_bin() -> PathBuf {
    for p in ["/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"] {
        if Path::new(p).exists() {
            return p.into();
        }
    }
    "mosquitto".into()
}

/// A TCP proxy in front of a broker whose connections a test can cut, or
/// whose client-to-broker bytes it can drop (acknowledgements that never
/// arrive, on connections that stay up).
pub struct CutProxy {
    pub port: u16,
    conns: std::sync::Arc<std::sync::Mutex<Vec<TcpStream>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    muted: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl CutProxy {
    pub fn new(target_port: u16) -> CutProxy {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::{Arc, Mutex};
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let conns: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let muted = Arc::new(AtomicBool::new(false));
        let (c2, s2, m2) = (conns.clone(), stop.clone(), muted.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if s2.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(("127.0.0.1", target_port)) else {
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                {
                    let mut g = c2.lock().unwrap();
                    g.push(client.try_clone().unwrap());
                    g.push(server.try_clone().unwrap());
                }
                for (mut from, mut to, mute) in [
                    (
                        client.try_clone().unwrap(),
                        server.try_clone().unwrap(),
                        Some(m2.clone()),
                    ),
                    (server, client, None),
                ] {
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 16 * 1024];
                        loop {
                            let n = match from.read(&mut buf) {
                                Ok(0) | Err(_) => break,
                                Ok(n) => n,
                            };
                            if mute.as_ref().is_some_and(|m| m.load(Ordering::SeqCst)) {
                                continue;
                            }
                            if to.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                        let _ = to.shutdown(std::net::Shutdown::Both);
                        let _ = from.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        CutProxy {
            port,
            conns,
            stop,
            muted,
        }
    }

    /// While on, what clients send is read and dropped: the broker hears
    /// nothing (no PUBACK, no PINGREQ) and the connections stay up.
    pub fn mute_clients(&self, on: bool) {
        self.muted.store(on, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    /// Cuts every connection through the proxy (both directions, at once).
    pub fn cut(&self) -> usize {
        let mut g = self.conns.lock().unwrap();
        let n = g.len() / 2;
        for s in g.drain(..) {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
        n
    }
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        self.cut();
    }
}

/// Runs `mosquitto_pub` with the given arguments (an independent publisher).
pub fn mosquitto_pub(args: &[&str]) {
    let out = Command::new("mosquitto_pub")
        .args(args)
        .output()
        .expect("mosquitto_pub");
    assert!(
        out.status.success(),
        "mosquitto_pub {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Publishes `lines` (one message each) with `mosquitto_pub -l`.
pub fn mosquitto_pub_lines(port: u16, topic: &str, qos: u8, lines: &[String]) {
    let mut child = Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-t",
            topic,
            "-q",
            &qos.to_string(),
            "-l",
        ])
        .stdin(Stdio::piped())
        .spawn()
        .expect("mosquitto_pub");
    {
        let mut stdin = child.stdin.take().unwrap();
        for l in lines {
            writeln!(stdin, "{l}").unwrap();
        }
    }
    assert!(child.wait().unwrap().success());
}

/// A PostgreSQL server owned by a test: `initdb` into a temporary directory,
/// a free port on 127.0.0.1, trust authentication for user `postgres`,
/// stopped on drop. As root it runs as the `postgres` user (PostgreSQL
/// refuses root), through `setpriv`, so the child process is the server.
pub struct Postgres {
    child: Option<Child>,
    pub dir: TempDir,
    pub port: u16,
    bin: PathBuf,
}

fn postgres_bindir() -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| d.flatten().map(|e| e.path().join("bin")).collect())
        .unwrap_or_default();
    versions.retain(|p| p.join("initdb").exists());
    versions.sort();
    versions
        .pop()
        .expect("PostgreSQL server binaries (the test command installs package postgresql)")
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0"))
        .unwrap_or(false)
}

/// `cmd` as the `postgres` user when we are root.
fn as_postgres(bin: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=postgres", "--regid=postgres", "--clear-groups"])
            .arg(bin);
        c
    } else {
        Command::new(bin)
    }
}

impl Postgres {
    pub fn start() -> Postgres {
        let dir = tempfile::Builder::new()
            .prefix("mqlink-pg-")
            .tempdir()
            .unwrap();
        if is_root() {
            let st = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()
                .unwrap();
            assert!(st.success(), "chown the test's data directory to postgres");
        }
        let bin = postgres_bindir();
        let out = as_postgres(&bin.join("initdb"))
            .args([
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
                "-D",
            ])
            .arg(dir.path().join("data"))
            .output()
            .expect("initdb");
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut pg = Postgres {
            child: None,
            dir,
            port: 0,
            bin,
        };
        for _ in 0..5 {
            pg.port = free_port();
            if pg.spawn() {
                return pg;
            }
        }
        panic!("postgres did not start: {}", pg.log());
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn spawn(&mut self) -> bool {
        let before = std::fs::metadata(self.log_path())
            .map(|m| m.len())
            .unwrap_or(0);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        let child = as_postgres(&self.bin.join("postgres"))
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-p", &self.port.to_string(), "-k"])
            .arg(self.dir.path())
            .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start postgres");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(Ok(Some(_))) = self.child.as_mut().map(|c| c.try_wait()) {
                self.child = None;
                return false;
            }
            let log = std::fs::read(self.log_path()).unwrap_or_default();
            let new = String::from_utf8_lossy(log.get(before as usize..).unwrap_or_default());
            if new.contains("ready to accept connections") {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("postgres did not start: {}", self.log());
    }

    /// `postgres://postgres@127.0.0.1:<port>/postgres`
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Runs SQL with psql; the unaligned, tuples-only output.
    pub fn psql(&self, sql: &str) -> String {
        let out = Command::new(self.bin.join("psql"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                "postgres",
            ])
            .args(["-v", "ON_ERROR_STOP=1", "-At", "-c", sql])
            .output()
            .expect("psql");
        assert!(
            out.status.success(),
            "psql {sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// The rows of `table`: 0 until a sink has created it.
    pub fn count(&self, table: &str) -> usize {
        if self.psql(&format!("SELECT to_regclass('{table}') IS NOT NULL")) != "t" {
            return 0;
        }
        self.psql(&format!("SELECT count(*) FROM {table}"))
            .parse()
            .unwrap_or(0)
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the server again on the same port and data.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "kill first");
        for _ in 0..50 {
            if self.spawn() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("postgres did not restart: {}", self.log());
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // SIGQUIT: immediate shutdown, children included.
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-QUIT", &c.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A plain HTTP GET on 127.0.0.1: (status code, body). `None` when nothing listens.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::Read;
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n"
    )
    .ok()?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).ok()?;
    let code = resp.split(' ').nth(1)?.parse().ok()?;
    let body = resp.split_once("\r\n\r\n").map(|x| x.1.to_owned())?;
    Some((code, body))
}

/// The sum of a metric's series in `/metrics` on `http` (0 when not served).
pub fn metric(http: u16, name: &str) -> u64 {
    let (_, text) = http_get(http, "/metrics").unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// Polls `f` every 50 ms until it is true; panics with `what` after `secs`.
pub fn wait_until(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(
            Instant::now() < deadline,
            "timed out after {secs} s waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The brokers of other makes that the interoperability tests run against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Make {
    /// RabbitMQ with its MQTT plugin (Debian's `rabbitmq-server`).
    RabbitMq,
    /// NATS with its MQTT listener and JetStream (Debian's `nats-server`).
    Nats,
    /// rumqttd (`cargo install rumqttd`), a v4 and a v5 listener.
    Rumqttd,
    /// aedes from npm, run by `crates/testkit/aedes/broker.mjs` on Node.js.
    Aedes,
    /// ejabberd's `mod_mqtt` (Debian's `ejabberd`), run as an Erlang VM
    /// without distribution; MQTT 3.1.1 and 5 on one port.
    Ejabberd,
    /// amqtt from PyPI (Python), in the virtualenv `target/amqtt-venv`;
    /// MQTT 3.1.1 only (it never answers an MQTT 5 CONNECT).
    Amqtt,
}

impl Make {
    /// Every make, in the order above.
    pub const ALL: [Make; 6] = [
        Make::RabbitMq,
        Make::Nats,
        Make::Rumqttd,
        Make::Aedes,
        Make::Ejabberd,
        Make::Amqtt,
    ];
}

impl std::fmt::Display for Make {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Make::RabbitMq => "RabbitMQ",
            Make::Nats => "NATS",
            Make::Rumqttd => "rumqttd",
            Make::Aedes => "aedes",
            Make::Ejabberd => "ejabberd",
            Make::Amqtt => "amqtt",
        })
    }
}

/// Why a broker of another make cannot run on this machine (not installed).
/// `scripts/test.sh` installs all of them.
#[derive(Debug)]
pub struct Unavailable(pub String);

impl std::fmt::Display for Unavailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A broker of another make owned by a test: its own data directory and
/// free ports, one user (`user`/`password`; anonymous clients refused),
/// the whole process group killed on drop.
pub struct OtherBroker {
    pub make: Make,
    /// The MQTT 3.1.1 listener (RabbitMQ, NATS, aedes and amqtt speak only
    /// 3.1.1; ejabberd speaks 5 on it too).
    pub port: u16,
    /// rumqttd's MQTT 5 listener.
    pub v5_port: Option<u16>,
    pub user: String,
    pub password: String,
    pub dir: TempDir,
    /// How long the broker took from spawn to accepting MQTT connections.
    pub startup: Duration,
    child: Option<Child>,
}

/// The user every [`OtherBroker`] is configured with.
pub const OTHER_BROKER_USER: (&str, &str) = ("mqlink", "right-pw");

impl OtherBroker {
    /// Starts a broker of `make`, or says why it cannot run here.
    pub fn start(make: Make) -> Result<OtherBroker, Unavailable> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("mqlink-{}-", make.to_string().to_lowercase()))
            .tempdir()
            .unwrap();
        let mut b = OtherBroker {
            make,
            port: 0,
            v5_port: None,
            user: OTHER_BROKER_USER.0.into(),
            password: OTHER_BROKER_USER.1.into(),
            dir,
            startup: Duration::ZERO,
            child: None,
        };
        let mut last = String::new();
        for _ in 0..3 {
            b.port = free_port();
            b.v5_port = (make == Make::Rumqttd).then(free_port);
            let mut cmd = match make {
                Make::RabbitMq => b.rabbitmq()?,
                Make::Nats => b.nats()?,
                Make::Rumqttd => b.rumqttd()?,
                Make::Aedes => b.aedes()?,
                Make::Ejabberd => b.ejabberd()?,
                Make::Amqtt => b.amqtt()?,
            };
            let log = std::fs::File::create(b.log_path()).unwrap();
            std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
            let started = Instant::now();
            let child = cmd
                .stdin(Stdio::piped())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .map_err(|e| Unavailable(format!("{make}: cannot run {cmd:?}: {e}")))?;
            b.child = Some(child);
            match b.wait_ready(Duration::from_secs(90)) {
                Ok(()) => {
                    b.startup = started.elapsed();
                    return Ok(b);
                }
                Err(why) => {
                    b.kill_group();
                    last = why;
                }
            }
        }
        panic!("{make} did not start: {last}\n{}", b.log());
    }

    fn rabbitmq(&self) -> Result<Command, Unavailable> {
        let bin = Path::new("/usr/lib/rabbitmq/bin/rabbitmq-server");
        if !bin.exists() {
            return Err(Unavailable(
                "RabbitMQ is not installed (apt-get install rabbitmq-server)".into(),
            ));
        }
        let d = self.dir.path();
        let (amqp, dist) = (free_port(), free_port());
        std::fs::write(
            d.join("rabbitmq.conf"),
            format!(
                "listeners.tcp.default = 127.0.0.1:{amqp}\n\
                 mqtt.listeners.tcp.default = 127.0.0.1:{port}\n\
                 mqtt.allow_anonymous = false\n\
                 default_user = {user}\ndefault_pass = {pw}\n\
                 loopback_users = none\n",
                port = self.port,
                user = self.user,
                pw = self.password
            ),
        )
        .unwrap();
        std::fs::write(d.join("enabled_plugins"), "[rabbitmq_mqtt].\n").unwrap();
        let node = format!("mqlink{}x{}@localhost", std::process::id(), self.port);
        // The script in /usr/sbin switches to the `rabbitmq` user, who cannot
        // write into the test's directory; this one runs as we are.
        let mut c = Command::new(bin);
        c.env("HOME", d) // the Erlang cookie
            .env("RABBITMQ_NODENAME", node)
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", amqp.to_string())
            .env("RABBITMQ_DIST_PORT", dist.to_string())
            .env("RABBITMQ_MNESIA_BASE", d.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", d.join("log"))
            .env("RABBITMQ_CONFIG_FILE", d.join("rabbitmq.conf"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", d.join("enabled_plugins"))
            .env("RABBITMQ_PLUGINS_EXPAND_DIR", d.join("plugins"))
            .env("RABBITMQ_LOGS", "-"); // to stdout: the test's log file
        Ok(c)
    }

    fn nats(&self) -> Result<Command, Unavailable> {
        let bin = ["/usr/sbin/nats-server", "/usr/bin/nats-server"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .ok_or_else(|| {
                Unavailable("nats-server is not installed (apt-get install nats-server)".into())
            })?;
        let d = self.dir.path();
        std::fs::write(
            d.join("nats.conf"),
            format!(
                "server_name: mqlink_{}_{}\nlisten: 127.0.0.1:{}\n\
                 jetstream {{ store_dir: \"{}\" }}\n\
                 mqtt {{\n  listen: 127.0.0.1:{}\n  \
                 authorization {{ username: \"{}\", password: \"{}\" }}\n}}\n",
                std::process::id(),
                self.port,
                free_port(),
                d.join("jetstream").display(),
                self.port,
                self.user,
                self.password
            ),
        )
        .unwrap();
        let mut c = Command::new(bin);
        c.arg("-c").arg(d.join("nats.conf"));
        Ok(c)
    }

    fn rumqttd(&self) -> Result<Command, Unavailable> {
        let bin = which("rumqttd")
            .or_else(|| {
                let home = std::env::var_os("HOME")?;
                let p = Path::new(&home).join(".cargo/bin/rumqttd");
                p.exists().then_some(p)
            })
            .ok_or_else(|| {
                Unavailable(
                    "rumqttd is not installed (cargo install rumqttd --version 0.20.0)".into(),
                )
            })?;
        let d = self.dir.path();
        let listener = |v: &str, port: u16| {
            format!(
                "[{v}.1]\nname = \"{v}-1\"\nlisten = \"127.0.0.1:{port}\"\nnext_connection_delay_ms = 1\n\
                 [{v}.1.connections]\nconnection_timeout_ms = 60000\nmax_payload_size = 20480\n\
                 max_inflight_count = 100\ndynamic_filters = true\n\
                 [{v}.1.connections.auth]\n{} = \"{}\"\n",
                self.user, self.password
            )
        };
        std::fs::write(
            d.join("rumqttd.toml"),
            format!(
                "id = 0\n[router]\nid = 0\nmax_connections = 10010\nmax_outgoing_packet_count = 200\n\
                 max_segment_size = 104857600\nmax_segment_count = 10\n{}{}",
                listener("v4", self.port),
                listener("v5", self.v5_port.expect("v5 port"))
            ),
        )
        .unwrap();
        let mut c = Command::new(bin);
        c.arg("-c").arg(d.join("rumqttd.toml"));
        Ok(c)
    }

    fn aedes(&self) -> Result<Command, Unavailable> {
        let node = which("node").ok_or_else(|| {
            Unavailable("Node.js is not installed (apt-get install nodejs npm)".into())
        })?;
        let here = Path::new(env!("CARGO_MANIFEST_DIR")).join("aedes");
        install_aedes(&here)?;
        let mut c = Command::new(node);
        c.arg(here.join("broker.mjs"))
            .arg(self.port.to_string())
            .args([&self.user, &self.password])
            .current_dir(&here);
        Ok(c)
    }

    fn ejabberd(&self) -> Result<Command, Unavailable> {
        let erl = which("erl").filter(|_| Path::new("/usr/sbin/ejabberdctl").exists());
        let Some(erl) = erl else {
            return Err(Unavailable(
                "ejabberd is not installed (apt-get install ejabberd)".into(),
            ));
        };
        let d = self.dir.path();
        std::fs::write(
            d.join("ejabberd.yml"),
            format!(
                "hosts:\n  - localhost\nloglevel: info\n\
                 listen:\n  -\n    port: {}\n    ip: \"127.0.0.1\"\n    module: mod_mqtt\n\
                 auth_method: internal\nmodules:\n  mod_mqtt:\n    max_queue: unlimited\n",
                self.port
            ),
        )
        .unwrap();
        // `max_queue`: by default an offline session that has 5,000
        // messages queued is closed, and they are lost ("Message queue is
        // overloaded"); the drain test queues 20,000.
        // What /usr/sbin/ejabberdctl runs, as us (it would switch to the
        // `ejabberd` user) and without Erlang distribution (no epmd, no
        // node name to collide); the user is registered once it is up.
        let mut c = Command::new(erl);
        c.env("HOME", d)
            .env("EJABBERD_CONFIG_PATH", d.join("ejabberd.yml"))
            .env("EJABBERD_LOG_PATH", d.join("ejabberd.log"))
            .env("ERL_LIBS", "/usr/lib/x86_64-linux-gnu")
            .env("ERL_CRASH_DUMP", d.join("erl_crash.dump"))
            .arg("-noinput")
            .arg("-mnesia")
            .arg("dir")
            .arg(format!("\"{}\"", d.join("spool").display()))
            .args(["-s", "ejabberd", "-eval"])
            .arg(format!(
                "io:format(\"mqlink user: ~p~n\", [ejabberd_auth:try_register(<<\"{}\">>, <<\"localhost\">>, <<\"{}\">>)])",
                self.user, self.password
            ))
            .current_dir(d);
        Ok(c)
    }

    fn amqtt(&self) -> Result<Command, Unavailable> {
        let venv = install_amqtt()?;
        let d = self.dir.path();
        let hash = Command::new(venv.join("bin/python"))
            .args([
                "-c",
                "import sys; from pwdlib.hashers.argon2 import Argon2Hasher; print(Argon2Hasher().hash(sys.argv[1]))",
                &self.password,
            ])
            .output()
            .map_err(|e| Unavailable(format!("amqtt: {e}")))?;
        let hash = String::from_utf8_lossy(&hash.stdout).trim().to_owned();
        std::fs::write(d.join("passwd"), format!("{}:{hash}\n", self.user)).unwrap();
        std::fs::write(
            d.join("broker.yaml"),
            format!(
                "listeners:\n  default:\n    type: tcp\n    bind: 127.0.0.1:{}\n\
                 plugins:\n  amqtt.plugins.authentication.FileAuthPlugin:\n    password_file: {}\n",
                self.port,
                d.join("passwd").display()
            ),
        )
        .unwrap();
        let mut c = Command::new(venv.join("bin/amqtt"));
        c.arg("-c").arg(d.join("broker.yaml")).current_dir(d);
        Ok(c)
    }

    /// Until the MQTT listener(s) accept connections from this process.
    fn wait_ready(&mut self, within: Duration) -> Result<(), String> {
        let deadline = Instant::now() + within;
        let ports: Vec<u16> = std::iter::once(self.port).chain(self.v5_port).collect();
        // What each broker prints once its MQTT listener is bound (a port
        // that accepts could briefly belong to someone else's broker).
        let marker = match self.make {
            Make::RabbitMq => format!("started MQTT TCP listener on 127.0.0.1:{}", self.port),
            Make::Nats => format!(
                "Listening for MQTT clients on mqtt://127.0.0.1:{}",
                self.port
            ),
            Make::Aedes => format!("listening {}", self.port),
            Make::Ejabberd => "mqlink user: ok".to_owned(),
            Make::Amqtt => format!("bind to 127.0.0.1:{}", self.port),
            Make::Rumqttd => String::new(),
        };
        while Instant::now() < deadline {
            if let Some(Ok(Some(st))) = self.child.as_mut().map(|c| c.try_wait()) {
                self.child = None;
                return Err(format!("exited with {st}"));
            }
            let log = self.log();
            if log.contains("eaddrinuse") || log.contains("address already in use") {
                return Err("a port was taken".into());
            }
            if log.contains(&marker)
                && ports
                    .iter()
                    .all(|p| TcpStream::connect(("127.0.0.1", *p)).is_ok())
            {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(format!("not listening after {within:?}"))
    }

    /// `mqtt://127.0.0.1:<port>` (MQTT 3.1.1).
    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    /// rumqttd's MQTT 5 listener; the 3.1.1 one for the others.
    pub fn v5_url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.v5_port.unwrap_or(self.port))
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("broker.log")
    }

    pub fn log(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(self.log_path()).unwrap_or_default()).into_owned()
    }

    fn kill_group(&mut self) {
        if let Some(mut c) = self.child.take() {
            // RabbitMQ is a shell script running Erlang: kill the group.
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", c.id())])
                .stderr(Stdio::null())
                .status();
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for OtherBroker {
    fn drop(&mut self) {
        self.kill_group();
        if std::env::var_os("MQLINK_TEST_BROKER_DEBUG").is_some() {
            let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
            eprintln!("{} kept in {}", self.make, dir.path().display());
            let _ = dir.keep();
        }
    }
}

/// `name` on PATH.
fn which(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// `npm ci` in `crates/testkit/aedes` unless aedes is there already (once
/// per process; npm itself locks its cache against other processes).
fn install_aedes(here: &Path) -> Result<(), Unavailable> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    if here.join("node_modules/aedes/package.json").exists() {
        return Ok(());
    }
    let npm = which("npm")
        .ok_or_else(|| Unavailable("npm is not installed (apt-get install npm)".into()))?;
    let out = Command::new(npm)
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(here)
        .output()
        .map_err(|e| Unavailable(format!("npm ci: {e}")))?;
    if !out.status.success() {
        return Err(Unavailable(format!(
            "npm ci in {} failed: {}",
            here.display(),
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(())
}

/// The amqtt version `scripts/test.sh` installs.
pub const AMQTT: &str = "amqtt==0.12.0";

/// `target/amqtt-venv` with amqtt, made on first use (scripts/test.sh makes
/// it too); once per process.
fn install_amqtt() -> Result<PathBuf, Unavailable> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/amqtt-venv");
    if venv.join("bin/amqtt").exists() {
        return Ok(venv);
    }
    let run = |c: &mut Command| {
        c.output()
            .map_err(|e| Unavailable(format!("amqtt: {c:?}: {e}")))
            .and_then(|o| {
                o.status.success().then_some(()).ok_or_else(|| {
                    Unavailable(format!(
                        "amqtt: {c:?} failed: {}",
                        String::from_utf8_lossy(&o.stderr)
                    ))
                })
            })
    };
    run(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
    run(Command::new(venv.join("bin/pip")).args([
        "install",
        "-q",
        "--disable-pip-version-check",
        AMQTT,
    ]))?;
    Ok(venv)
}

/// Writes `body` to `dir/name`; the path.
pub fn write(dir: &Path, name: &str, body: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, body).unwrap();
    p
}

/// Sends `sig` (`-KILL`, `-TERM`, `-STOP`, …) to `child` with kill(1).
pub fn signal(child: &Child, sig: &str) {
    let st = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
}

/// Waits up to `secs` for `child` (stderr piped) to exit: its status and
/// stderr.
pub fn wait_output(child: &mut Child, secs: u64) -> Output {
    wait_until(secs, "the process to exit", || {
        child.try_wait().unwrap().is_some()
    });
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    Output {
        status: child.wait().unwrap(),
        stdout: Vec::new(),
        stderr: stderr.into_bytes(),
    }
}

/// The lines of `r` as they come, on a channel (read by a thread).
pub fn lines_of(r: impl Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(r).lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    rx
}

/// `mosquitto_sub` with these arguments: an independent subscriber whose
/// output lines arrive on the channel.
pub fn mosquitto_sub(args: &[&str]) -> (Child, Receiver<String>) {
    let mut sub = Command::new("mosquitto_sub")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let rx = lines_of(sub.stdout.take().unwrap());
    (sub, rx)
}

/// An InfluxDB 1.x server owned by a test (Debian's `influxdb`): its own
/// config, data and WAL directories, HTTP and RPC on free ports of
/// 127.0.0.1, killed on drop. Queried through its HTTP API.
pub struct Influx {
    child: Option<Child>,
    pub dir: TempDir,
    pub port: u16,
}

impl Influx {
    pub fn start() -> Influx {
        let dir = tempfile::Builder::new()
            .prefix("mqlink-influx-")
            .tempdir()
            .unwrap();
        let mut influx = Influx {
            child: None,
            dir,
            port: 0,
        };
        for _ in 0..5 {
            influx.port = free_port();
            if influx.spawn() {
                return influx;
            }
        }
        panic!("influxd did not start: {}", influx.log());
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("influxd.log")).unwrap_or_default()
    }

    /// `http://127.0.0.1:<port>`
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) -> bool {
        let d = self.dir.path();
        let conf = format!(
            "reporting-disabled = true\nbind-address = \"127.0.0.1:{rpc}\"\n\
             [meta]\n  dir = \"{d}/meta\"\n\
             [data]\n  dir = \"{d}/data\"\n  wal-dir = \"{d}/wal\"\n  query-log-enabled = false\n\
             [http]\n  bind-address = \"127.0.0.1:{port}\"\n  log-enabled = false\n\
             [monitor]\n  store-enabled = false\n\
             [continuous_queries]\n  enabled = false\n",
            rpc = free_port(),
            port = self.port,
            d = d.display()
        );
        std::fs::write(d.join("influxdb.conf"), conf).unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(d.join("influxd.log"))
            .unwrap();
        let child = Command::new("influxd")
            .arg("-config")
            .arg(d.join("influxdb.conf"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("influxd (the test command installs package influxdb)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(Ok(Some(_))) = self.child.as_mut().map(|c| c.try_wait()) {
                self.child = None;
                return false;
            }
            if http_get(self.port, "/ping").is_some_and(|(c, _)| c == 204) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("influxd did not answer /ping: {}", self.log());
    }

    /// Runs InfluxQL (POST /query); the JSON answer.
    pub fn query(&self, db: &str, q: &str) -> String {
        let body = format!("db={}&q={}", form(db), form(q));
        let (code, answer) = http_post(self.port, "/query", &body).expect("influxd answers");
        assert_eq!(code, 200, "{q}: {answer}");
        answer
    }

    /// The value of `SELECT count(field) FROM measurement` (0 when none).
    pub fn count(&self, db: &str, measurement: &str, field: &str) -> u64 {
        let a = self.query(
            db,
            &format!("SELECT count(\"{field}\") FROM \"{measurement}\""),
        );
        // {"results":[{"statement_id":0,"series":[{…,"values":[["1970-…",N]]}]}]}
        a.split("\"values\":[[")
            .nth(1)
            .and_then(|v| v.split(']').next())
            .and_then(|v| v.rsplit(',').next())
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0)
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the server again on the same port and data.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "kill first");
        for _ in 0..50 {
            if self.spawn() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("influxd did not restart: {}", self.log());
    }
}

impl Drop for Influx {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `application/x-www-form-urlencoded` text.
fn form(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            b => format!("%{b:02X}"),
        })
        .collect()
}

/// A plain HTTP POST of a form on 127.0.0.1: (status code, body).
pub fn http_post(port: u16, path: &str, form_body: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(
        s,
        "POST {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\ncontent-type: application/x-www-form-urlencoded\r\ncontent-length: {}\r\n\r\n{form_body}",
        form_body.len()
    )
    .ok()?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).ok()?;
    let code = resp.split(' ').nth(1)?.parse().ok()?;
    let body = resp.split_once("\r\n\r\n").map(|x| x.1.to_owned())?;
    Some((code, body))
}

/// The version of pysparkplug the Sparkplug B tests use (scripts/test.sh
/// installs the same).
pub const PYSPARKPLUG: &str = "pysparkplug==0.6.1";

/// The Python of the virtualenv with pysparkplug and paho-mqtt
/// (`target/sparkplug-venv`; scripts/test.sh makes it, the first test to
/// need it too).
pub fn sparkplug_python() -> PathBuf {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/sparkplug-venv");
    let python = venv.join("bin/python");
    let has = |p: &Path| {
        Command::new(p)
            .args(["-c", "import pysparkplug"])
            .status()
            .is_ok_and(|s| s.success())
    };
    if !has(&python) {
        let ok = Command::new("python3")
            .arg("-m")
            .arg("venv")
            .arg(&venv)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "python3 -m venv {}", venv.display());
        let ok = Command::new(venv.join("bin/pip"))
            .args(["install", "-q", "--disable-pip-version-check", PYSPARKPLUG])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok && has(&python), "pip install {PYSPARKPLUG}");
    }
    python
}

/// A script of `crates/testkit/sparkplug/` (`edge_node.py`, `host_app.py`).
pub fn sparkplug_script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("sparkplug")
        .join(name)
}

/// pysparkplug's host application (`host_app.py`) reading edge node `edge`
/// of `group` on the broker at `port`: its JSON events, one per line, and
/// its stdin (a line `REBIRTH` asks for a rebirth). Killed on drop.
pub struct SparkplugHost {
    child: Child,
    pub events: Receiver<String>,
    pub stdin: std::process::ChildStdin,
}

impl SparkplugHost {
    /// Starts the host application and waits until it subscribed.
    pub fn start(port: u16, group: &str, edge: &str) -> SparkplugHost {
        let mut child = Command::new(sparkplug_python())
            .arg(sparkplug_script("host_app.py"))
            .args(["127.0.0.1", &port.to_string(), group, edge])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let events = lines_of(child.stdout.take().unwrap());
        let stdin = child.stdin.take().unwrap();
        let host = SparkplugHost {
            child,
            events,
            stdin,
        };
        host.next("subscribed");
        host
    }

    /// The next event whose `event` is `kind`, failing on an `error` event
    /// on the way.
    pub fn next(&self, kind: &str) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            let line = self
                .events
                .recv_timeout(left)
                .unwrap_or_else(|e| panic!("waiting for a {kind} event: {e}"));
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            assert_ne!(v["event"], "error", "the host application: {v}");
            if v["event"] == kind {
                return v;
            }
        }
        panic!("no {kind} event within 20 s");
    }

    /// The next DBIRTH (skipping NBIRTHs).
    pub fn next_dbirth(&self) -> serde_json::Value {
        loop {
            let b = self.next("birth");
            if b["kind"] == "DBIRTH" {
                return b;
            }
        }
    }
}

impl Drop for SparkplugHost {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
