//! Real brokers for tests: a Mosquitto process per test, on free ports,
//! with its own config and data directory, killed on drop. Certificates are
//! made per test with the `openssl` command.

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub use tempfile::TempDir;

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
        c += "max_queued_messages 0\nmax_queued_bytes 0\n";
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

/// A TCP proxy in front of a broker whose connections a test can cut.
pub struct CutProxy {
    pub port: u16,
    conns: std::sync::Arc<std::sync::Mutex<Vec<TcpStream>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl CutProxy {
    pub fn new(target_port: u16) -> CutProxy {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::{Arc, Mutex};
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let conns: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (c2, s2) = (conns.clone(), stop.clone());
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
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                        let _ = from.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        CutProxy { port, conns, stop }
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
