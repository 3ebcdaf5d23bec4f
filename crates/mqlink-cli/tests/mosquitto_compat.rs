//! `mqlink pub`/`mqlink sub` as a drop-in for mosquitto_pub/mosquitto_sub:
//! the same command lines run with both on the same private Mosquitto, and
//! their stdout (timestamps normalised) and exit codes are compared.
//!
//! Placeholders in a command line: `{p}` the port, `{t}` a topic prefix
//! shared by both tools (retained messages set up once), `{u}` a topic
//! prefix of each tool's own (for cases that change broker state; it is
//! written back as `{u}` before comparing), `{id}` a client id of each
//! tool's own, `{tls}` the TLS port, `{ca}`/`{cadir}`/`{cert}`/`{key}` the
//! test certificates. A case may run mosquitto clients before (`pre`) and
//! after (`post`: their stdout is compared too) each tool's run.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use testkit::{unique_id, Mosquitto, MosquittoConfig};

#[derive(Clone, Copy, PartialEq)]
enum Tool {
    Mosquitto,
    Mqlink,
}

#[derive(Clone, Copy, PartialEq)]
enum Norm {
    None,
    /// `"tst":"…"` values blanked.
    Tst,
    /// Every digit becomes 0 (times printed with %I %U @).
    Digits,
}

#[derive(Clone, Copy, PartialEq)]
enum Expect {
    Same,
    /// A documented difference: run, reported, not compared.
    Differs(&'static str),
}

struct Case {
    args: Vec<&'static str>,
    stdin: Option<&'static [u8]>,
    norm: Norm,
    pre: Vec<Vec<&'static str>>,
    post: Vec<Vec<&'static str>>,
    expect: Expect,
}

fn case(args: &[&'static str]) -> Case {
    Case {
        args: args.to_vec(),
        stdin: None,
        norm: Norm::None,
        pre: Vec::new(),
        post: Vec::new(),
        expect: Expect::Same,
    }
}

impl Case {
    fn norm(mut self, n: Norm) -> Case {
        self.norm = n;
        self
    }
    fn stdin(mut self, s: &'static [u8]) -> Case {
        self.stdin = Some(s);
        self
    }
    fn pre(mut self, a: &[&'static str]) -> Case {
        self.pre.push(a.to_vec());
        self
    }
    fn post(mut self, a: &[&'static str]) -> Case {
        self.post.push(a.to_vec());
        self
    }
    fn differs(mut self, why: &'static str) -> Case {
        self.expect = Expect::Differs(why);
        self
    }
}

struct Env {
    port: u16,
    tls_port: Option<u16>,
    t: String,
    dir: std::path::PathBuf,
}

struct Outcome {
    stdout: Vec<u8>,
    code: Option<i32>,
}

/// Runs a program with a time limit (a hung client fails the case, not the suite).
fn exec(program: &str, args: &[String], stdin: Option<&[u8]>) -> Outcome {
    let mut child = Command::new(program)
        .args(args)
        .env_remove("MQLINK_PASSWORD")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    if let Some(input) = stdin {
        child.stdin.take().unwrap().write_all(input).unwrap();
    }
    let started = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if started.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = child.wait_with_output().unwrap();
    Outcome {
        stdout: out.stdout,
        code: out.status.code(),
    }
}

fn substitute(words: &[&str], env: &Env, tool: Tool, n: usize) -> Vec<String> {
    let who = match tool {
        Tool::Mosquitto => "m",
        Tool::Mqlink => "q",
    };
    let u = format!("{}/{who}{n}", env.t);
    let id = format!("{}-{who}{n}", env.t.replace('/', "-"));
    let d = env.dir.display().to_string();
    words
        .iter()
        .map(|w| {
            w.replace("{p}", &env.port.to_string())
                .replace("{tls}", &env.tls_port.unwrap_or(0).to_string())
                .replace("{t}", &env.t)
                .replace("{u}", &u)
                .replace("{id}", &id)
                .replace("{ca}", &format!("{d}/certs/ca.pem"))
                .replace("{cadir}", &format!("{d}/cadir"))
                .replace("{cert}", &format!("{d}/certs/client.pem"))
                .replace("{key}", &format!("{d}/certs/client.key"))
        })
        .collect()
}

fn normalise(out: &[u8], norm: Norm, env: &Env, tool: Tool, n: usize) -> Vec<u8> {
    let who = match tool {
        Tool::Mosquitto => "m",
        Tool::Mqlink => "q",
    };
    let mut s = replace(out, format!("{}/{who}{n}", env.t).as_bytes(), b"{u}");
    match norm {
        Norm::None => {}
        Norm::Digits => s
            .iter_mut()
            .filter(|b| b.is_ascii_digit())
            .for_each(|b| *b = b'0'),
        Norm::Tst => {
            for key in [&b"\"tst\":\""[..], b"\"tst\":\t\""] {
                let mut i = 0;
                while let Some(at) = find(&s[i..], key) {
                    let start = i + at + key.len();
                    let end = start + s[start..].iter().position(|b| *b == b'"').unwrap_or(0);
                    s.splice(start..end, b"T".iter().copied());
                    i = start;
                }
            }
        }
    }
    s
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn replace(hay: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(hay.len());
    let mut i = 0;
    while i < hay.len() {
        if hay[i..].starts_with(from) {
            out.extend_from_slice(to);
            i += from.len();
        } else {
            out.push(hay[i]);
            i += 1;
        }
    }
    out
}

/// One tool's run of a case: pre steps, the command, post steps.
fn run_case(c: &Case, env: &Env, tool: Tool, n: usize) -> (Vec<u8>, Option<i32>) {
    for step in &c.pre {
        let a = substitute(&step[1..], env, tool, n);
        exec(step[0], &a, None);
    }
    let (cmd, rest) = (c.args[0], &c.args[1..]);
    let a = substitute(rest, env, tool, n);
    let out = match tool {
        Tool::Mosquitto => exec(&format!("mosquitto_{cmd}"), &a, c.stdin),
        Tool::Mqlink => {
            let mut all = vec![cmd.to_owned()];
            all.extend(a);
            exec(env!("CARGO_BIN_EXE_mqlink"), &all, c.stdin)
        }
    };
    let mut stdout = normalise(&out.stdout, c.norm, env, tool, n);
    for step in &c.post {
        let a = substitute(&step[1..], env, tool, n);
        let o = exec(step[0], &a, None);
        stdout.extend_from_slice(b"--post--\n");
        stdout.extend(normalise(&o.stdout, c.norm, env, tool, n));
        stdout.extend_from_slice(format!("post exit {:?}\n", o.code).as_bytes());
    }
    (stdout, out.code)
}

/// Runs every case with both tools, prints a table, and fails on any
/// case expected to match that does not. Returns (matched, compared).
fn compare(name: &str, cases: &[Case], env: &Env) -> (usize, usize) {
    let mut failures = Vec::new();
    let mut matched = 0;
    let mut report = String::new();
    for (n, c) in cases.iter().enumerate() {
        let (m_out, m_code) = run_case(c, env, Tool::Mosquitto, n);
        let (q_out, q_code) = run_case(c, env, Tool::Mqlink, n);
        let same = m_out == q_out && m_code == q_code;
        if same {
            matched += 1;
        }
        let line = c.args.join(" ");
        match c.expect {
            Expect::Same if !same => {
                report.push_str(&format!("DIFF  {line}\n"));
                failures.push(format!(
                    "{line}\n  mosquitto (exit {m_code:?}): {:?}\n  mqlink    (exit {q_code:?}): {:?}",
                    String::from_utf8_lossy(&m_out),
                    String::from_utf8_lossy(&q_out)
                ));
            }
            Expect::Same => report.push_str(&format!("same  {line}\n")),
            Expect::Differs(why) => report.push_str(&format!(
                "{}  {line}  ({why}; exit {m_code:?} vs {q_code:?})\n",
                if same { "same" } else { "known" }
            )),
        }
    }
    eprintln!(
        "{name}: {matched} of {} command lines match byte for byte\n{report}",
        cases.len()
    );
    assert!(failures.is_empty(), "{name}:\n{}", failures.join("\n"));
    (matched, cases.len())
}

fn env_for(broker: &Mosquitto) -> Env {
    Env {
        port: broker.port,
        tls_port: broker.tls_port,
        t: format!("compat/{}", unique_id("c")),
        dir: broker.dir.path().to_owned(),
    }
}

fn mosquitto_pub(env: &Env, args: &[&str]) {
    let p = env.port.to_string();
    let mut all = vec!["-p", &p];
    all.extend_from_slice(args);
    testkit::mosquitto_pub(&all);
}

/// Retained messages under `{t}`: text, JSON, binary, MQTT 5 properties.
fn retained_set(env: &Env) {
    let t = &env.t;
    mosquitto_pub(
        env,
        &["-t", &format!("{t}/a"), "-m", "hello", "-r", "-q", "1"],
    );
    mosquitto_pub(
        env,
        &[
            "-t",
            &format!("{t}/b/c"),
            "-m",
            r#"{"x": [1, 2.5, true, null, -3e-7], "s": "é\n", "o": {}}"#,
            "-r",
            "-q",
            "1",
        ],
    );
    let bin = env.dir.join("bin");
    std::fs::write(&bin, [b'h', 0, 1, 0x7f, 0xff, b'"', b'\\']).unwrap();
    mosquitto_pub(
        env,
        &[
            "-t",
            &format!("{t}/bin"),
            "-f",
            bin.to_str().unwrap(),
            "-r",
            "-q",
            "1",
        ],
    );
    mosquitto_pub(
        env,
        &[
            "-t",
            &format!("{t}/v5"),
            "-m",
            "[1,2]",
            "-r",
            "-q",
            "1",
            "-V",
            "5",
            "-D",
            "publish",
            "payload-format-indicator",
            "1",
            "-D",
            "publish",
            "response-topic",
            "re/sp",
            "-D",
            "publish",
            "correlation-data",
            "corr",
            "-D",
            "publish",
            "user-property",
            "k1",
            "v1",
            "-D",
            "publish",
            "user-property",
            "k2",
            "v 2",
            "-D",
            "publish",
            "content-type",
            "application/json",
        ],
    );
}

#[test]
fn sub_command_lines_print_what_mosquitto_sub_prints() {
    let broker = Mosquitto::start();
    let env = env_for(&broker);
    retained_set(&env);
    let all = "{t}/#";
    let cases = vec![
        case(&["sub", "-p", "{p}", "-t", all, "-C", "4"]),
        case(&["sub", "-p", "{p}", "-t", all, "-C", "4", "-v"]),
        case(&["sub", "-p", "{p}", "-t", all, "-C", "4", "-N"]),
        case(&["sub", "-p", "{p}", "-t", all, "-C", "4", "-v", "-N"]),
        case(&[
            "sub",
            "-p",
            "{p}",
            "-t",
            all,
            "-C",
            "4",
            "-F",
            "%t|%p|%l|%q|%r|%m",
        ]),
        case(&["sub", "-p", "{p}", "-t", all, "-C", "4", "-F", "%j"]).norm(Norm::Tst),
        case(&["sub", "-p", "{p}", "-t", all, "-C", "4", "-F", "%J"]).norm(Norm::Tst),
        case(&[
            "sub", "-p", "{p}", "-t", all, "-C", "4", "-F", "%j", "--pretty",
        ])
        .norm(Norm::Tst),
        case(&[
            "sub", "-p", "{p}", "-t", all, "-C", "4", "-F", "%J", "--pretty",
        ])
        .norm(Norm::Tst),
        case(&["sub", "-p", "{p}", "-t", all, "-C", "4", "-F", "%x %X"]),
        case(&[
            "sub",
            "-p",
            "{p}",
            "-t",
            all,
            "-C",
            "4",
            "-F",
            "%-10t|%10t|%.3t|%5.2t|%-5l|%05l|%8p|%-8p|%08x|%-p|%3X|%-4m|",
        ]),
        case(&[
            "sub",
            "-p",
            "{p}",
            "-t",
            all,
            "-C",
            "4",
            "-F",
            "\\t%t\\\\\\n%p\\e\\a\\v\\r\\0|%%|@@",
        ]),
        case(&[
            "sub",
            "-p",
            "{p}",
            "-t",
            all,
            "-C",
            "4",
            "-F",
            "%I|%U|@Y-@m-@dT@H:@M:@S @z|@N",
        ])
        .norm(Norm::Digits),
        case(&[
            "sub",
            "-p",
            "{p}",
            "-t",
            all,
            "-C",
            "4",
            "-V",
            "5",
            "-F",
            "%A|%C|%D|%E|%F|%P|%R|%S|%5E|%-5C|",
        ]),
        case(&[
            "sub", "-p", "{p}", "-t", all, "-C", "4", "-V", "5", "-F", "%j",
        ])
        .norm(Norm::Tst),
        case(&[
            "sub", "-p", "{p}", "-t", all, "-C", "4", "-V", "mqttv5", "-v",
        ]),
        case(&[
            "sub", "-p", "{p}", "-t", all, "-C", "4", "-V", "mqttv311", "-q", "1", "-F", "%q %m %t",
        ]),
        case(&[
            "sub", "-p", "{p}", "-t", all, "-C", "4", "-V", "mqttv31", "-q", "2", "-v",
        ]),
        case(&[
            "sub", "-p", "{p}", "-t", all, "-C", "4", "-q", "2", "-F", "%j",
        ])
        .norm(Norm::Tst),
        case(&["sub", "-p", "{p}", "-t", all, "-R", "-W", "1"]),
        case(&[
            "sub",
            "-p",
            "{p}",
            "-t",
            all,
            "--retained-only",
            "-W",
            "1",
            "-v",
        ]),
        case(&[
            "sub", "-p", "{p}", "-t", all, "-C", "3", "-T", "{t}/b/#", "-v",
        ]),
        case(&[
            "sub", "-p", "{p}", "-t", all, "-C", "2", "-T", "{t}/a", "-T", "{t}/bin", "-v",
        ]),
        case(&[
            "sub", "-p", "{p}", "-t", "{t}/a", "-t", "{t}/b/c", "-C", "2", "-v",
        ]),
        case(&["sub", "-p", "{p}", "-t", "{t}/+", "-C", "3", "-v"]),
        case(&["sub", "-L", "mqtt://127.0.0.1:{p}/{t}/a", "-C", "1", "-v"]),
        case(&[
            "sub",
            "-L",
            "mqtt://bob:secret@127.0.0.1:{p}/{t}/a",
            "-C",
            "1",
            "-v",
        ]),
        case(&[
            "sub",
            "-h",
            "127.0.0.1",
            "-p",
            "{p}",
            "-u",
            "bob",
            "-P",
            "pw",
            "-t",
            "{t}/a",
            "-C",
            "1",
        ]),
        case(&["sub", "-p", "{p}", "-t", "{t}/none", "-E"]),
        case(&["sub", "-p", "{p}", "-t", "{t}/none", "-U", "{t}/none", "-E"]),
        case(&[
            "sub", "-p", "{p}", "-t", "{t}/a", "-C", "1", "-i", "{id}", "-v",
        ]),
        case(&["sub", "-p", "{p}", "-t", "{t}/a", "-C", "1", "-I", "pre-"]),
        case(&["sub", "-p", "{p}", "-t", "{t}/a", "-C", "1", "-k", "30"]),
        case(&[
            "sub", "-p", "{p}", "-t", "{t}/a", "-C", "1", "-V", "5", "-x", "60",
        ]),
        case(&[
            "sub", "-p", "{p}", "-t", "{t}/a", "-C", "1", "-V", "5", "-x", "-1", "-c", "-i", "{id}",
        ]),
        case(&["sub", "-p", "{p}", "-t", "{t}/a", "-C", "1", "-x", "60"]),
        case(&[
            "sub", "-p", "{p}", "-t", "{t}/a", "-C", "1", "-c", "-i", "{id}", "-q", "1",
        ]),
        case(&[
            "sub",
            "-p",
            "{p}",
            "-t",
            "{t}/a",
            "-C",
            "1",
            "--will-topic",
            "{t}/will",
            "--will-payload",
            "gone",
            "--will-qos",
            "1",
            "--will-retain",
        ]),
        case(&[
            "sub",
            "-p",
            "{p}",
            "-t",
            "{t}/a",
            "-C",
            "1",
            "-A",
            "127.0.0.1",
        ]),
        case(&[
            "sub",
            "-p",
            "{p}",
            "-t",
            "{t}/a",
            "-C",
            "1",
            "--nodelay",
            "--quiet",
        ]),
        case(&[
            "sub",
            "-p",
            "{p}",
            "-t",
            all,
            "-C",
            "4",
            "--random-filter",
            "100",
            "-v",
        ])
        .differs("mosquitto_sub 2.0.11 prints a tenth of the chance asked for"),
        case(&[
            "sub",
            "-p",
            "{p}",
            "-t",
            "{t}/a",
            "-C",
            "1",
            "-V",
            "5",
            "-D",
            "connect",
            "session-expiry-interval",
            "10",
        ]),
        case(&["sub", "-p", "{p}", "-t", "{t}/nothing", "-W", "1"]),
        case(&[
            "sub",
            "-p",
            "{p}",
            "-t",
            "{t}/nothing",
            "-W",
            "1",
            "--quiet",
        ]),
        // --remove-retained changes the broker: each tool under its own prefix.
        case(&[
            "sub",
            "-p",
            "{p}",
            "-t",
            "{u}/#",
            "-C",
            "2",
            "--remove-retained",
            "-v",
            "-W",
            "2",
        ])
        .pre(&[
            "mosquitto_pub",
            "-p",
            "{p}",
            "-t",
            "{u}/r1",
            "-m",
            "one",
            "-r",
        ])
        .pre(&[
            "mosquitto_pub",
            "-p",
            "{p}",
            "-t",
            "{u}/r2",
            "-m",
            "two",
            "-r",
        ])
        .post(&["mosquitto_sub", "-p", "{p}", "-t", "{u}/#", "-W", "1", "-v"])
        .differs("mosquitto_sub 2.0.11 does not exit after -C with --remove-retained"),
        // Live (not retained) messages through a persistent session.
        case(&[
            "sub",
            "-p",
            "{p}",
            "-t",
            "{u}/#",
            "-q",
            "1",
            "-c",
            "-i",
            "{id}",
            "-C",
            "3",
            "-F",
            "%r %q %t %p",
        ])
        .pre(&[
            "mosquitto_sub",
            "-p",
            "{p}",
            "-t",
            "{u}/#",
            "-q",
            "1",
            "-c",
            "-i",
            "{id}",
            "-E",
        ])
        .pre(&[
            "mosquitto_pub",
            "-p",
            "{p}",
            "-t",
            "{u}/x",
            "-m",
            "live1",
            "-q",
            "1",
        ])
        .pre(&["mosquitto_pub", "-p", "{p}", "-t", "{u}/y", "-n", "-q", "1"])
        .pre(&[
            "mosquitto_pub",
            "-p",
            "{p}",
            "-t",
            "{u}/z",
            "-m",
            "live3",
            "-q",
            "2",
        ]),
        case(&[
            "sub", "-p", "{p}", "-t", "{u}/#", "-q", "1", "-c", "-i", "{id}", "-C", "2", "-v",
        ])
        .pre(&[
            "mosquitto_sub",
            "-p",
            "{p}",
            "-t",
            "{u}/#",
            "-q",
            "1",
            "-c",
            "-i",
            "{id}",
            "-E",
        ])
        .pre(&["mosquitto_pub", "-p", "{p}", "-t", "{u}/e", "-n", "-q", "1"])
        .pre(&[
            "mosquitto_pub",
            "-p",
            "{p}",
            "-t",
            "{u}/f",
            "-m",
            "x",
            "-q",
            "1",
        ]),
        case(&[
            "sub",
            "-p",
            "{p}",
            "-t",
            "{u}/#",
            "-q",
            "1",
            "-c",
            "-i",
            "{id}",
            "-v",
            "--retained-only",
            "-W",
            "2",
        ])
        .pre(&[
            "mosquitto_sub",
            "-p",
            "{p}",
            "-t",
            "{u}/#",
            "-q",
            "1",
            "-c",
            "-i",
            "{id}",
            "-E",
        ])
        .pre(&[
            "mosquitto_pub",
            "-p",
            "{p}",
            "-t",
            "{u}/live",
            "-m",
            "x",
            "-q",
            "1",
        ]),
        // Errors scripts tell apart.
        case(&["sub", "-p", "1", "-t", "x", "-W", "2"]),
        case(&["sub", "-p", "{p}", "-t", "{t}/a", "-C", "1", "-d"]).differs(
            "-d prints mqlink's debug log on stderr, not mosquitto's packet lines on stdout",
        ),
        case(&["sub", "--unix", "/nonexistent.sock", "-t", "x", "-W", "1"])
            .differs("no Unix sockets: a usage error (exit 2)"),
    ];
    compare("sub", &cases, &env);
}

#[test]
fn pub_command_lines_deliver_what_mosquitto_pub_delivers() {
    // The reader's session is offline while the tools publish: keep QoS 0 too.
    let broker = Mosquitto::with(MosquittoConfig {
        extra: vec!["queue_qos0_messages true".into()],
        ..Default::default()
    });
    let env = env_for(&broker);
    let reader = |c: Case, n: &'static str| {
        c.pre(&[
            "mosquitto_sub",
            "-p",
            "{p}",
            "-V",
            "5",
            "-t",
            "{u}/#",
            "-q",
            "2",
            "-c",
            "-i",
            "{id}-r",
            "-E",
        ])
        .post(&[
            "mosquitto_sub",
            "-p",
            "{p}",
            "-V",
            "5",
            "-t",
            "{u}/#",
            "-q",
            "2",
            "-c",
            "-i",
            "{id}-r",
            "-C",
            n,
            "-F",
            "%t|%p|%l|%q|%r|%P|%C|%R|%D|%F",
        ])
    };
    let cases = vec![
        reader(
            case(&["pub", "-p", "{p}", "-t", "{u}/a", "-m", "hello"]),
            "1",
        ),
        reader(
            case(&["pub", "-p", "{p}", "-t", "{u}/a", "-m", "hello", "-q", "1"]),
            "1",
        ),
        reader(
            case(&["pub", "-p", "{p}", "-t", "{u}/a", "-m", "hello", "-q", "2"]),
            "1",
        ),
        reader(
            case(&[
                "pub", "-p", "{p}", "-t", "{u}/a", "-m", "hello", "-q", "2", "-V", "mqttv31",
            ]),
            "1",
        ),
        reader(
            case(&["pub", "-p", "{p}", "-t", "{u}/a", "-n", "-q", "1"]),
            "1",
        ),
        reader(
            case(&["pub", "-p", "{p}", "-t", "{u}/a", "-s", "-q", "1"]).stdin(b"all\nof\nit\n"),
            "1",
        ),
        reader(
            case(&["pub", "-p", "{p}", "-t", "{u}/a", "-l", "-q", "1"])
                .stdin(b"one\ntwo\n\nfour\n"),
            "3",
        ),
        reader(
            case(&[
                "pub", "-p", "{p}", "-t", "{u}/a", "-m", "kept", "-r", "-q", "1",
            ]),
            "1",
        ),
        reader(
            case(&[
                "pub", "-p", "{p}", "-t", "{u}/a", "-m", "again", "--repeat", "3", "-q", "1",
            ]),
            "3",
        ),
        reader(
            case(&[
                "pub",
                "-p",
                "{p}",
                "-t",
                "{u}/a",
                "-m",
                "slow",
                "--repeat",
                "2",
                "--repeat-delay",
                "0.2",
            ]),
            "2",
        ),
        reader(
            case(&[
                "pub",
                "-p",
                "{p}",
                "-t",
                "{u}/a",
                "-m",
                "props",
                "-V",
                "5",
                "-q",
                "1",
                "-D",
                "publish",
                "user-property",
                "a",
                "b",
                "-D",
                "publish",
                "content-type",
                "text/x",
            ]),
            "1",
        ),
        reader(
            case(&[
                "pub",
                "-p",
                "{p}",
                "-t",
                "{u}/a",
                "-m",
                "more",
                "-V",
                "mqttv5",
                "-D",
                "publish",
                "correlation-data",
                "cd",
                "-D",
                "publish",
                "response-topic",
                "rt",
                "-D",
                "publish",
                "payload-format-indicator",
                "1",
                "-D",
                "publish",
                "message-expiry-interval",
                "3600",
            ]),
            "1",
        ),
        reader(
            case(&[
                "pub", "-p", "{p}", "-t", "{u}/a", "-m", "m", "-q", "1", "-M", "5",
            ]),
            "1",
        ),
        reader(
            case(&["pub", "-p", "{p}", "-t", "{u}/a", "-m", "m", "-I", "pfx-"]),
            "1",
        ),
        reader(
            case(&["pub", "-p", "{p}", "-t", "{u}/a", "-m", "m", "-i", "{id}"]),
            "1",
        ),
        reader(
            case(&[
                "pub",
                "-p",
                "{p}",
                "-t",
                "{u}/a",
                "-m",
                "m",
                "-A",
                "127.0.0.1",
                "--nodelay",
            ]),
            "1",
        ),
        reader(
            case(&[
                "pub", "-p", "{p}", "-t", "{u}/a", "-m", "m", "--quiet", "-k", "10",
            ]),
            "1",
        ),
        reader(
            case(&[
                "pub", "-p", "{p}", "-t", "{u}/a", "-m", "m", "-V", "5", "-x", "-1", "-i", "{id}",
            ]),
            "1",
        ),
        reader(
            case(&["pub", "-p", "{p}", "-t", "{u}/a", "-m", "m", "-x", "60"]),
            "1",
        ),
        reader(
            case(&[
                "pub", "-p", "{p}", "-t", "{u}/a", "-m", "m", "-c", "-i", "{id}", "-q", "1",
            ]),
            "1",
        ),
        reader(
            case(&["pub", "-L", "mqtt://127.0.0.1:{p}/{u}/a", "-m", "by url"]),
            "1",
        ),
        reader(
            case(&[
                "pub",
                "-L",
                "mqtt://bob:secret@127.0.0.1:{p}/{u}/a",
                "-m",
                "by url",
            ]),
            "1",
        ),
        reader(
            case(&[
                "pub",
                "-h",
                "127.0.0.1",
                "-p",
                "{p}",
                "-u",
                "bob",
                "-P",
                "pw",
                "-t",
                "{u}/a",
                "-m",
                "m",
            ]),
            "1",
        ),
        reader(
            case(&[
                "pub",
                "-p",
                "{p}",
                "-t",
                "{u}/a",
                "-m",
                "m",
                "--will-topic",
                "{u}/w",
                "--will-payload",
                "w",
                "--will-qos",
                "1",
                "--will-retain",
            ]),
            "1",
        ),
        reader(
            case(&["pub", "-p", "{p}", "-t", "{u}/a", "-f", "{ca}"]),
            "1",
        ),
        case(&["pub", "-p", "1", "-t", "x", "-m", "m"]),
        reader(
            case(&["pub", "-p", "{p}", "-t", "{u}/a", "-m", "m", "-d"]),
            "1",
        )
        .differs("-d prints mqlink's debug log on stderr, not mosquitto's packet lines on stdout"),
    ];
    compare("pub", &cases, &env);
}

#[test]
fn refused_connections_exit_with_the_connack_code() {
    let broker = Mosquitto::with(MosquittoConfig {
        users: vec![("alice".into(), "right-pw".into())],
        ..Default::default()
    });
    let env = env_for(&broker);
    mosquitto_pub(
        &env,
        &[
            "-u",
            "alice",
            "-P",
            "right-pw",
            "-t",
            &format!("{}/a", env.t),
            "-m",
            "in",
            "-r",
        ],
    );
    let cases = vec![
        case(&["sub", "-p", "{p}", "-t", "{t}/a", "-C", "1"]),
        case(&["sub", "-p", "{p}", "-t", "{t}/a", "-C", "1", "-V", "5"]),
        case(&[
            "sub", "-p", "{p}", "-t", "{t}/a", "-C", "1", "-u", "alice", "-P", "wrong",
        ]),
        case(&[
            "sub", "-p", "{p}", "-t", "{t}/a", "-C", "1", "-u", "alice", "-P", "right-pw", "-v",
        ]),
        case(&[
            "sub",
            "-L",
            "mqtt://alice:right-pw@127.0.0.1:{p}/{t}/a",
            "-C",
            "1",
            "-v",
        ]),
        case(&[
            "sub",
            "-L",
            "mqtt://alice:wrong@127.0.0.1:{p}/{t}/a",
            "-C",
            "1",
            "-V",
            "5",
        ]),
        case(&[
            "sub", "-p", "{p}", "-t", "{t}/a", "-C", "1", "-V", "31", "-u", "alice", "-P", "wrong",
        ]),
        case(&["pub", "-p", "{p}", "-t", "{t}/b", "-m", "m"]),
        case(&[
            "pub", "-p", "{p}", "-t", "{t}/b", "-m", "m", "-V", "5", "--quiet",
        ]),
        case(&[
            "pub", "-p", "{p}", "-t", "{t}/b", "-m", "m", "-u", "alice", "-P", "right-pw",
        ]),
    ];
    compare("refused", &cases, &env);
}

#[test]
fn tls_flags_as_mosquitto_takes_them() {
    let broker = Mosquitto::with(MosquittoConfig {
        tls: true,
        ..Default::default()
    });
    let env = env_for(&broker);
    let certs = broker.certs.as_ref().unwrap();
    // The test certificates under the names the cases use.
    let d = broker.dir.path();
    std::fs::create_dir_all(d.join("certs")).unwrap();
    std::fs::create_dir_all(d.join("cadir")).unwrap();
    std::fs::copy(&certs.ca, d.join("certs/ca.pem")).unwrap();
    std::fs::copy(&certs.client_cert, d.join("certs/client.pem")).unwrap();
    std::fs::copy(&certs.client_key, d.join("certs/client.key")).unwrap();
    std::fs::copy(&certs.ca, d.join("cadir/ca.pem")).unwrap();
    // c_rehash-style link, as OpenSSL looks certificates up in a directory.
    let hash = Command::new("openssl")
        .args(["x509", "-hash", "-noout", "-in"])
        .arg(&certs.ca)
        .output()
        .unwrap();
    let hash = String::from_utf8_lossy(&hash.stdout).trim().to_owned();
    std::fs::copy(&certs.ca, d.join(format!("cadir/{hash}.0"))).unwrap();
    mosquitto_pub(&env, &["-t", &format!("{}/a", env.t), "-m", "secret", "-r"]);
    let cases = vec![
        case(&[
            "sub",
            "-h",
            "localhost",
            "-p",
            "{tls}",
            "--cafile",
            "{ca}",
            "-t",
            "{t}/a",
            "-C",
            "1",
            "-v",
        ]),
        case(&[
            "sub",
            "-h",
            "localhost",
            "-p",
            "{tls}",
            "--capath",
            "{cadir}",
            "-t",
            "{t}/a",
            "-C",
            "1",
        ]),
        case(&[
            "sub",
            "-h",
            "127.0.0.1",
            "-p",
            "{tls}",
            "--cafile",
            "{ca}",
            "--insecure",
            "-t",
            "{t}/a",
            "-C",
            "1",
        ]),
        case(&[
            "sub",
            "-h",
            "localhost",
            "-p",
            "{tls}",
            "--cafile",
            "{ca}",
            "--cert",
            "{cert}",
            "--key",
            "{key}",
            "-t",
            "{t}/a",
            "-C",
            "1",
        ]),
        case(&[
            "sub",
            "-h",
            "localhost",
            "-p",
            "{tls}",
            "--tls-use-os-certs",
            "-t",
            "{t}/a",
            "-C",
            "1",
        ])
        .differs("untrusted CA: mosquitto_sub exits 1 or 8 depending on timing, mqlink 1"),
        case(&[
            "pub",
            "-h",
            "localhost",
            "-p",
            "{tls}",
            "--cafile",
            "{ca}",
            "-t",
            "{t}/p",
            "-m",
            "m",
            "-q",
            "1",
        ]),
    ];
    compare("tls", &cases, &env);

    // mqlink says, once and in the flag's own words, that nothing is verified.
    let out = Command::new(env!("CARGO_BIN_EXE_mqlink"))
        .args(["sub", "-h", "127.0.0.1", "--insecure", "-C", "1", "-p"])
        .arg(env.tls_port.unwrap().to_string())
        .arg("--cafile")
        .arg(&certs.ca)
        .args(["-t", &format!("{}/a", env.t)])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert_eq!(err.matches("TLS verification is off").count(), 1, "{err}");
    assert!(err.contains("--insecure"), "{err}");
}

/// `-V mqttv31` speaks MQTT 3.1 itself (protocol name MQIsdp, level 3),
/// not 3.1.1 under another name: Mosquitto logs the protocol as `p1`.
#[test]
fn mqtt_3_1_is_spoken_when_asked_for() {
    let broker = Mosquitto::start();
    let env = env_for(&broker);
    let id = unique_id("v31");
    let (port, topic) = (env.port.to_string(), format!("{}/v31", env.t));
    let args = [
        "pub", "-p", &port, "-V", "mqttv31", "-q", "1", "-i", &id, "-t", &topic, "-m", "x",
    ];
    let out = exec(env!("CARGO_BIN_EXE_mqlink"), &args.map(String::from), None);
    assert_eq!(out.code, Some(0));
    let log = broker.log();
    let line = log
        .lines()
        .find(|l| l.contains(&format!(" as {id} ")))
        .unwrap_or_else(|| panic!("no connect line for {id}:\n{log}"));
    assert!(line.contains("(p1,"), "not MQTT 3.1: {line}");
}
