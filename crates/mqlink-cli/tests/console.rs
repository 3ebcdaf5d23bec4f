//! The web console in a real browser: Debian's headless Chromium, driven
//! by playwright-core (`crates/testkit/console/drive.mjs`), over a running
//! pipeline — a generator into the embedded broker, a source reading it
//! back into a file and into a Mosquitto that the test stops (SIGSTOP) and
//! resumes. The driver checks that the graph shows every component, that
//! counts move, that the sink to the stopped broker turns stalled with its
//! reason within the stall timeout and recovers, that each source's
//! accounting adds up, that a typed query returns rows, and that the
//! browser logged no error. The pipeline has a token, which the page is
//! given once in its address and sends on every request. Its screenshots are kept in
//! `target/console-screenshots/`.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use testkit::{free_port, http_get, unique_id, wait_until, Mosquitto, TempDir};

/// Stall timeout of the test's pipeline, in seconds.
const STALL: u32 = 3;

/// A child process killed when the test ends, however it ends.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `npm ci` in `crates/testkit/console` unless playwright-core is there.
fn install_driver(here: &Path) {
    if here
        .join("node_modules/playwright-core/package.json")
        .exists()
    {
        return;
    }
    let out = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(here)
        .output()
        .expect("npm (apt-get install npm; scripts/test.sh installs what the tests need)");
    assert!(
        out.status.success(),
        "npm ci in {}: {}",
        here.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn pipeline(topic: &str, far: u16, http: u16, out: &Path) -> String {
    format!(
        r#"
[connections.local]
broker = "embedded"
client_id = "{topic}-l"
[connections.far]
broker = "mqtt://127.0.0.1:{far}"
client_id = "{topic}-f"
keep_alive = 60
username = "console"
password = "${{FAR_PASSWORD}}"
[sources.gen]
type = "generator"
rate = 100
[sinks.to_local]
type = "mqtt"
inputs = ["gen"]
connection = "local"
topic = "{topic}/{{device_id}}"
[sources.telemetry]
type = "mqtt"
connection = "local"
topics = ["{topic}/#"]
[sinks.archive]
type = "file"
inputs = ["telemetry"]
path = "{out}"
[sinks.uplink]
type = "mqtt"
inputs = ["telemetry"]
connection = "far"
topic = "{topic}/up"
[run]
stall_timeout = {STALL}
[http]
listen = "127.0.0.1:{http}"
"#,
        out = out.display()
    )
}

#[test]
fn the_console_shows_a_stall_and_its_recovery_in_a_browser() {
    let chromium = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("Chromium (apt-get install chromium chromium-driver; scripts/test.sh installs it)");
    let driver = workspace().join("crates/testkit/console");
    install_driver(&driver);
    let mut far = Mosquitto::start();
    let dir = TempDir::new().unwrap();
    let topic = unique_id("console");
    let http = free_port();
    let cfg = dir.path().join("p.toml");
    std::fs::write(
        &cfg,
        pipeline(&topic, far.port, http, &dir.path().join("out.jsonl")),
    )
    .unwrap();
    // With a token, as off loopback: the page takes it once as ?token=.
    let token = unique_id("token");
    // Shown masked in the console's configuration, never as itself.
    let secret = unique_id("far-password");
    let log = dir.path().join("run.log");
    let mut run = Killed(
        Command::new(env!("CARGO_BIN_EXE_mqlink"))
            .arg("run")
            .arg(&cfg)
            .current_dir(dir.path())
            .env("MQLINK_HTTP_TOKEN", &token)
            .env("FAR_PASSWORD", &secret)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let run_log = || std::fs::read_to_string(&log).unwrap_or_default();
    wait_until(30, "the pipeline to serve HTTP", || {
        assert!(run.0.try_wait().unwrap().is_none(), "{}", run_log());
        http_get(http, "/health").is_some_and(|(c, _)| c == 200)
    });
    assert_eq!(http_get(http, "/").unwrap().0, 401);

    let shots = workspace().join("target/console-screenshots");
    let components = [
        "connections.local",
        "connections.far",
        "sources.gen",
        "sinks.to_local",
        "sources.telemetry",
        "sinks.archive",
        "sinks.uplink",
    ];
    let mut node = Killed(
        Command::new("node")
            .arg(driver.join("drive.mjs"))
            .env(
                "CONSOLE_URL",
                format!("http://127.0.0.1:{http}/?token={token}"),
            )
            .env("SCREENSHOTS", &shots)
            .env("COMPONENTS", components.join(","))
            .env("STALLING", "sinks.uplink")
            .env("SECRET", &secret)
            .env("STALL_SECONDS", STALL.to_string())
            .env("CHROMIUM", chromium)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("node (apt-get install nodejs)"),
    );
    // What the driver reports, read meanwhile so it never blocks on a full pipe.
    let stderr = node.0.stderr.take().unwrap();
    let report = std::thread::spawn(move || {
        let mut s = String::new();
        for l in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("{l}");
            s.push_str(&l);
            s.push('\n');
        }
        s
    });
    let mut to_driver = node.0.stdin.take().unwrap();
    let mut paused = false;
    for line in BufReader::new(node.0.stdout.take().unwrap())
        .lines()
        .map_while(Result::ok)
    {
        match line.trim() {
            "pause" => {
                far.pause();
                paused = true;
            }
            "resume" => {
                far.resume();
                paused = false;
            }
            other => {
                eprintln!("driver: {other}");
                continue;
            }
        }
        writeln!(to_driver, "ok").unwrap();
    }
    if paused {
        far.resume();
    }
    let status = node.0.wait().unwrap();
    let report = report.join().unwrap();
    assert!(
        status.success(),
        "the browser test failed (screenshots in {}):\n{report}\nmqlink's log:\n{}",
        shots.display(),
        run_log()
    );
    assert!(report.contains("all checks passed"), "{report}");
    for shot in ["running.png", "stalled.png", "recovered.png"] {
        assert!(shots.join(shot).is_file(), "{shot}");
    }
    assert!(run.0.try_wait().unwrap().is_none(), "{}", run_log());
}
