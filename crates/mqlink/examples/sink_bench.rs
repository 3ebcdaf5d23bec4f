//! Publishes N JSON records through the library's MqttSink at QoS 1 and
//! waits for every confirmation; used by scripts/bench.sh.
//! Usage: sink_bench HOST PORT TOPIC N
use std::time::{Duration, Instant};

use mqlink::sink::{MqttSink, SinkRecord};
use mqlink::{ConnectOptions, QoS};
use serde_json::json;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, host, port, topic, n] = &args[..] else {
        return Err("usage: sink_bench HOST PORT TOPIC N".into());
    };
    let n: u64 = n.parse()?;
    let sink = MqttSink::builder()
        .connection(ConnectOptions::new(&format!("mqtt://{host}:{port}"))?)
        .topic(topic)
        .qos(QoS::AtLeastOnce)
        .start()
        .await?;
    let started = Instant::now();
    for i in 0..n {
        let record = SinkRecord::json(json!({
            "device_id": format!("dev-{:03}", i % 100), "seq": i, "ts": 1_790_000_000_000u64 + i,
            "temperature": 20.5, "humidity": 40.5, "site": "plant-7", "ok": true
        }));
        drop(sink.send(record).await?);
    }
    sink.flush(Duration::from_secs(120)).await?;
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "sink_bench: {n} records confirmed in {secs:.3} s ({:.0}/s)",
        n as f64 / secs
    );
    Ok(())
}
