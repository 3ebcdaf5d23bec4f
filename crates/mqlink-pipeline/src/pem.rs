//! Certificates and keys given as PEM text (Cybus connections, Airbyte
//! configs) where the TLS layer reads files: written to files 0600 in one
//! private directory (0700) per process, removed when [`Cleanup`] is
//! dropped (the binary holds one for its whole run, signals included).
//! A value without PEM armour must be a readable file; either way the
//! value itself is never printed — it may be a private key.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The private directory, made on first use.
static DIR: Mutex<Option<tempfile::TempDir>> = Mutex::new(None);

/// Whether `value` is PEM text (rather than a path).
pub fn is_pem(value: &str) -> bool {
    value.contains("-----BEGIN")
}

/// The file to give the TLS layer for `value` of `key`: PEM text written to
/// a private file named after `name`, or `value` itself when it names a
/// readable file. The error names `key`, never the value.
pub fn pem_or_path(value: &str, key: &str, name: &str) -> Result<PathBuf, String> {
    if is_pem(value) {
        return write(value, name).map_err(|e| {
            format!("{key}: cannot write the PEM text to a private temporary file: {e}")
        });
    }
    // Pasted key material without its armour is not a path: checked here
    // so that no later error prints it as a file name.
    let readable = !value.contains('\n')
        && value.len() < 4096
        && std::fs::File::open(Path::new(value))
            .is_ok_and(|f| f.metadata().is_ok_and(|m| m.is_file()));
    if readable {
        return Ok(PathBuf::from(value));
    }
    Err(format!(
        "{key} is neither a PEM block (-----BEGIN …-----) nor a readable file (the value is not shown)"
    ))
}

fn write(text: &str, name: &str) -> std::io::Result<PathBuf> {
    let mut dir = DIR.lock().unwrap_or_else(|e| e.into_inner());
    let d = match dir.take() {
        Some(d) => dir.insert(d),
        None => dir.insert(
            tempfile::Builder::new()
                .prefix("mqlink-pem-")
                .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700))
                .tempdir()?,
        ),
    };
    let safe: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let path = d.path().join(format!("{safe}.pem"));
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    opts.open(&path)?.write_all(text.as_bytes())?;
    Ok(path)
}

/// Removes the private directory and every file in it when dropped.
pub struct Cleanup;

impl Drop for Cleanup {
    fn drop(&mut self) {
        let dir = DIR.lock().unwrap_or_else(|e| e.into_inner()).take();
        drop(dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn pem_goes_to_a_private_file_and_other_text_is_refused_unseen() {
        let cleanup = Cleanup;
        let f = pem_or_path("-----BEGIN X-----\nabc\n-----END X-----\n", "k", "c/k").unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&f), 0o600);
        assert_eq!(mode(f.parent().unwrap()), 0o700);
        assert_eq!(pem_or_path(f.to_str().unwrap(), "k", "x").unwrap(), f);
        let e =
            pem_or_path("TUlJRXZRSUJBREFOQmdrcWhraUc5dzBC", "clientPrivateKey", "x").unwrap_err();
        assert!(e.starts_with("clientPrivateKey is neither"), "{e}");
        assert!(!e.contains("TUlJRX"), "{e}");
        drop(cleanup);
        assert!(!f.exists() && !f.parent().unwrap().exists());
    }
}
