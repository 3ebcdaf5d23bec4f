//! Client-supplied strings (client ids, user names, topics) as they go
//! into logs: control characters escaped, so a newline in a client id
//! cannot forge a log line, and cut short, so a 65 KB id is one short field.

use std::fmt;

/// Characters of a client string a log line shows; the rest is counted.
const SHOWN_CHARS: usize = 100;

/// Displays a client-supplied string escaped and truncated.
pub(crate) struct Shown<'a>(pub &'a str);

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut chars = self.0.char_indices();
        for (_, c) in chars.by_ref().take(SHOWN_CHARS) {
            if c.is_control() || c == '\\' {
                write!(f, "{}", c.escape_default())?;
            } else {
                f.write_fmt(format_args!("{c}"))?;
            }
        }
        if let Some((at, _)) = chars.next() {
            write!(f, "…(+{} bytes)", self.0.len() - at)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_control_characters_and_truncates() {
        let s = |v: &str| Shown(v).to_string();
        assert_eq!(s("sensor-1"), "sensor-1");
        assert_eq!(
            s("x\n2026-12-07T00:00:00Z ERROR forged"),
            "x\\n2026-12-07T00:00:00Z ERROR forged"
        );
        assert_eq!(s("a\tb\r\u{1b}[31m\\"), "a\\tb\\r\\u{1b}[31m\\\\");
        let long = "é".repeat(150);
        let shown = s(&long);
        assert_eq!(shown, format!("{}…(+100 bytes)", "é".repeat(100)));
        assert!(!s(&"\n".repeat(65_000)).contains('\n'));
    }
}
