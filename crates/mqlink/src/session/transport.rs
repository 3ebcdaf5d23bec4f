//! Opening a byte stream to a broker: TCP, TLS (rustls), WebSocket and
//! WebSocket over TLS. The session driver sees only a reader and a writer.

#[cfg(feature = "tls")]
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::error::ConnectError;
use crate::options::{BrokerUrl, OptionsError, TlsKeys, TlsOptions, Transport};

pub(crate) type Reader = Box<dyn AsyncRead + Send + Unpin>;
pub(crate) type Writer = Box<dyn AsyncWrite + Send + Unpin>;

/// Whether the broker's TCP has acknowledged every byte we sent on a
/// connection (Linux: the socket's send queue is empty, `SIOCOUTQ`).
/// Valid while the connection's reader and writer are alive (they own
/// the socket).
#[derive(Clone, Copy)]
pub(crate) struct SentProbe(#[cfg(target_os = "linux")] std::os::fd::RawFd);

impl SentProbe {
    fn of(tcp: &TcpStream) -> SentProbe {
        #[cfg(target_os = "linux")]
        return SentProbe(std::os::fd::AsRawFd::as_raw_fd(tcp));
        #[cfg(not(target_os = "linux"))]
        {
            let _ = tcp;
            SentProbe()
        }
    }

    /// `Some(true)` once the broker's TCP acknowledged all we sent; `None`
    /// where the platform cannot tell.
    pub(crate) fn all_acknowledged(&self) -> Option<bool> {
        #[cfg(target_os = "linux")]
        {
            let mut queued: libc::c_int = 0;
            // SAFETY: the descriptor is open (see above); TIOCOUTQ writes one int.
            let r = unsafe { libc::ioctl(self.0, libc::TIOCOUTQ, &mut queued) };
            (r == 0).then_some(queued == 0)
        }
        #[cfg(not(target_os = "linux"))]
        None
    }
}

/// TLS client configuration, built once per session from [`TlsOptions`].
#[derive(Clone)]
pub(crate) struct TlsSetup {
    #[cfg(feature = "tls")]
    config: Arc<rustls::ClientConfig>,
    #[cfg(feature = "tls")]
    server_name: Option<String>,
    keys: TlsKeys,
}

/// Verification off is said once per process, in the user's words: it is
/// a choice, but one that must not go unnoticed.
pub(crate) fn warn_if_unverified(opts: &TlsOptions) {
    static SAID: std::sync::Once = std::sync::Once::new();
    if opts.insecure {
        SAID.call_once(|| {
            tracing::warn!(
                setting = opts.keys.insecure,
                "TLS verification is off: the broker's certificate and host name are not checked, so anyone on the path can read and change the traffic."
            )
        });
    }
}

/// An error while reading the CONNACK: a TLS alert there (TLS 1.3 sends the
/// broker's verdict on the client certificate after the handshake) is
/// fatal with a hint, not a connection to retry forever.
pub(crate) fn read_error(
    broker: &BrokerUrl,
    tls: Option<&TlsSetup>,
    error: std::io::Error,
) -> ConnectError {
    #[cfg(feature = "tls")]
    if let Some(reason) = tls.and_then(|t| tls::alert_hint(&error, &t.keys)) {
        return ConnectError::Tls {
            broker: broker.clone(),
            reason,
        };
    }
    let _ = tls;
    ConnectError::Io {
        broker: broker.clone(),
        error,
    }
}

impl TlsSetup {
    /// Reads the CA, certificate and key files; errors name the file.
    pub(crate) fn new(opts: &TlsOptions) -> Result<Self, OptionsError> {
        #[cfg(feature = "tls")]
        {
            Ok(TlsSetup {
                config: Arc::new(tls::client_config(opts)?),
                server_name: opts.server_name.clone(),
                keys: opts.keys,
            })
        }
        #[cfg(not(feature = "tls"))]
        {
            let _ = opts;
            Err(OptionsError::TlsNotCompiled)
        }
    }
}

pub(crate) async fn connect(
    broker: &BrokerUrl,
    tls: Option<&TlsSetup>,
) -> Result<(Reader, Writer, SentProbe), ConnectError> {
    let tcp = TcpStream::connect((broker.host.as_str(), broker.port))
        .await
        .map_err(|error| ConnectError::Io {
            broker: broker.clone(),
            error,
        })?;
    let _ = tcp.set_nodelay(true);
    let probe = SentProbe::of(&tcp);
    let (r, w) = match broker.transport {
        Transport::Tcp => {
            let (r, w) = tcp.into_split();
            (Box::new(r) as Reader, Box::new(w) as Writer)
        }
        #[cfg(feature = "tls")]
        Transport::Tls => {
            let s = tls::handshake(broker, tls, tcp).await?;
            let (r, w) = tokio::io::split(s);
            (Box::new(r) as Reader, Box::new(w) as Writer)
        }
        #[cfg(feature = "ws")]
        Transport::Ws => ws::handshake(broker, tcp).await?,
        #[cfg(all(feature = "ws", feature = "tls"))]
        Transport::Wss => {
            let s = tls::handshake(broker, tls, tcp).await?;
            ws::handshake(broker, s).await?
        }
        #[allow(unreachable_patterns)]
        _ => {
            let _ = tls;
            return Err(ConnectError::Protocol {
                broker: broker.clone(),
                reason: "transport not compiled in".into(),
            });
        }
    };
    Ok((r, w, probe))
}

#[cfg(feature = "tls")]
mod tls {
    use super::*;
    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
    use rustls::{DigitallySignedStruct, SignatureScheme};

    fn file_err(what: &'static str, path: &std::path::Path, reason: impl ToString) -> OptionsError {
        // `what` is the key as the user wrote it (`TlsKeys`).
        OptionsError::TlsFile {
            what,
            path: path.to_owned(),
            reason: reason.to_string(),
        }
    }

    pub(super) fn client_config(opts: &TlsOptions) -> Result<rustls::ClientConfig, OptionsError> {
        let k = opts.keys;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| OptionsError::TlsFile {
                what: "TLS setup",
                path: Default::default(),
                reason: e.to_string(),
            })?;
        let builder = if opts.insecure {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(NoVerification(provider.clone())))
        } else {
            let mut roots = rustls::RootCertStore::empty();
            match &opts.ca_file {
                Some(path) => {
                    let certs = CertificateDer::pem_file_iter(path)
                        .map_err(|e| file_err(k.ca_file, path, e))?
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(|e| file_err(k.ca_file, path, e))?;
                    if certs.is_empty() {
                        return Err(file_err(k.ca_file, path, "no PEM certificate in it"));
                    }
                    for c in certs {
                        roots.add(c).map_err(|e| file_err(k.ca_file, path, e))?;
                    }
                }
                None => {
                    let native = rustls_native_certs::load_native_certs();
                    roots.add_parsable_certificates(native.certs);
                }
            }
            builder.with_root_certificates(roots)
        };
        match (&opts.client_cert, &opts.client_key) {
            (Some(cert), Some(key)) => {
                let chain = CertificateDer::pem_file_iter(cert)
                    .map_err(|e| file_err(k.client_cert, cert, e))?
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| file_err(k.client_cert, cert, e))?;
                if chain.is_empty() {
                    return Err(file_err(k.client_cert, cert, "no PEM certificate in it"));
                }
                let key_der = PrivateKeyDer::from_pem_file(key)
                    .map_err(|e| file_err(k.client_key, key, e))?;
                let signing = provider
                    .key_provider
                    .load_private_key(key_der)
                    .map_err(|e| file_err(k.client_key, key, e))?;
                let certified = rustls::sign::CertifiedKey::new(chain, signing);
                // The key must belong to the certificate. A certificate
                // webpki cannot parse (X.509 v1, as the mosquitto-tls man
                // page recipe makes them) is still sent: the broker judges
                // it, as mosquitto_pub's OpenSSL lets it.
                if let Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) =
                    certified.keys_match()
                {
                    return Err(file_err(
                        k.client_key,
                        key,
                        format!("is not the key of the certificate {}", cert.display()),
                    ));
                }
                Ok(builder
                    .with_client_cert_resolver(Arc::new(FixedClientCert(Arc::new(certified)))))
            }
            _ => Ok(builder.with_no_client_auth()),
        }
    }

    pub(super) async fn handshake(
        broker: &BrokerUrl,
        tls: Option<&TlsSetup>,
        tcp: TcpStream,
    ) -> Result<tokio_rustls::client::TlsStream<TcpStream>, ConnectError> {
        let err = |reason: String| ConnectError::Tls {
            broker: broker.clone(),
            reason,
        };
        let setup = tls.ok_or_else(|| err("no TLS configuration".into()))?;
        let name = setup.server_name.as_deref().unwrap_or(&broker.host);
        let server_name = ServerName::try_from(name.to_owned())
            .map_err(|e| err(format!("server name {name:?}: {e}")))?;
        tokio_rustls::TlsConnector::from(setup.config.clone())
            .connect(server_name, tcp)
            .await
            .map_err(|e| err(explain(&e, name, broker.port, &setup.keys)))
    }

    /// "or <switch> to skip verification", where the front end has one.
    fn or_skip(keys: &TlsKeys) -> String {
        match keys.insecure {
            "" => String::new(),
            k => format!(", or set {k} to skip verification (tests only)"),
        }
    }

    /// The handshake error, with its cause and fix where webpki's own words
    /// would leave a user guessing; keys as the user wrote them.
    fn explain(e: &std::io::Error, host: &str, port: u16, keys: &TlsKeys) -> String {
        use rustls::CertificateError as C;
        let inner = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>());
        let cert = inner.and_then(|r| match r {
            rustls::Error::InvalidCertificate(c) => Some(c),
            _ => None,
        });
        let (ca, skip) = (keys.ca_file, or_skip(keys));
        let other = |c: &C, what: &str| matches!(c, C::Other(o) if format!("{o:?}").contains(what));
        let hint = match cert {
            Some(c) if other(c, "UnsupportedCertVersion") => Some(format!(
                "the broker's certificate is X.509 v1 (made without extensions, as the mosquitto-tls man page recipe does); TLS verification needs v3 with a subjectAltName: reissue it with `-extfile` (subjectAltName=DNS:<host>,IP:<address>){skip}"
            )),
            Some(c) if other(c, "CaUsedAsEndEntity") => Some(format!(
                "the broker presents a CA certificate (CA:TRUE, e.g. a self-signed one made with `-x509`) as its own; a CA cannot be trusted as a server: issue the broker a server certificate signed by that CA and give the CA in {ca}{skip}"
            )),
            Some(C::NotValidForName | C::NotValidForNameContext { .. }) => Some(format!(
                "the broker's certificate is not valid for {host:?} (a certificate with only a Common Name and no subjectAltName matches no name): reissue it with subjectAltName=DNS:{host} (or IP:{host}){skip}"
            )),
            Some(C::UnknownIssuer) => Some(format!(
                "the broker's certificate is not signed by a CA in {ca} (or the system's): give the CA that signed it in {ca}{skip}"
            )),
            Some(C::Expired | C::ExpiredContext { .. }) => Some(
                "the broker's certificate has expired: renew it (or check this machine's clock)".to_string(),
            ),
            _ => alert_hint(e, keys).or_else(|| {
                not_tls(e, inner).then(|| format!(
                    "port {port} does not seem to speak TLS (its answer was not a TLS handshake): use the broker's TLS port (usually 8883) or turn TLS off ({})",
                    keys.plain
                ))
            }),
        };
        match hint {
            Some(h) => format!("{e}: {h}"),
            None => e.to_string(),
        }
    }

    /// A plain MQTT listener answers a ClientHello by hanging up (Mosquitto
    /// resets the connection) or with bytes that are no TLS record.
    fn not_tls(e: &std::io::Error, inner: Option<&rustls::Error>) -> bool {
        use std::io::ErrorKind as K;
        matches!(
            inner,
            Some(rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. })
        ) || (inner.is_none()
            && matches!(
                e.kind(),
                K::ConnectionReset | K::UnexpectedEof | K::BrokenPipe
            ))
    }

    /// A TLS alert the broker sent about this client: its certificate was
    /// missing or refused. Not retried: the next attempt gets the same.
    pub(super) fn alert_hint(e: &std::io::Error, keys: &TlsKeys) -> Option<String> {
        use rustls::AlertDescription as A;
        let alert = match e.get_ref()?.downcast_ref::<rustls::Error>()? {
            rustls::Error::AlertReceived(a) => *a,
            _ => return None,
        };
        let (cert, key) = (keys.client_cert, keys.client_key);
        let hint = match alert {
            A::CertificateRequired | A::HandshakeFailure => format!(
                "the broker requires a client certificate (mutual TLS): give one in {cert} with its key in {key}"
            ),
            A::UnknownCA | A::BadCertificate | A::CertificateUnknown => format!(
                "the broker refused the client certificate in {cert}: it is not signed by a CA the broker trusts (its cafile)"
            ),
            A::CertificateExpired => format!("the client certificate in {cert} has expired"),
            A::CertificateRevoked => format!("the client certificate in {cert} is revoked"),
            _ => return None,
        };
        Some(format!("the broker sent the TLS alert {alert:?}: {hint}"))
    }

    /// The client certificate and key, sent whenever the broker asks.
    #[derive(Debug)]
    struct FixedClientCert(Arc<rustls::sign::CertifiedKey>);

    impl rustls::client::ResolvesClientCert for FixedClientCert {
        fn resolve(
            &self,
            _hints: &[&[u8]],
            _schemes: &[SignatureScheme],
        ) -> Option<Arc<rustls::sign::CertifiedKey>> {
            Some(self.0.clone())
        }
        fn has_certs(&self) -> bool {
            true
        }
    }

    /// Under `insecure`, a certificate webpki cannot parse (X.509 v1) is not
    /// judged either; a parsable one must still have signed the handshake.
    fn unparsable_is_fine(
        r: Result<HandshakeSignatureValid, rustls::Error>,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        match r {
            Err(rustls::Error::InvalidCertificate(rustls::CertificateError::Other(o)))
                if format!("{o:?}").contains("UnsupportedCertVersion") =>
            {
                Ok(HandshakeSignatureValid::assertion())
            }
            r => r,
        }
    }

    /// The explicit `insecure` opt-out: accepts any certificate and host name.
    #[derive(Debug)]
    struct NoVerification(Arc<rustls::crypto::CryptoProvider>);

    impl ServerCertVerifier for NoVerification {
        fn verify_server_cert(
            &self,
            _: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &ServerName<'_>,
            _: &[u8],
            _: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            Ok(ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            unparsable_is_fine(rustls::crypto::verify_tls12_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            ))
        }
        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            unparsable_is_fine(rustls::crypto::verify_tls13_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            ))
        }
        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }
}

#[cfg(feature = "ws")]
mod ws {
    use super::*;
    use bytes::{Buf, Bytes};
    use futures_util::stream::{SplitSink, SplitStream};
    use futures_util::{Sink, SinkExt, Stream, StreamExt};
    use std::io;
    use std::pin::Pin;
    use std::task::{Context, Poll};
    use tokio::io::ReadBuf;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::{http::HeaderValue, Message};
    use tokio_tungstenite::WebSocketStream;

    pub(super) async fn handshake<S>(
        broker: &BrokerUrl,
        stream: S,
    ) -> Result<(Reader, Writer), ConnectError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let err = |reason: String| ConnectError::WebSocket {
            broker: broker.clone(),
            reason,
        };
        let scheme = if broker.transport == Transport::Wss {
            "wss"
        } else {
            "ws"
        };
        let host = if broker.host.contains(':') {
            format!("[{}]", broker.host)
        } else {
            broker.host.clone()
        };
        let url = format!("{scheme}://{host}:{}{}", broker.port, broker.path);
        let mut req = url.into_client_request().map_err(|e| err(e.to_string()))?;
        req.headers_mut()
            .insert("Sec-WebSocket-Protocol", HeaderValue::from_static("mqtt"));
        let (ws, _) = tokio_tungstenite::client_async(req, stream)
            .await
            .map_err(|e| err(e.to_string()))?;
        let (sink, stream) = ws.split();
        Ok((
            Box::new(WsReader {
                stream,
                current: Bytes::new(),
            }),
            Box::new(WsWriter { sink }),
        ))
    }

    /// MQTT over WebSocket: binary frames carry the byte stream (MQTT 5 §6).
    struct WsReader<S> {
        stream: SplitStream<WebSocketStream<S>>,
        current: Bytes,
    }

    impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsReader<S> {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            loop {
                if !self.current.is_empty() {
                    let n = self.current.len().min(buf.remaining());
                    buf.put_slice(&self.current[..n]);
                    self.current.advance(n);
                    return Poll::Ready(Ok(()));
                }
                match std::task::ready!(Pin::new(&mut self.stream).poll_next(cx)) {
                    None | Some(Ok(Message::Close(_))) => return Poll::Ready(Ok(())),
                    Some(Ok(Message::Binary(b))) => self.current = b,
                    Some(Ok(_)) => {} // ping/pong are answered by tungstenite; text is ignored
                    Some(Err(e)) => return Poll::Ready(Err(io::Error::other(e))),
                }
            }
        }
    }

    struct WsWriter<S> {
        sink: SplitSink<WebSocketStream<S>, Message>,
    }

    impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsWriter<S> {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            std::task::ready!(self.sink.poll_ready_unpin(cx)).map_err(io::Error::other)?;
            Pin::new(&mut self.sink)
                .start_send(Message::Binary(Bytes::copy_from_slice(buf)))
                .map_err(io::Error::other)?;
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.sink.poll_flush_unpin(cx).map_err(io::Error::other)
        }
        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.sink.poll_close_unpin(cx).map_err(io::Error::other)
        }
    }
}
