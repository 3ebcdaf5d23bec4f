//! The TLS listener's server configuration, on the rustls the client
//! side uses, from PEM files as Mosquitto's `certfile`, `keyfile`,
//! `cafile` and `require_certificate` name them.

use std::io;
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::ListenerTls;

fn file_err(key: &str, path: &Path, reason: impl std::fmt::Display) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("{key} {}: {reason}", path.display()),
    )
}

fn certs(key: &str, path: &Path) -> io::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_err(key, path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_err(key, path, e))?;
    if certs.is_empty() {
        return Err(file_err(key, path, "no PEM certificate in it"));
    }
    Ok(certs)
}

/// The acceptor for a TLS listener; errors name the key and the file.
pub(super) fn acceptor(tls: &ListenerTls) -> io::Result<tokio_rustls::TlsAcceptor> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(io::Error::other)?;
    let builder = match &tls.cafile {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in certs("cafile", ca)? {
                roots.add(c).map_err(|e| file_err("cafile", ca, e))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            );
            // Without require_certificate a client may still present one,
            // and it is checked when it does (as Mosquitto).
            let verifier = if tls.require_certificate {
                verifier.build()
            } else {
                verifier.allow_unauthenticated().build()
            };
            builder.with_client_cert_verifier(verifier.map_err(|e| file_err("cafile", ca, e))?)
        }
        None if tls.require_certificate => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "require_certificate needs a cafile to check client certificates against",
            ))
        }
        None => builder.with_no_client_auth(),
    };
    let chain = certs("certfile", &tls.certfile)?;
    let key = PrivateKeyDer::from_pem_file(&tls.keyfile)
        .map_err(|e| file_err("keyfile", &tls.keyfile, e))?;
    let config = builder
        .with_single_cert(chain, key)
        .map_err(|e| file_err("keyfile", &tls.keyfile, e))?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}
