//! `mqlink._mqlink`: the native half of the Python package, over the Rust
//! library's session ([`mqlink::Client`]) and source ([`mqlink::MqttSource`]).
//!
//! - One Tokio runtime per process runs every session; Python threads only
//!   hand messages over and wait, with the GIL released while they wait.
//! - [`Publisher::publish`] queues the message for the session's in-flight
//!   window (a queue as long as the window) and returns; it blocks (GIL
//!   released) only while window and queue are full. Confirmations are
//!   counted by one tracker task per publisher, in send order;
//!   `flush(timeout)` waits on that count.
//! - [`Subscriber::next`] yields messages whose `ack()` the session turns
//!   into PUBACK/PUBREC in arrival order.
//!
//! Errors raised here are the classes of `mqlink.errors`, looked up when
//! raised, so Python code catches one hierarchy.

mod json;

use std::future::Future;
use std::pin::pin;
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use mqlink::sink::{Confirmations, FlushError};
use mqlink::source::RecordAck;
use mqlink::{
    Client, ConnectOptions, Message, MqttSource, Protocol, PublishError, PublishProperties,
    PublishToken, QoS, Secret, TlsOptions,
};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyString, PyTuple};
use tokio::sync::mpsc;

/// The process's runtime. One worker carries many sessions (a session's
/// driver is one task) and costs less CPU than two trading wake-ups, which
/// leaves the Python thread and a local broker their cores.
fn rt() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("mqlink")
            .enable_all()
            .build()
            .expect("a Tokio runtime (threads and timers) can be created")
    })
}

/// Runs `fut` to completion from a Python thread: one poll with the GIL
/// held (the common case, e.g. room in the window, costs no GIL round
/// trip), then the rest with the GIL released.
fn wait<F>(py: Python<'_>, fut: F) -> F::Output
where
    F: Future + Send,
    F::Output: Send,
{
    let _ctx = rt().enter();
    let mut fut = pin!(fut);
    if let Poll::Ready(v) = fut.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        return v;
    }
    py.allow_threads(|| rt().block_on(fut))
}

/// An exception of `mqlink.errors` by name, with `msg`.
fn error(py: Python<'_>, class: &str, msg: String) -> PyErr {
    match py
        .import("mqlink.errors")
        .and_then(|m| m.getattr(class))
        .and_then(|cls| cls.call1((msg.clone(),)))
    {
        Ok(e) => PyErr::from_value(e),
        // Only when the package is broken: still say what happened.
        Err(_) => pyo3::exceptions::PyRuntimeError::new_err(msg),
    }
}

fn secs(what: &str, v: f64) -> PyResult<Duration> {
    Duration::try_from_secs_f64(v)
        .map_err(|_| PyValueError::new_err(format!("{what}: {v} is not a number of seconds >= 0")))
}

fn qos(what: &str, v: u8) -> PyResult<QoS> {
    QoS::from_u8(v)
        .ok_or_else(|| PyValueError::new_err(format!("{what}: {v} is not a QoS (0, 1 or 2)")))
}

/// Connection options from the dict the Python classes build (the same
/// names as the CLI's and the pipeline's options). Unknown keys are refused
/// by name: a typo must not be silently ignored.
fn connect_options(conn: &Bound<'_, PyDict>) -> PyResult<ConnectOptions> {
    let mut o = ConnectOptions::default();
    o.protocol_or_default(None);
    let mut tls = TlsOptions {
        keys: mqlink::options::TlsKeys::PYTHON,
        ..Default::default()
    };
    for (k, v) in conn.iter() {
        let key: String = k.extract()?;
        if v.is_none() {
            continue;
        }
        let bad = |e: PyErr| PyValueError::new_err(format!("{key}: {e}"));
        match key.as_str() {
            "broker" => {
                let urls: Vec<String> = if v.is_instance_of::<PyString>() {
                    vec![v.extract().map_err(bad)?]
                } else {
                    v.extract().map_err(bad)?
                };
                for u in urls {
                    o.brokers.push(
                        u.parse()
                            .map_err(|e| PyValueError::new_err(format!("broker: {e}")))?,
                    );
                }
            }
            "client_id" => o.client_id = Some(v.extract().map_err(bad)?),
            "username" => o.username = Some(v.extract().map_err(bad)?),
            "password" => o.password = Some(Secret::new(v.extract::<String>().map_err(bad)?)),
            "protocol" => {
                let p: String = v.str()?.to_string();
                let written: Protocol = p
                    .parse()
                    .map_err(|e: String| PyValueError::new_err(format!("protocol: {e}")))?;
                o.protocol_or_default(Some(written));
            }
            "clean_session" => o.clean_session = v.extract().map_err(bad)?,
            "session_expiry_interval" => {
                o.session_expiry_interval = Some(v.extract().map_err(bad)?)
            }
            "keep_alive" => o.keep_alive = secs(&key, v.extract().map_err(bad)?)?,
            "connect_timeout" => o.connect_timeout = secs(&key, v.extract().map_err(bad)?)?,
            "max_inflight" => o.max_inflight = v.extract().map_err(bad)?,
            "receive_maximum" => o.receive_maximum = v.extract().map_err(bad)?,
            "ca_file" => tls.ca_file = Some(v.extract().map_err(bad)?),
            "cert_file" => tls.client_cert = Some(v.extract().map_err(bad)?),
            "key_file" => tls.client_key = Some(v.extract().map_err(bad)?),
            "tls_insecure" => tls.insecure = v.extract().map_err(bad)?,
            "tls_server_name" => tls.server_name = Some(v.extract().map_err(bad)?),
            other => {
                return Err(PyTypeError::new_err(format!(
                    "unknown connection option {other:?}"
                )))
            }
        }
    }
    o.tls = tls;
    o.validate()
        .map_err(|e| PyValueError::new_err(e.to_string()))?;
    Ok(o)
}

/// MQTT 5 publish properties from a dict (`payload_format_indicator`,
/// `message_expiry_interval`, `content_type`, `response_topic`,
/// `correlation_data`, `user_properties`, `topic_alias`).
fn publish_properties(d: &Bound<'_, PyDict>) -> PyResult<PublishProperties> {
    let mut p = PublishProperties::default();
    for (k, v) in d.iter() {
        let key: String = k.extract()?;
        if v.is_none() {
            continue;
        }
        let bad = |e: PyErr| PyValueError::new_err(format!("properties.{key}: {e}"));
        match key.as_str() {
            "payload_format_indicator" => {
                p.payload_format_indicator = Some(v.extract().map_err(bad)?)
            }
            "message_expiry_interval" => {
                p.message_expiry_interval = Some(v.extract().map_err(bad)?)
            }
            "content_type" => p.content_type = Some(v.extract().map_err(bad)?),
            "response_topic" => p.response_topic = Some(v.extract().map_err(bad)?),
            "correlation_data" => {
                p.correlation_data = Some(Bytes::from(payload_bytes(&v).map_err(bad)?))
            }
            "user_properties" => {
                for item in v.try_iter().map_err(bad)? {
                    let (a, b): (String, String) = item?.extract().map_err(bad)?;
                    p.user_properties.push((a, b));
                }
            }
            "topic_alias" => p.topic_alias = Some(v.extract().map_err(bad)?),
            other => {
                return Err(PyValueError::new_err(format!(
                    "properties: unknown MQTT 5 publish property {other:?}"
                )))
            }
        }
    }
    Ok(p)
}

/// `bytes`, `bytearray`, `memoryview` as they are; `str` as UTF-8.
fn payload_bytes(v: &Bound<'_, PyAny>) -> PyResult<Vec<u8>> {
    if let Ok(b) = v.downcast::<PyBytes>() {
        return Ok(b.as_bytes().to_vec());
    }
    if let Ok(s) = v.downcast::<PyString>() {
        return Ok(s.to_cow()?.as_bytes().to_vec());
    }
    v.extract::<Vec<u8>>().map_err(|_| {
        PyTypeError::new_err(format!(
            "a payload must be bytes or str, not {}",
            v.get_type()
                .name()
                .map(|n| n.to_string())
                .unwrap_or_default()
        ))
    })
}

fn properties_dict<'py>(py: Python<'py>, p: &PublishProperties) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    if let Some(v) = p.payload_format_indicator {
        d.set_item("payload_format_indicator", v)?;
    }
    if let Some(v) = p.message_expiry_interval {
        d.set_item("message_expiry_interval", v)?;
    }
    if let Some(v) = &p.content_type {
        d.set_item("content_type", v)?;
    }
    if let Some(v) = &p.response_topic {
        d.set_item("response_topic", v)?;
    }
    if let Some(v) = &p.correlation_data {
        d.set_item("correlation_data", PyBytes::new(py, v))?;
    }
    if !p.user_properties.is_empty() {
        let l = PyList::empty(py);
        for (a, b) in &p.user_properties {
            l.append(PyTuple::new(py, [a, b])?)?;
        }
        d.set_item("user_properties", l)?;
    }
    if !p.subscription_identifiers.is_empty() {
        d.set_item(
            "subscription_identifiers",
            p.subscription_identifiers.clone(),
        )?;
    }
    Ok(d)
}

/// The error's text, naming the broker when it does not already.
fn name_broker(broker: &str, e: impl std::fmt::Display) -> String {
    let e = e.to_string();
    if e.contains(broker) {
        e
    } else {
        format!("{broker}: {e}")
    }
}

/// Why a session is not connected, if it is not.
fn session_problem(client: &Client) -> Option<String> {
    let status = client.status().borrow().clone();
    (!status.is_connected()).then(|| status.to_string())
}

/// The outcome of one publish, shared by the tracker (writer) and the
/// Python `Delivery` (reader).
#[derive(Default)]
struct Slot {
    outcome: Mutex<Option<Result<u8, String>>>,
    done: Condvar,
}

struct Pending {
    token: PublishToken,
    slot: Option<Arc<Slot>>,
}

/// Records one publish's outcome: its `Delivery` first, then the counts.
fn complete(
    counts: &Confirmations,
    r: Result<mqlink::Confirmed, PublishError>,
    slot: Option<Arc<Slot>>,
) {
    if let Some(slot) = slot {
        *slot.outcome.lock().expect("not poisoned") =
            Some(r.as_ref().map(|c| c.reason_code).map_err(|e| e.to_string()));
        slot.done.notify_all();
    }
    counts.record(&r);
}

/// Moves queued messages into the session's window, in order: waiting for
/// a free slot here, inside the runtime, costs nothing, where a Python
/// thread would pay a GIL release and a wake-up per message.
async fn feed(
    mut rx: mpsc::Receiver<(Message, Option<Arc<Slot>>)>,
    client: Client,
    tracker: mpsc::UnboundedSender<Pending>,
    counts: Arc<Confirmations>,
) {
    while let Some((msg, slot)) = rx.recv().await {
        match client.publish(msg).await {
            Ok(token) => {
                if let Err(mpsc::error::SendError(p)) = tracker.send(Pending { token, slot }) {
                    complete(
                        &counts,
                        Err(PublishError::Stopped("the publisher is closed".into())),
                        p.slot,
                    );
                }
            }
            Err(e) => complete(&counts, Err(e), slot),
        }
    }
}

/// Awaits confirmations in send order and counts them.
async fn track(mut rx: mpsc::UnboundedReceiver<Pending>, counts: Arc<Confirmations>) {
    while let Some(p) = rx.recv().await {
        let r = p.token.await;
        complete(&counts, r, p.slot);
    }
}

/// A publishing session (see `mqlink.Publisher`).
#[pyclass(module = "mqlink._mqlink", frozen)]
struct Publisher {
    client: Client,
    /// The session's in-flight window (`max_inflight`), also the queue's size.
    window: usize,
    queue: mpsc::Sender<(Message, Option<Arc<Slot>>)>,
    counts: Arc<Confirmations>,
}

#[pymethods]
impl Publisher {
    /// Connects (waiting for the first CONNACK, so a refusal is an error
    /// here) and starts the session; later losses are ridden out by
    /// reconnecting, with unconfirmed messages sent again.
    #[new]
    fn new(py: Python<'_>, conn: &Bound<'_, PyDict>) -> PyResult<Self> {
        let opts = connect_options(conn)?;
        let broker = opts
            .brokers
            .first()
            .map(ToString::to_string)
            .unwrap_or_default();
        let window = usize::from(opts.max_inflight);
        let (client, _incoming) = wait(py, async { Client::connect(opts).await })
            .map_err(|e| error(py, "ConnectFailed", name_broker(&broker, e)))?;
        let counts = Arc::new(Confirmations::default());
        let (tracker, rx) = mpsc::unbounded_channel();
        rt().spawn(track(rx, counts.clone()));
        let (queue, rx) = mpsc::channel(window);
        rt().spawn(feed(rx, client.clone(), tracker, counts.clone()));
        Ok(Publisher {
            client,
            window,
            queue,
            counts,
        })
    }

    /// Queues a message for the session's window and returns (waiting, GIL
    /// released, while window and queue are full). With `handle`, returns
    /// a `Delivery` that completes on PUBACK/PUBCOMP.
    /// With `json`, `payload` is a value to serialize as `json.dumps(payload)`
    /// would (in Rust for the common types).
    #[pyo3(signature = (topic, payload, qos=1, retain=false, properties=None, handle=true, json=false))]
    #[allow(clippy::too_many_arguments)]
    fn publish(
        &self,
        py: Python<'_>,
        topic: String,
        payload: &Bound<'_, PyAny>,
        qos: u8,
        retain: bool,
        properties: Option<&Bound<'_, PyDict>>,
        handle: bool,
        json: bool,
    ) -> PyResult<Option<Delivery>> {
        let payload = if json {
            json::dumps(payload)?
        } else {
            payload_bytes(payload)?
        };
        let mut msg = Message::new(topic, payload, self::qos("qos", qos)?).retain(retain);
        if let Some(p) = properties {
            msg = msg.properties(publish_properties(p)?);
        }
        // Errors the caller must see at once; the rest (a packet too
        // large for the broker) fail the message, reported by flush.
        mqlink::topic::validate_topic_name(&msg.topic)
            .map_err(|e| PyValueError::new_err(format!("topic {:?}: {e}", msg.topic)))?;
        let slot = handle.then(|| Arc::new(Slot::default()));
        let item = (msg, slot.clone());
        let closed = || {
            self.counts.unsent();
            error(py, "PublishFailed", "the publisher is closed".into())
        };
        // Counted first: `completed` never runs ahead of `published`.
        self.counts.sent();
        match self.queue.try_send(item) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Closed(_)) => return Err(closed()),
            Err(mpsc::error::TrySendError::Full(item)) => {
                // Window and queue full: wait (GIL released) until half the
                // queue has moved on, not for one place at a time.
                let half = (self.window / 2).max(1);
                wait(py, async {
                    let permits = self.queue.reserve_many(half).await?;
                    let mut permits = permits;
                    if let Some(p) = permits.next() {
                        p.send(item);
                    }
                    Ok::<_, mpsc::error::SendError<()>>(())
                })
                .map_err(|_| closed())?;
            }
        }
        Ok(slot.map(|slot| Delivery { slot }))
    }

    /// Waits until every message published so far is confirmed, at most
    /// `timeout` seconds. Raises `FlushTimeout` (naming how many are
    /// unconfirmed and why the session is not connected), or
    /// `PublishFailed` when messages published since the previous flush
    /// were not confirmed.
    fn flush(&self, py: Python<'_>, timeout: f64) -> PyResult<()> {
        let timeout = secs("timeout", timeout)?;
        let flushed = wait(
            py,
            self.counts.flush(timeout, || session_problem(&self.client)),
        );
        match flushed {
            Ok(()) => Ok(()),
            Err(FlushError::Timeout {
                unconfirmed, cause, ..
            }) => {
                let cause = cause.map(|c| format!(" ({c})")).unwrap_or_default();
                let e = error(
                    py,
                    "FlushTimeout",
                    format!(
                        "flush timed out after {timeout:?}: {unconfirmed} messages not confirmed by the broker{cause}"
                    ),
                );
                e.value(py).setattr("unconfirmed", unconfirmed)?;
                Err(e)
            }
            Err(FlushError::Failed { failed, last_error }) => {
                let e = error(
                    py,
                    "PublishFailed",
                    format!(
                        "{failed} messages published since the previous flush were not confirmed by the broker{}",
                        last_error.map(|l| format!(": {l}")).unwrap_or_default()
                    ),
                );
                e.value(py).setattr("failed", failed)?;
                Err(e)
            }
        }
    }

    /// Sends DISCONNECT and ends the session (flush first for a clean end:
    /// messages not yet confirmed fail).
    fn disconnect(&self, py: Python<'_>) {
        wait(py, self.client.disconnect());
    }

    /// `(published, confirmed, failed)` so far.
    fn counts(&self) -> (u64, u64, u64) {
        (
            self.counts.published(),
            self.counts.confirmed(),
            self.counts.failed(),
        )
    }

    /// Messages published and not confirmed or failed yet.
    fn in_flight(&self) -> u64 {
        self.counts.in_flight()
    }

    /// `None` when connected, else what the session is doing and why.
    fn problem(&self) -> Option<String> {
        session_problem(&self.client)
    }

    #[getter]
    fn client_id(&self) -> String {
        self.client.client_id().to_owned()
    }
}

/// The broker's confirmation of one message (see `mqlink.Delivery`).
#[pyclass(module = "mqlink._mqlink", frozen)]
struct Delivery {
    slot: Arc<Slot>,
}

#[pymethods]
impl Delivery {
    /// Whether the broker answered (or the publish failed).
    fn done(&self) -> bool {
        self.slot.outcome.lock().expect("not poisoned").is_some()
    }

    /// Waits at most `timeout` seconds (`None`: as long as it takes) and
    /// returns the MQTT 5 reason code of the PUBACK/PUBCOMP (0 on 3.1.1).
    /// Raises `PublishFailed` when the broker did not take the message,
    /// `TimeoutError` when it has not answered in time.
    #[pyo3(signature = (timeout=None))]
    fn result(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<u8> {
        let timeout = timeout.map(|t| secs("timeout", t)).transpose()?;
        let slot = self.slot.clone();
        let outcome = py.allow_threads(move || {
            let guard = slot.outcome.lock().expect("not poisoned");
            let guard = match timeout {
                Some(t) => {
                    slot.done
                        .wait_timeout_while(guard, t, |o| o.is_none())
                        .expect("not poisoned")
                        .0
                }
                None => slot
                    .done
                    .wait_while(guard, |o| o.is_none())
                    .expect("not poisoned"),
            };
            guard.clone()
        });
        match outcome {
            Some(Ok(code)) => Ok(code),
            Some(Err(e)) => Err(error(py, "PublishFailed", e)),
            None => Err(pyo3::exceptions::PyTimeoutError::new_err(format!(
                "the broker has not confirmed the message within {:?}",
                timeout.unwrap_or_default()
            ))),
        }
    }
}

/// A subscribing session (see `mqlink.Subscriber`).
#[pyclass(module = "mqlink._mqlink", frozen)]
struct Subscriber {
    source: Mutex<Option<MqttSource>>,
    client: Client,
}

#[pymethods]
impl Subscriber {
    /// Connects, subscribes to `topics` (`[(filter, qos)]`) and starts
    /// receiving.
    #[new]
    fn new(py: Python<'_>, conn: &Bound<'_, PyDict>, topics: Vec<(String, u8)>) -> PyResult<Self> {
        let opts = connect_options(conn)?;
        let broker = opts
            .brokers
            .first()
            .map(ToString::to_string)
            .unwrap_or_default();
        let mut b = MqttSource::builder().connection(opts);
        for (f, q) in topics {
            b = b.topic(f, qos("topics", q)?);
        }
        let config = b
            .build()
            .map_err(|e| PyValueError::new_err(e.to_string()))?;
        let source = wait(py, async { MqttSource::start(config).await })
            .map_err(|e| error(py, "ConnectFailed", name_broker(&broker, e)))?;
        let client = source.clients()[0].clone();
        Ok(Subscriber {
            source: Mutex::new(Some(source)),
            client,
        })
    }

    /// The next message, waiting at most `timeout` seconds (`None`: as long
    /// as it takes; 0: only one already received). `None` on timeout.
    /// Raises `SessionStopped` once the session has ended.
    #[pyo3(signature = (timeout=None))]
    fn next(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<Option<Received>> {
        let timeout = timeout.map(|t| secs("timeout", t)).transpose()?;
        // The lock is taken with the GIL released: a thread waiting for it
        // must not hold the GIL the thread inside needs to return.
        let got = py.allow_threads(|| {
            let mut guard = self.source.lock().expect("not poisoned");
            let source = guard.as_mut()?;
            let _ctx = rt().enter();
            Some(rt().block_on(async {
                match timeout {
                    Some(t) if t.is_zero() => Some(source.try_next().await),
                    Some(t) => tokio::time::timeout(t, source.next()).await.ok(),
                    None => Some(source.next().await),
                }
            }))
        });
        let Some(got) = got else {
            return Err(error(
                py,
                "SessionStopped",
                "the subscriber is closed".into(),
            ));
        };
        match got {
            None | Some(None) if timeout.is_some_and(|t| t.is_zero()) => Ok(None),
            None => Ok(None),
            Some(None) => Err(error(
                py,
                "SessionStopped",
                format!(
                    "the session ended{}",
                    session_problem(&self.client)
                        .map(|p| format!(": {p}"))
                        .unwrap_or_default()
                ),
            )),
            Some(Some(mut r)) => {
                let ack = r.take_ack();
                let properties = match r.properties.as_deref() {
                    Some(p) => Some(properties_dict(py, p)?.unbind()),
                    None => None,
                };
                Ok(Some(Received {
                    topic: r.topic.to_string(),
                    payload: PyBytes::new(py, &r.payload).unbind(),
                    qos: r.qos as u8,
                    retain: r.retain,
                    dup: r.dup,
                    properties,
                    ack: Mutex::new(ack),
                }))
            }
        }
    }

    /// Sends the acknowledgements given so far and DISCONNECT.
    fn close(&self, py: Python<'_>) {
        // Ending the session first also ends a `next` waiting in another
        // thread, which holds the source.
        wait(py, self.client.disconnect());
        let source = py.allow_threads(|| self.source.lock().expect("not poisoned").take());
        if let Some(s) = source {
            wait(py, s.close());
        }
    }

    /// `None` when connected, else what the session is doing and why.
    fn problem(&self) -> Option<String> {
        session_problem(&self.client)
    }

    #[getter]
    fn client_id(&self) -> String {
        self.client.client_id().to_owned()
    }
}

/// A received message (see `mqlink.Message`).
#[pyclass(module = "mqlink._mqlink", name = "Message", frozen)]
struct Received {
    #[pyo3(get)]
    topic: String,
    #[pyo3(get)]
    payload: Py<PyBytes>,
    #[pyo3(get)]
    qos: u8,
    #[pyo3(get)]
    retain: bool,
    #[pyo3(get)]
    dup: bool,
    #[pyo3(get)]
    properties: Option<Py<PyDict>>,
    ack: Mutex<Option<RecordAck>>,
}

#[pymethods]
impl Received {
    /// Acknowledges the message: the broker hears of it (PUBACK/PUBREC)
    /// once every earlier message is acknowledged too. Idempotent.
    fn ack(&self) {
        if let Some(a) = self.ack.lock().expect("not poisoned").take() {
            a.ack();
        }
    }

    fn __repr__(&self, py: Python<'_>) -> String {
        format!(
            "Message(topic={:?}, payload={} bytes, qos={}, retain={})",
            self.topic,
            self.payload.bind(py).as_bytes().len(),
            self.qos,
            if self.retain { "True" } else { "False" }
        )
    }
}

/// `json.dumps(value).encode()`, as the publisher's `json=True` does it
/// (the tests compare the two).
#[pyfunction]
fn json_dumps(py: Python<'_>, value: &Bound<'_, PyAny>) -> PyResult<Py<PyBytes>> {
    Ok(PyBytes::new(py, &json::dumps(value)?).unbind())
}

#[pymodule]
fn _mqlink(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(json_dumps, m)?)?;
    m.add_class::<Publisher>()?;
    m.add_class::<Delivery>()?;
    m.add_class::<Subscriber>()?;
    m.add_class::<Received>()?;
    Ok(())
}
