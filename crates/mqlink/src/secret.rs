//! A string that is never printed.

use std::fmt;

/// A password or token. `Debug` and `Display` print `***`; the value is
/// reachable only through [`Secret::expose`], which callers use at the one
/// place the secret goes on the wire.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    /// The secret itself, to send it where it belongs (never to print it).
    pub fn expose(&self) -> &str {
        &self.0
    }
    /// Whether the secret is the empty string.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Self {
        Secret::new(s)
    }
}
impl From<String> for Secret {
    fn from(s: String) -> Self {
        Secret(s)
    }
}

/// The one redaction rule for text that may hold credentials: the
/// password of every `scheme://user:password@host` in `text` becomes `***`
/// (a bare `scheme://token@host` loses the token). Applied where messages
/// leave mqlink (errors, the Airbyte protocol), so a URL a user pasted with
/// credentials is never echoed.
pub fn redact(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.contains("://") || !text.contains('@') {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        // The authority ends at '/', '?', '#', white space or a quote.
        let end = tail
            .find(|c: char| matches!(c, '/' | '?' | '#' | '"' | '\'' | '`') || c.is_whitespace())
            .unwrap_or(tail.len());
        let authority = &tail[..end];
        match authority.rfind('@') {
            Some(at) => {
                match authority[..at].split_once(':') {
                    Some((user, _)) => {
                        out.push_str(user);
                        out.push_str(":***");
                    }
                    None => out.push_str("***"),
                }
                out.push_str(&authority[at..]);
            }
            None => out.push_str(authority),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    std::borrow::Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_their_passwords() {
        for (text, want) in [
            ("mqtt://alice:topsecret@h:1883", "mqtt://alice:***@h:1883"),
            (
                "-L: \"mqtts://u:p@w@h/x\": bad",
                "-L: \"mqtts://u:***@h/x\": bad",
            ),
            (
                "postgres://token@db/x and ws://a:b@c",
                "postgres://***@db/x and ws://a:***@c",
            ),
            ("no url user:pw@host", "no url user:pw@host"),
            ("mqtt://h:1883 ok", "mqtt://h:1883 ok"),
            ("ünïcode://ä:ö@ü", "ünïcode://ä:***@ü"),
        ] {
            assert_eq!(redact(text), want, "{text}");
        }
    }

    #[test]
    fn never_printed() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s} {s:?} {:?}", Some(&s)), "*** *** Some(***)");
        assert_eq!(s.expose(), "hunter2");
    }
}
