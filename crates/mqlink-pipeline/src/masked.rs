//! Each component's configuration as loaded, with its secrets masked: what
//! `/status` (under `topology`) and the console show of a connection, a
//! source or a sink.
//!
//! Every front end (pipeline file, SQL, Cybus) compiles into the same tree
//! before the connectors read it, so masking that tree once covers them
//! all. A value is masked when its key names a secret (`password`,
//! `token`, `bearer_token`, …; see [`is_secret_key`]), when it is a header
//! value (headers carry credentials as often as not), and every other
//! string loses the credentials of the URLs it holds and the `password=`
//! of a libpq connection string.

use serde_json::Value as Json;

/// What a masked value shows.
pub const MASK: &str = "***";

/// Whether a key's value is a secret, by its name as a user writes it.
/// `tests::every_secret_field_is_masked` keeps this true of every field
/// the connectors read as a [`mqlink::Secret`].
pub fn is_secret_key(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    [
        "password",
        "passwd",
        "secret",
        "token",
        "api_key",
        "apikey",
        "credential",
        "authorization",
        "passphrase",
    ]
    .iter()
    .any(|s| k.contains(s))
}

/// `tree` with its secrets masked.
pub fn masked(tree: &Json) -> Json {
    match tree {
        Json::Object(map) => Json::Object(
            map.iter()
                .map(|(k, v)| {
                    let shown = if is_secret_key(k) && !v.is_null() {
                        Json::String(MASK.to_owned())
                    } else if k.eq_ignore_ascii_case("headers") {
                        headers(v)
                    } else {
                        masked(v)
                    };
                    (k.clone(), shown)
                })
                .collect(),
        ),
        Json::Array(items) => Json::Array(items.iter().map(masked).collect()),
        Json::String(s) => Json::String(text(s)),
        other => other.clone(),
    }
}

/// A headers table keeps its names; every value is masked. Arroyo's
/// `'Name: value, …'` text keeps only its names too.
fn headers(v: &Json) -> Json {
    match v {
        Json::Object(map) => Json::Object(
            map.keys()
                .map(|k| (k.clone(), Json::String(MASK.to_owned())))
                .collect(),
        ),
        Json::String(s) => Json::String(
            s.split(',')
                .map(|h| match h.split_once(':') {
                    Some((name, _)) => format!("{}: {MASK}", name.trim()),
                    None => MASK.to_owned(),
                })
                .collect::<Vec<_>>()
                .join(", "),
        ),
        Json::Null => Json::Null,
        _ => Json::String(MASK.to_owned()),
    }
}

/// Text without the credentials of its URLs or a libpq `password=…`.
fn text(s: &str) -> String {
    let s = mqlink::secret::redact(s);
    let Some(at) = s.find("password=") else {
        return s.into_owned();
    };
    let value = at + "password=".len();
    let end = s[value..]
        .find(char::is_whitespace)
        .map_or(s.len(), |e| value + e);
    format!("{}{MASK}{}", &s[..value], &s[end..])
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn secrets_headers_and_credentials_in_text_are_masked() {
        let tree = json!({
            "url": "https://bob:pw1@h/x",
            "password": "pw2",
            "bearer_token": "pw3",
            "headers": {"Authorization": "Bearer pw4", "X-Site": "a"},
            "nested": [{"api_key": "pw5", "conn": "host=db password=pw6 user=u"}],
            "empty_password": null,
            "topic": "plain/{x}",
            "qos": 1,
        });
        let shown = masked(&tree);
        let text = shown.to_string();
        for secret in ["pw1", "pw2", "pw3", "pw4", "pw5", "pw6"] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
        assert_eq!(shown["url"], "https://bob:***@h/x");
        assert_eq!(shown["headers"]["X-Site"], MASK);
        assert_eq!(shown["nested"][0]["conn"], "host=db password=*** user=u");
        assert_eq!(shown["empty_password"], Json::Null);
        assert_eq!(shown["topic"], "plain/{x}");
        assert_eq!(shown["qos"], 1);
        assert_eq!(
            masked(&json!({"headers": "Authorization: Bearer x, Accept: y"}))["headers"],
            "Authorization: ***, Accept: ***"
        );
    }

    /// Every field read as a `Secret` in this crate has a name
    /// `is_secret_key` masks (a PostgreSQL `url` is masked as text: its
    /// password, in either form, is).
    #[test]
    fn every_secret_field_is_masked() {
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = vec![src];
        let mut fields = Vec::new();
        while let Some(p) = files.pop() {
            if p.is_dir() {
                files.extend(std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
                continue;
            }
            let code = std::fs::read_to_string(&p).unwrap_or_default();
            for line in code.lines() {
                let line = line.trim().trim_start_matches("pub ");
                if let Some((name, ty)) = line.split_once(": ") {
                    let ty = ty.trim_end_matches(',');
                    if (ty == "Secret" || ty == "Option<Secret>") && !name.contains(' ') {
                        fields.push((name.to_owned(), p.display().to_string()));
                    }
                }
            }
        }
        assert!(
            fields.iter().any(|(n, _)| n == "bearer_token"),
            "{fields:?}"
        );
        for (name, file) in fields {
            assert!(
                is_secret_key(&name) || name == "url",
                "{file}: the Secret field {name:?} would be shown unmasked: add its name to is_secret_key"
            );
        }
    }
}
