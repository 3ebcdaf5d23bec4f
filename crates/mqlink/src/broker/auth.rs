//! Password files in mosquitto_passwd's format: one `user:hash` a line,
//! the hash `$7$iterations$salt$hash` (PBKDF2-SHA512, Mosquitto 2) or
//! `$6$salt$hash` (SHA-512, Mosquitto 1.x), salt and hash in base64.
//! A line whose password does not start with `$6$`/`$7$` is a plain
//! password (`user:secret`), for tests and local development.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::path::Path;

use base64::Engine;

/// Users and their password hashes.
#[derive(Clone, Default)]
pub struct Passwords {
    users: HashMap<String, Hash>,
}

#[derive(Clone)]
enum Hash {
    Pbkdf2 {
        iterations: NonZeroU32,
        salt: Vec<u8>,
        hash: Vec<u8>,
    },
    Sha512 {
        salt: Vec<u8>,
        hash: Vec<u8>,
    },
    Plain(String),
}

impl std::fmt::Debug for Passwords {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Passwords({} users)", self.users.len())
    }
}

/// A password file that cannot be used; names the line.
#[derive(Debug, thiserror::Error)]
pub enum PasswordFileError {
    /// The file cannot be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// A line is not `user:hash`.
    #[error("{path}:{line}: {reason}")]
    Line {
        /// The file.
        path: String,
        /// The line number (1-based).
        line: usize,
        /// What is wrong with it.
        reason: &'static str,
    },
}

impl Passwords {
    /// Reads a password file (see the module documentation for the format).
    pub fn load(path: &Path) -> Result<Passwords, PasswordFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| PasswordFileError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Passwords::parse(&text).map_err(|(line, reason)| PasswordFileError::Line {
            path: path.display().to_string(),
            line,
            reason,
        })
    }

    /// Parses a password file's text; `Err((line, reason))`.
    pub fn parse(text: &str) -> Result<Passwords, (usize, &'static str)> {
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut users = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim_end_matches('\r');
            if line.trim().is_empty() || line.starts_with('#') {
                continue;
            }
            let n = i + 1;
            let (user, pw) = line.split_once(':').ok_or((n, "expected user:password"))?;
            if user.is_empty() {
                return Err((n, "empty user name"));
            }
            let hash = if let Some(rest) = pw.strip_prefix("$7$") {
                let mut parts = rest.split('$');
                let (Some(it), Some(salt), Some(hash), None) =
                    (parts.next(), parts.next(), parts.next(), parts.next())
                else {
                    return Err((n, "expected $7$iterations$salt$hash"));
                };
                Hash::Pbkdf2 {
                    iterations: it
                        .parse()
                        .map_err(|_| (n, "iterations is not a positive number"))?,
                    salt: b64.decode(salt).map_err(|_| (n, "salt is not base64"))?,
                    hash: b64.decode(hash).map_err(|_| (n, "hash is not base64"))?,
                }
            } else if let Some(rest) = pw.strip_prefix("$6$") {
                let Some((salt, hash)) = rest.split_once('$') else {
                    return Err((n, "expected $6$salt$hash"));
                };
                Hash::Sha512 {
                    salt: b64.decode(salt).map_err(|_| (n, "salt is not base64"))?,
                    hash: b64.decode(hash).map_err(|_| (n, "hash is not base64"))?,
                }
            } else {
                Hash::Plain(pw.to_owned())
            };
            users.insert(user.to_owned(), hash);
        }
        Ok(Passwords { users })
    }

    /// Whether the file has no users.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// Whether `password` is `user`'s.
    pub fn check(&self, user: &str, password: &[u8]) -> bool {
        match self.users.get(user) {
            None => false,
            Some(Hash::Plain(p)) => same(p.as_bytes(), password),
            Some(Hash::Sha512 { salt, hash }) => {
                let mut ctx = ring::digest::Context::new(&ring::digest::SHA512);
                ctx.update(password);
                ctx.update(salt);
                same(ctx.finish().as_ref(), hash)
            }
            Some(Hash::Pbkdf2 {
                iterations,
                salt,
                hash,
            }) => ring::pbkdf2::verify(
                ring::pbkdf2::PBKDF2_HMAC_SHA512,
                *iterations,
                salt,
                password,
                hash,
            )
            .is_ok(),
        }
    }
}

/// Compares in time independent of where the inputs differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_mosquitto_passwd_hashes_and_plain_lines() {
        // alice: `mosquitto_passwd -b` (Mosquitto 2.0.11); bob: Mosquitto 1.x's $6$ (SHA-512 of password and salt).
        let text = "alice:$7$101$Anw1L+HYdf6a/ZDy$cfkTMSrQ+PRT0c3KgQp7SSH9VCJwDuZHcn03fcJroeKSU+wj1DkARfqw7dVG4xsDPPBOi52qIcHDTz3vKB59pQ==\n\
                    bob:$6$5txR2MCvfKEOASzO$IEYQmVL9/8KuXA5/dJMUYn0WtGLnlJ4g+Qid9So7aMULhmXS0pNVx3Ahu8vBQwV5SrNg9qy9TFWMtoNgMEvDZg==\n\
                    # a comment\n\
                    carol:plain\n";
        let p = Passwords::parse(text).unwrap();
        assert!(p.check("carol", b"plain"));
        assert!(!p.check("carol", b"plain2"));
        assert!(!p.check("nobody", b"plain"));
        assert!(p.check("alice", b"secret"));
        assert!(!p.check("alice", b"wrong"));
        assert!(p.check("bob", b"hunter2"));
        assert!(!p.check("bob", b"wrong"));
        assert_eq!(
            Passwords::parse("x").err(),
            Some((1, "expected user:password"))
        );
        assert_eq!(
            Passwords::parse("\nx:$7$a$b$c").err(),
            Some((2, "iterations is not a positive number"))
        );
    }
}
