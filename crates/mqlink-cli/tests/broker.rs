//! `mqlink broker`: started as a program with mosquitto's flags and a
//! config file, used by a client, stopped with SIGTERM.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use mqlink::{Client, ConnectError, ConnectOptions, Error, Message, QoS, Refusal, Subscription};
use testkit::{free_port, unique_id};

fn opts(port: u16, user: Option<(&str, &str)>) -> ConnectOptions {
    let mut o = ConnectOptions::new(&format!("mqtt://127.0.0.1:{port}")).unwrap();
    o.client_id = Some(unique_id("cli"));
    o.connect_timeout = Duration::from_secs(5);
    o.reconnect.max_attempts = 1;
    if let Some((u, p)) = user {
        o.username = Some(u.into());
        o.password = Some(p.into());
    }
    o
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqlink_broker_serves_until_sigterm_with_a_password_file() {
    let dir = std::env::temp_dir().join(unique_id("mqlink-broker"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("passwd"), "alice:secret\n").unwrap();
    let port = free_port();
    std::fs::write(
        dir.join("broker.conf"),
        format!("listener {port} 127.0.0.1\npassword_file passwd\nallow_anonymous false\nmax_queued_messages 100\n"),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_mqlink"))
        .args(["broker", "-c"])
        .arg(dir.join("broker.conf"))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // It says where it listens once it does.
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    while !line.contains("listening on") {
        line.clear();
        assert!(stderr.read_line(&mut line).unwrap() > 0, "exited early");
    }
    std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));

    let refused = Client::connect(opts(port, None)).await.err();
    assert!(
        matches!(
            refused,
            Some(Error::Connect(ConnectError::Refused {
                refusal: Refusal::NotAuthorized,
                ..
            }))
        ),
        "anonymous refused: {refused:?}"
    );
    let (c, mut inc) = Client::connect(opts(port, Some(("alice", "secret"))))
        .await
        .unwrap();
    c.subscribe(vec![Subscription::new("cli/#", QoS::AtLeastOnce)])
        .await
        .unwrap();
    c.publish(Message::new("cli/x", "hello", QoS::AtLeastOnce))
        .await
        .unwrap()
        .await
        .unwrap();
    let mut d = tokio::time::timeout(Duration::from_secs(5), inc.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&d.payload[..], b"hello");
    d.ack();
    c.disconnect().await;

    let st = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let status = child.wait().unwrap();
    assert!(status.success(), "exit 0 on SIGTERM: {status:?}");
    let _ = std::fs::remove_dir_all(dir);
}
