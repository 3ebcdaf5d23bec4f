//! The documentation is checked against the code, so it cannot drift:
//!
//! - every key a pipeline file takes — each connector's options, the
//!   connection profile, `[http]`, `[run]`, `[embedded_broker]` — has a row
//!   (`| \`key\` |`) in its page under `docs/reference/`. The keys are read
//!   from what the loader itself says about an unknown key (serde's
//!   "expected one of `a`, `b`"), and the connector types from what it says
//!   about an unknown type, so a new key or connector without its
//!   reference entry fails here;
//! - every relative link in `README.md` and `docs/**/*.md` points at a file
//!   that exists, and an `#anchor` into a Markdown file at one of its
//!   headings.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

const UNKNOWN: &str = "zz_not_a_key";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// What loading `toml` says is wrong with it.
fn refusal(toml: &str) -> String {
    match mqlink_pipeline::parse(toml, false, &|_| None) {
        Ok(_) => panic!("expected an error for:\n{toml}"),
        Err(e) => e.message,
    }
}

/// The names serde lists after "expected" in an unknown-field error;
/// None when `message` is another error (the value was not a table of
/// fixed keys).
fn expected_fields(message: &str) -> Option<Vec<String>> {
    if !message.starts_with(&format!("unknown field `{UNKNOWN}`")) {
        return None;
    }
    if message.ends_with("there are no fields") {
        return Some(Vec::new());
    }
    let list = message.split_once("expected ")?.1;
    let list = list.strip_prefix("one of ").unwrap_or(list);
    // serde: "`a`", "`a` or `b`", "one of `a`, `b`, `c`".
    Some(
        list.split(", ")
            .flat_map(|k| k.split(" or "))
            .map(|k| k.trim_matches('`').to_string())
            .collect(),
    )
}

/// The keys of the table `[header]` in a file that is valid apart from it
/// (`before` and `after` surround the probed table), with `key.inner` for
/// every key whose value is itself a table of fixed keys.
fn keys(before: &str, header: &str, body: &str, after: &str) -> Vec<String> {
    let probe = |extra: &str| refusal(&format!("{before}\n[{header}]\n{body}\n{extra}\n{after}"));
    let message = probe(&format!("{UNKNOWN} = 1"));
    let top = expected_fields(&message)
        .unwrap_or_else(|| panic!("[{header}]: not an unknown-key refusal: {message}"));
    let mut all = Vec::new();
    for key in top {
        let nested = expected_fields(&probe(&format!("{key} = {{ {UNKNOWN} = 1 }}")));
        all.extend(nested.into_iter().flatten().map(|k| format!("{key}.{k}")));
        all.push(key);
    }
    all
}

/// The type names the loader lists when told an unknown one
/// ("unknown sink type \"x\": use mqtt, file or postgres").
fn types(direction: &str, toml: &str) -> Vec<String> {
    let message = refusal(toml);
    let list = message
        .split_once(": use ")
        .unwrap_or_else(|| panic!("{direction}: no list of types in {message:?}"))
        .1;
    list.split(", ")
        .flat_map(|s| s.split(" or "))
        .map(|s| s.trim().to_string())
        .collect()
}

fn page(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel))
        .unwrap_or_else(|e| panic!("{rel}: {e} (every connector and section has a reference page)"))
}

/// Keys of `keys` that `rel` has no table row for.
fn missing_rows(rel: &str, keys: &[String]) -> Vec<String> {
    let text = page(rel);
    keys.iter()
        .filter(|k| !text.contains(&format!("| `{k}` |")))
        .map(|k| format!("{rel}: no row `| \\`{k}\\` |`"))
        .collect()
}

/// A source and sink that load, to probe the other tables beside.
const VALID: &str = "[sources.g]\ntype = \"generator\"\n[sinks.f]\ntype = \"file\"\ninputs = [\"g\"]\npath = \"out.jsonl\"";

#[test]
fn every_config_key_has_a_reference_row() {
    let mut missing = Vec::new();
    let sources = types("sources", &format!("[sources.s]\ntype = \"{UNKNOWN}\""));
    assert!(sources.contains(&"mqtt".to_string()), "{sources:?}");
    for ty in &sources {
        let mut ks = keys("", "sources.s", &format!("type = \"{ty}\""), "");
        ks.push("type".into());
        missing.extend(missing_rows(
            &format!("docs/reference/connectors/{ty}-source.md"),
            &ks,
        ));
    }
    let sinks = types(
        "sinks",
        &format!(
            "[sources.g]\ntype = \"generator\"\n[sinks.s]\ntype = \"{UNKNOWN}\"\ninputs = [\"g\"]"
        ),
    );
    assert!(sinks.contains(&"file".to_string()), "{sinks:?}");
    for ty in &sinks {
        let before = "[sources.g]\ntype = \"generator\"";
        let body = format!("type = \"{ty}\"\ninputs = [\"g\"]");
        let mut ks = keys(before, "sinks.s", &body, "");
        ks.extend(["type".to_string(), "inputs".to_string()]);
        missing.extend(missing_rows(
            &format!("docs/reference/connectors/{ty}-sink.md"),
            &ks,
        ));
    }
    let tables = [
        ("connections.c", "docs/reference/connections.md"),
        ("http", "docs/reference/pipeline-file.md"),
        ("run", "docs/reference/pipeline-file.md"),
        (
            "embedded_broker",
            "docs/reference/connectors/embedded-broker.md",
        ),
    ];
    for (header, rel) in tables {
        let body = if header == "http" {
            "listen = \"127.0.0.1:0\""
        } else {
            ""
        };
        missing.extend(missing_rows(rel, &keys("", header, body, VALID)));
    }
    // The file's top-level tables.
    let top =
        expected_fields(&refusal(&format!("{UNKNOWN} = 1\n{VALID}"))).expect("top-level keys");
    missing.extend(missing_rows("docs/reference/pipeline-file.md", &top));
    assert!(
        missing.is_empty(),
        "keys without a reference entry:\n{}",
        missing.join("\n")
    );
}

/// Every connector the registry holds has its page per direction, with a
/// row for each key of its config struct (as its `Deserialize` declares
/// them), and names each of its aliases; its SQL keys' spellings are in
/// the SQL reference and the metrics it exports in the metrics reference.
#[test]
fn every_registered_connector_has_its_reference_page() {
    use mqlink_pipeline::connectors::{Direction, REGISTRY};
    let sql = page("docs/reference/sql.md");
    let mut missing = Vec::new();
    for c in REGISTRY {
        for (d, word) in [(Direction::Source, "source"), (Direction::Sink, "sink")] {
            let aliases = match d {
                Direction::Source => c.source.as_ref().map(|s| s.aliases),
                Direction::Sink => c.sink.as_ref().map(|s| s.aliases),
            };
            let Some(aliases) = aliases else { continue };
            let rel = format!("docs/reference/connectors/{}-{word}.md", c.name);
            let keys: Vec<String> = c
                .config_fields(d)
                .iter()
                .map(|k| k.to_string())
                .chain(["type".to_string()])
                .collect();
            missing.extend(missing_rows(&rel, &keys));
            let text = page(&rel);
            for a in aliases.iter().filter(|a| !text.contains(*a)) {
                missing.push(format!("{rel}: does not name its alias {a:?}"));
            }
            let metrics = match d {
                Direction::Source => c.source.as_ref().map_or(&[][..], |s| s.metrics),
                Direction::Sink => c.sink.as_ref().map_or(&[][..], |s| s.metrics),
            };
            let reference = page("docs/reference/metrics.md");
            for m in metrics
                .iter()
                .filter(|m| !reference.contains(&format!("`{m}`")))
            {
                missing.push(format!(
                    "docs/reference/metrics.md: does not name {m} ({})",
                    c.name
                ));
            }
            for k in c.keys(d).iter().flat_map(|k| k.aliases) {
                if !sql.contains(k) {
                    missing.push(format!(
                        "docs/reference/sql.md: does not name the SQL key `{k}` of {}",
                        c.name
                    ));
                }
            }
        }
    }
    assert!(missing.is_empty(), "{}", missing.join("\n"));
}

/// Fixed names in the code (`"mqlink_…"`, `"laminar_…"` string literals
/// under `crates/*/src`): metric names and dead-letter properties.
fn fixed_names() -> BTreeSet<String> {
    fn walk(dir: &Path, out: &mut BTreeSet<String>) {
        for entry in std::fs::read_dir(dir)
            .expect("read a source directory")
            .flatten()
        {
            let p = entry.path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&p).expect("read a source file");
                for (i, _) in text.match_indices('"') {
                    let rest = &text[i + 1..];
                    if !(rest.starts_with("mqlink_") || rest.starts_with("laminar_")) {
                        continue;
                    }
                    let name: String = rest
                        .chars()
                        .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                        .collect();
                    if rest[name.len()..].starts_with('"') {
                        out.insert(name);
                    }
                }
            }
        }
    }
    let mut names = BTreeSet::new();
    for krate in std::fs::read_dir(repo().join("crates"))
        .expect("read crates/")
        .flatten()
    {
        let src = krate.path().join("src");
        if src.is_dir() {
            walk(&src, &mut names);
        }
    }
    names
}

#[test]
fn every_metric_name_is_in_the_metrics_reference() {
    let names = fixed_names();
    assert!(
        names.contains("mqlink_source_unacknowledged") && names.contains("mqlink_sink_in_flight"),
        "the scan found {names:?}"
    );
    let page = page("docs/reference/metrics.md");
    let missing: Vec<&String> = names
        .iter()
        .filter(|n| !page.contains(&format!("`{n}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/reference/metrics.md does not name {missing:?}"
    );
}

/// `README.md` and every `.md` under `docs/`.
fn markdown_files() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("read docs/").flatten() {
            let p = entry.path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|e| e == "md") {
                out.push(p);
            }
        }
    }
    let mut files = vec![repo().join("README.md")];
    walk(&repo().join("docs"), &mut files);
    files
}

/// Link targets (`](target)`) outside fenced code blocks.
fn links(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut fenced = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        let mut rest = line;
        while let Some(i) = rest.find("](") {
            rest = &rest[i + 2..];
            let Some(end) = rest.find(')') else { break };
            out.push(rest[..end].to_string());
            rest = &rest[end..];
        }
    }
    out
}

/// GitHub's anchors for a Markdown file's headings: lower case, spaces to
/// `-`, punctuation other than `-` and `_` dropped.
fn anchors(text: &str) -> BTreeSet<String> {
    let mut fenced = false;
    let mut out = BTreeSet::new();
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
        }
        let Some(title) = line.strip_prefix('#').filter(|_| !fenced) else {
            continue;
        };
        let slug: String = title
            .trim_start_matches('#')
            .trim()
            .to_lowercase()
            .chars()
            .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
            .map(|c| if c == ' ' { '-' } else { c })
            .collect();
        out.insert(slug);
    }
    out
}

#[test]
fn every_relative_link_points_at_an_existing_file() {
    let mut broken = Vec::new();
    let files = markdown_files();
    assert!(files.len() > 10, "found only {files:?}");
    for file in &files {
        let text = std::fs::read_to_string(file).expect("read markdown");
        let here = file
            .strip_prefix(repo())
            .unwrap_or(file)
            .display()
            .to_string();
        for link in links(&text) {
            if link.contains("://") || link.starts_with("mailto:") {
                continue;
            }
            let (path, anchor) = match link.split_once('#') {
                Some((p, a)) => (p, Some(a)),
                None => (link.as_str(), None),
            };
            let target = if path.is_empty() {
                file.clone()
            } else {
                file.parent().expect("a file has a directory").join(path)
            };
            if !target.exists() {
                broken.push(format!("{here}: ({link}): no such file"));
                continue;
            }
            if let Some(anchor) = anchor.filter(|_| target.extension().is_some_and(|e| e == "md")) {
                let text = std::fs::read_to_string(&target).expect("read link target");
                if !anchors(&text).contains(anchor) {
                    broken.push(format!("{here}: ({link}): no heading with that anchor"));
                }
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn the_link_checker_sees_what_it_checks() {
    let text = "a [x](docs/a.md#b-c) b\n```\n[no](skip.md)\n```\n## B, c!\n";
    assert_eq!(links(text), vec!["docs/a.md#b-c".to_string()]);
    assert!(anchors(text).contains("b-c"));
    assert_eq!(
        expected_fields("unknown field `zz_not_a_key`, expected one of `a`, `b`"),
        Some(vec!["a".to_string(), "b".to_string()])
    );
    assert_eq!(
        expected_fields("unknown field `zz_not_a_key`, expected `include_topic`"),
        Some(vec!["include_topic".to_string()])
    );
    assert_eq!(
        expected_fields("unknown field `zz_not_a_key`, expected `path` or `fsync`"),
        Some(vec!["path".to_string(), "fsync".to_string()])
    );
    assert_eq!(
        expected_fields("invalid type: map, expected a string"),
        None
    );
}
