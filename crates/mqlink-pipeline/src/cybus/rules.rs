//! Connectware's rule engine as a pipeline [`Transform`]: the `rules` of a
//! mapping entry or an endpoint (`transform`, `filter`, `collect`,
//! `burst`, with JSONata through the `jsonata-core` crate), the wildcard
//! names of the subscriptions (`+name`, `#name`: `$context.vars.name`,
//! `{name}` in labels, `$name` or `{name}` in the publish topic) and the
//! publish topic each record goes to.
//!
//! Expressions get the message as `$` and `$context` = `{ "topic", "vars",
//! "label" }`. Each evaluation is bounded (1 s, stack depth 1000): an
//! expression that loops is a record fault, never a hung pipeline.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use jsonata_core::ast::AstNode;
use jsonata_core::evaluator::{Context, Evaluator, EvaluatorOptions};
use jsonata_core::value::JValue;
use mqlink::format::Value;
use mqlink::ByteStr;
use serde_json::{Map, Value as Json};
use tokio::time::Instant;

use crate::batch::Item;
use crate::spec::{err, ConfigError};
use crate::transform::{Fault, MakeTransform, Output, Transform};

/// The rule types mqlink runs; any other is refused when the file is read.
pub const SUPPORTED: &[&str] = &["transform", "filter", "collect", "burst"];

/// One subscription of a mapping entry, to recover wildcard values.
#[derive(Debug, Clone)]
pub struct Subscription {
    /// The MQTT filter (names removed).
    pub filter: String,
    /// (topic level, name, `#`) of each named wildcard.
    pub names: Vec<(usize, String, bool)>,
    /// The label, `{name}`s replaced per message; the topic as written
    /// when the file gives none (Connectware's collect key).
    pub label: String,
}

impl Subscription {
    /// `factory/+machine/#rest` → filter `factory/+/#`, names machine, rest.
    pub fn parse(topic: &str, label: Option<String>) -> Subscription {
        let mut names = Vec::new();
        let levels: Vec<String> = topic
            .split('/')
            .enumerate()
            .map(|(i, level)| match level.chars().next() {
                Some(w @ ('+' | '#')) => {
                    if level.len() > 1 {
                        names.push((i, level[1..].to_string(), w == '#'));
                    }
                    w.to_string()
                }
                _ => level.to_string(),
            })
            .collect();
        Subscription {
            filter: levels.join("/"),
            names,
            label: label.unwrap_or_else(|| topic.to_string()),
        }
    }

    fn vars(&self, topic: &str) -> Map<String, Json> {
        let levels: Vec<&str> = topic.split('/').collect();
        let mut vars = Map::new();
        for (i, name, multi) in &self.names {
            let v = if *multi {
                levels.get(*i..).map(|l| l.join("/")).unwrap_or_default()
            } else {
                levels.get(*i).map(|l| l.to_string()).unwrap_or_default()
            };
            vars.insert(name.clone(), Json::String(v));
        }
        vars
    }
}

/// A parsed rule.
#[derive(Debug, Clone)]
pub enum Rule {
    Transform(Arc<AstNode>),
    Filter(Arc<AstNode>),
    Collect,
    Burst {
        interval: Option<Duration>,
        max_size: Option<usize>,
    },
}

/// A topic with `$name` / `{name}` parts from wildcard values.
#[derive(Debug, Clone)]
pub struct TopicPattern(Vec<Part>);

#[derive(Debug, Clone)]
enum Part {
    Text(String),
    Var(String),
}

impl TopicPattern {
    pub fn parse(s: &str) -> TopicPattern {
        let mut parts = Vec::new();
        let mut text = String::new();
        let mut chars = s.char_indices().peekable();
        let ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
        while let Some((i, c)) = chars.next() {
            let name_start = match c {
                '$' if s[i + 1..].starts_with(|c: char| c.is_ascii_alphabetic() || c == '_') => {
                    i + 1
                }
                '{' if s[i + 1..]
                    .find('}')
                    .is_some_and(|e| e > 0 && s[i + 1..i + 1 + e].chars().all(ident)) =>
                {
                    i + 1
                }
                _ => {
                    text.push(c);
                    continue;
                }
            };
            let end = s[name_start..]
                .find(|c: char| !ident(c))
                .map_or(s.len(), |e| name_start + e);
            if !text.is_empty() {
                parts.push(Part::Text(std::mem::take(&mut text)));
            }
            parts.push(Part::Var(s[name_start..end].to_string()));
            // Skip the name (and a closing brace).
            while chars.peek().is_some_and(|(j, _)| *j < end) {
                chars.next();
            }
            if c == '{' {
                chars.next();
            }
        }
        if !text.is_empty() {
            parts.push(Part::Text(text));
        }
        TopicPattern(parts)
    }

    pub fn vars(&self) -> impl Iterator<Item = &str> {
        self.0.iter().filter_map(|p| match p {
            Part::Var(v) => Some(v.as_str()),
            Part::Text(_) => None,
        })
    }

    /// The topic for these wildcard values (a missing one is an error).
    pub fn render(&self, vars: &Map<String, Json>) -> Result<String, String> {
        let mut out = String::new();
        for p in &self.0 {
            match p {
                Part::Text(t) => out.push_str(t),
                Part::Var(v) => match vars.get(v) {
                    Some(Json::String(s)) => out.push_str(s),
                    _ => return Err(format!("no wildcard named {v:?} matched this message")),
                },
            }
        }
        Ok(out)
    }
}

/// Parses `rules` (already resolved to JSON) at `path`.
pub fn parse_rules(v: &Json, path: &str) -> Result<Vec<Rule>, ConfigError> {
    let Json::Array(items) = v else {
        return Err(err(path, "expected a list of rules"));
    };
    let mut rules = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let p = format!("{path}[{i}]");
        let Some((name, body)) = item
            .as_object()
            .filter(|o| o.len() == 1)
            .and_then(|o| o.iter().next())
        else {
            return Err(err(
                p,
                "a rule is an object with one key, its type (transform, filter, collect, burst)",
            ));
        };
        let p = format!("{p}.{name}");
        let props = match body {
            Json::Object(o) => o.clone(),
            Json::Null => Map::new(),
            _ => return Err(err(p, "expected the rule's properties")),
        };
        let allowed: &[&str] = match name.as_str() {
            "transform" | "filter" => &["expression"],
            "collect" => &[],
            "burst" => &["interval", "maxSize"],
            other => {
                return Err(err(
                    p,
                    format!(
                        "the rule {other:?} is not supported by mqlink (supported: {})",
                        SUPPORTED.join(", ")
                    ),
                ))
            }
        };
        if let Some(k) = props.keys().find(|k| !allowed.contains(&k.as_str())) {
            return Err(err(
                format!("{p}.{k}"),
                format!(
                    "unknown property of {name} (known: {})",
                    if allowed.is_empty() {
                        "none".to_string()
                    } else {
                        allowed.join(", ")
                    }
                ),
            ));
        }
        let rule = match name.as_str() {
            "transform" | "filter" => {
                let Some(Json::String(expr)) = props.get("expression") else {
                    return Err(err(
                        format!("{p}.expression"),
                        "missing: a JSONata expression",
                    ));
                };
                let ast = jsonata_core::parser::parse(expr)
                    .map_err(|e| err(format!("{p}.expression"), format!("invalid JSONata: {e}")))?;
                if let Some(f) = unknown_functions(expr).first() {
                    return Err(err(
                        format!("{p}.expression"),
                        format!("${f} is not a JSONata function (a misspelling? see the function library at docs.jsonata.org); every message would fail at run time"),
                    ));
                }
                if name == "transform" {
                    Rule::Transform(Arc::new(ast))
                } else {
                    Rule::Filter(Arc::new(ast))
                }
            }
            "collect" => Rule::Collect,
            _ => {
                let int = |k: &str, max: u64| -> Result<Option<u64>, ConfigError> {
                    match props.get(k) {
                        None | Some(Json::Null) => Ok(None),
                        Some(v) => match v.as_u64() {
                            Some(n) if n >= 1 && n <= max => Ok(Some(n)),
                            _ => Err(err(
                                format!("{p}.{k}"),
                                format!("{v} is not a whole number between 1 and {max}"),
                            )),
                        },
                    }
                };
                let interval = int("interval", 86_400_000)?.map(Duration::from_millis);
                let max_size = int("maxSize", 1_000_000)?.map(|n| n as usize);
                if rules.iter().any(|r| matches!(r, Rule::Burst { .. })) {
                    return Err(err(p, "one burst per rule list at most"));
                }
                Rule::Burst { interval, max_size }
            }
        };
        rules.push(rule);
    }
    Ok(rules)
}

/// The stage of one mapping entry or endpoint.
#[derive(Debug, Clone)]
pub struct Stage {
    pub subscriptions: Vec<Subscription>,
    pub rules: Vec<Rule>,
    /// Where records go: `None` keeps the arrival topic (the sink's topic is fixed).
    pub publish: Option<TopicPattern>,
}

impl MakeTransform for Stage {
    fn kind(&self) -> &'static str {
        "Cybus rules"
    }
    fn make(&self) -> Box<dyn Transform> {
        Box::new(Running {
            stage: Arc::new(self.clone()),
            cache: Map::new(),
            burst: Vec::new(),
            burst_started: None,
            seen: 0,
            first_held: None,
        })
    }
}

/// A record's `$context`.
#[derive(Clone)]
struct Ctx {
    topic: String,
    vars: Map<String, Json>,
    label: String,
}

impl Ctx {
    fn json(&self) -> Json {
        let mut m = Map::new();
        m.insert("topic".into(), Json::String(self.topic.clone()));
        m.insert("vars".into(), Json::Object(self.vars.clone()));
        m.insert("label".into(), Json::String(self.label.clone()));
        Json::Object(m)
    }
}

struct Running {
    stage: Arc<Stage>,
    /// collect: the last value per label, in first-arrival order.
    cache: Map<String, Json>,
    /// burst: the values waiting, with the context of the last one.
    burst: Vec<Json>,
    burst_started: Option<(Instant, Ctx)>,
    /// Input records so far, and the number of the first one a burst holds.
    seen: u64,
    first_held: Option<u64>,
}

/// What the rest of a rule chain did with a value.
enum Step {
    Out(Json),
    Dropped,
    Held,
}

impl Running {
    fn context(&self, topic: &str) -> Ctx {
        let sub = self
            .stage
            .subscriptions
            .iter()
            .find(|s| mqlink::topic::matches(&s.filter, topic));
        let vars = sub.map(|s| s.vars(topic)).unwrap_or_default();
        let label = sub
            .map(|s| {
                let mut l = s.label.clone();
                for (k, v) in &vars {
                    if let Json::String(v) = v {
                        l = l.replace(&format!("{{{k}}}"), v);
                    }
                }
                l
            })
            .unwrap_or_else(|| topic.to_string());
        Ctx {
            topic: topic.to_string(),
            vars,
            label,
        }
    }

    /// Runs the rules from `from` on `value`.
    fn chain(
        &mut self,
        from: usize,
        mut value: Json,
        ctx: &Ctx,
        now: Instant,
    ) -> Result<Step, String> {
        let stage = self.stage.clone();
        for (i, rule) in stage.rules.iter().enumerate().skip(from) {
            match rule {
                Rule::Transform(ast) => match eval(ast, &value, ctx)? {
                    Some(v) => value = v,
                    None => {
                        return Err(format!(
                            "rules[{i}].transform: the expression gave no value for this message"
                        ))
                    }
                },
                Rule::Filter(ast) => {
                    if !eval(ast, &value, ctx)?.is_some_and(|v| truthy(&v)) {
                        return Ok(Step::Dropped);
                    }
                }
                Rule::Collect => {
                    self.cache.insert(ctx.label.clone(), value);
                    value = Json::Object(self.cache.clone());
                }
                Rule::Burst { interval, max_size } => {
                    if interval.is_none() && max_size.is_none() {
                        // Connectware: a burst without limits passes messages on.
                        continue;
                    }
                    if self.burst.is_empty() {
                        // This record's number (`seen` counts it already).
                        self.first_held = Some(self.seen - 1);
                    }
                    self.burst.push(value);
                    // The interval runs from the first message of the burst.
                    let started = self.burst_started.as_ref().map_or(now, |(t, _)| *t);
                    self.burst_started = Some((started, ctx.clone()));
                    if max_size.is_some_and(|m| self.burst.len() >= m) {
                        value = self.take_burst();
                    } else {
                        return Ok(Step::Held);
                    }
                }
            }
        }
        Ok(Step::Out(value))
    }

    fn take_burst(&mut self) -> Json {
        self.burst_started = None;
        self.first_held = None;
        Json::Array(std::mem::take(&mut self.burst))
    }

    fn burst_index(&self) -> Option<(usize, Option<Duration>)> {
        self.stage
            .rules
            .iter()
            .enumerate()
            .find_map(|(i, r)| match r {
                Rule::Burst { interval, .. } => Some((i, *interval)),
                _ => None,
            })
    }

    /// A record for the sinks: the value as the new payload, routed to
    /// the publish topic.
    fn emit(&self, value: Json, ctx: &Ctx, out: &mut Output) {
        let payload = Bytes::from(serde_json::to_vec(&value).unwrap_or_default());
        let topic = match &self.stage.publish {
            None => ctx.topic.clone(),
            Some(p) => match p.render(&ctx.vars) {
                Ok(t) => t,
                Err(e) => {
                    out.faults.push(Fault {
                        payload,
                        ..Fault::new(Some(ctx.topic.clone()), format!("publish topic: {e}"))
                    });
                    return;
                }
            },
        };
        out.items.push(Item {
            topic: Some(ByteStr::from(topic)),
            origin: None,
            payload,
            value: Value::Json(value),
        });
    }

    fn flush_burst(&mut self, out: &mut Output, now: Instant) {
        let Some((i, _)) = self.burst_index() else {
            return;
        };
        let Some((_, ctx)) = self.burst_started.clone() else {
            return;
        };
        let value = self.take_burst();
        // The collected burst, for the dead letter if a later rule fails
        // (none can without one).
        let payload = match i + 1 < self.stage.rules.len() {
            true => Bytes::from(serde_json::to_vec(&value).unwrap_or_default()),
            false => Bytes::new(),
        };
        match self.chain(i + 1, value, &ctx, now) {
            Ok(Step::Out(v)) => self.emit(v, &ctx, out),
            Ok(_) => {}
            Err(reason) => out.faults.push(Fault {
                payload,
                ..Fault::new(Some(ctx.topic.clone()), reason)
            }),
        }
    }

    fn due(&self, now: Instant) -> bool {
        self.deadline().is_some_and(|d| d <= now)
    }
}

impl Transform for Running {
    fn apply(&mut self, items: Vec<Item>, now: Instant) -> Output {
        let mut out = Output::default();
        if self.due(now) {
            self.flush_burst(&mut out, now);
        }
        for item in items {
            self.seen += 1;
            let topic = item.topic.as_deref().unwrap_or("").to_string();
            let ctx = self.context(&topic);
            if self.stage.rules.is_empty() {
                // Without rules a message goes on unmodified.
                match &self.stage.publish {
                    None => out.items.push(item),
                    Some(p) => match p.render(&ctx.vars) {
                        Ok(t) => out.items.push(Item {
                            topic: Some(ByteStr::from(t)),
                            ..item
                        }),
                        Err(e) => out
                            .faults
                            .push(Fault::of(&item, format!("publish topic: {e}"))),
                    },
                }
                continue;
            }
            let value: Json = match serde_json::from_slice(&item.payload) {
                Ok(v) => v,
                Err(e) => {
                    out.faults.push(Fault::of(
                        &item,
                        format!("the payload is not JSON, which rules need: {e}"),
                    ));
                    continue;
                }
            };
            match self.chain(0, value, &ctx, now) {
                Ok(Step::Out(v)) => self.emit(v, &ctx, &mut out),
                Ok(Step::Dropped | Step::Held) => {}
                Err(reason) => out.faults.push(Fault::of(&item, reason)),
            }
        }
        out
    }

    fn held(&self) -> usize {
        self.first_held.map_or(0, |f| (self.seen - f) as usize)
    }

    fn deadline(&self) -> Option<Instant> {
        let (_, interval) = self.burst_index()?;
        let (started, _) = self.burst_started.as_ref()?;
        Some(*started + interval?)
    }

    fn flush(&mut self, now: Instant) -> Output {
        let mut out = Output::default();
        if self.due(now) {
            self.flush_burst(&mut out, now);
        }
        out
    }
}

/// Evaluates with the record as `$` and `$context`; `None` when the
/// result is undefined.
fn eval(ast: &AstNode, value: &Json, ctx: &Ctx) -> Result<Option<Json>, String> {
    let mut c = Context::new();
    c.bind("context".into(), JValue::from(ctx.json()));
    let mut ev = Evaluator::with_options(
        c,
        EvaluatorOptions {
            timeout_ms: Some(1000),
            max_stack_depth: Some(1000),
            max_sequence_length: Some(1_000_000),
            ..Default::default()
        },
    );
    let data = JValue::from(value.clone());
    let r = ev
        .evaluate(ast, &data)
        .map_err(|e| format!("JSONata: {e}"))?;
    if r.is_undefined() {
        return Ok(None);
    }
    serde_json::to_value(&r)
        .map(Some)
        .map_err(|e| format!("JSONata result is not JSON: {e}"))
}

/// Functions an expression calls that neither JSONata nor the expression
/// defines: JSONata looks names up only when it calls them, so a misspelt
/// `$uppercas(x)` parses and then fails every message (T1006). A call is
/// `$name(`; names bound by `:=`, function parameters and `$context` are
/// the expression's own; string literals and comments are skipped.
fn unknown_functions(expr: &str) -> Vec<String> {
    let (mut called, mut bound) = (Vec::new(), vec!["context".to_string()]);
    let b = expr.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            q @ (b'"' | b'\'' | b'`') => {
                i += 1;
                while i < b.len() && b[i] != q {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                i = expr[i + 2..].find("*/").map_or(b.len(), |e| i + 2 + e + 2);
            }
            b'$' => {
                let start = i + 1;
                let end = start
                    + expr[start..]
                        .find(|c: char| !(c.is_alphanumeric() || c == '_'))
                        .unwrap_or(expr.len() - start);
                let name = &expr[start..end];
                let rest = expr[end..].trim_start();
                if !name.is_empty() {
                    if rest.starts_with(":=") || in_parameter_list(&expr[..i]) {
                        bound.push(name.to_string());
                    } else if rest.starts_with('(') {
                        called.push(name.to_string());
                    }
                }
                i = end.max(i + 1);
            }
            _ => i += 1,
        }
    }
    called.retain(|n| !bound.contains(n) && !is_builtin(n));
    called.dedup();
    called
}

/// Whether the text before a `$name` leaves it inside `function(` … `)`.
fn in_parameter_list(before: &str) -> bool {
    let open = before.rfind('(');
    open.is_some_and(|o| {
        !before[o..].contains(')') && {
            let head = before[..o].trim_end();
            head.ends_with("function") || head.ends_with('λ')
        }
    })
}

/// Whether `$name` is a function of JSONata's library (asked of the
/// evaluator itself, so the list is the crate's).
fn is_builtin(name: &str) -> bool {
    let Ok(ast) = jsonata_core::parser::parse(&format!("${name}")) else {
        return false;
    };
    let mut ev = Evaluator::with_options(Context::new(), EvaluatorOptions::default());
    ev.evaluate(&ast, &JValue::Null)
        .is_ok_and(|v| !v.is_undefined())
}

/// JSONata's boolean value of a result (`$boolean`).
fn truthy(v: &Json) -> bool {
    match v {
        Json::Null => false,
        Json::Bool(b) => *b,
        Json::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Json::String(s) => !s.is_empty(),
        Json::Array(a) if a.len() == 1 => truthy(&a[0]),
        Json::Array(a) => a.iter().any(truthy),
        Json::Object(o) => !o.is_empty(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stage(topic: &str, rules: &str, publish: &str) -> Box<dyn Transform> {
        let rules: Json = serde_json::from_str(rules).unwrap();
        Stage {
            subscriptions: vec![Subscription::parse(topic, None)],
            rules: parse_rules(&rules, "rules").unwrap(),
            publish: Some(TopicPattern::parse(publish)),
        }
        .make()
    }

    fn item(topic: &str, payload: &str) -> Item {
        Item {
            topic: Some(ByteStr::from(topic)),
            origin: None,
            payload: Bytes::copy_from_slice(payload.as_bytes()),
            value: Value::Null,
        }
    }

    fn out(o: &Output) -> Vec<String> {
        o.items
            .iter()
            .map(|i| {
                format!(
                    "{} {}",
                    i.topic.as_deref().unwrap(),
                    String::from_utf8_lossy(&i.payload)
                )
            })
            .collect()
    }

    #[test]
    fn transform_filter_and_wildcards() {
        let mut s = stage(
            "factory/+machine/temperature",
            r#"[{"filter": {"expression": "value > 10"}},
                {"transform": {"expression": "{\"value\": $.value * 2, \"machine\": $context.vars.machine, \"topic\": $context.topic}"}}]"#,
            "out/$machine/t",
        );
        let o = s.apply(
            vec![
                item("factory/m1/temperature", r#"{"value": 21}"#),
                item("factory/m2/temperature", r#"{"value": 3}"#),
                item("factory/m3/temperature", "not json"),
            ],
            Instant::now(),
        );
        assert_eq!(
            out(&o),
            [r#"out/m1/t {"value":42,"machine":"m1","topic":"factory/m1/temperature"}"#]
        );
        assert_eq!(o.faults.len(), 1);
        assert!(o.faults[0].reason.contains("not JSON"), "{:?}", o.faults);
        assert_eq!(s.held(), 0);
    }

    #[test]
    fn misspelt_functions_are_found_before_running() {
        assert_eq!(unknown_functions("$uppercas(name)"), ["uppercas"]);
        assert!(unknown_functions("$uppercase(name) & $string(1)").is_empty());
        // The expression's own functions and parameters, and text in strings.
        let own = "($f := function($x, $g) { $g($x) }; $f(1, $abs))";
        assert!(
            unknown_functions(own).is_empty(),
            "{:?}",
            unknown_functions(own)
        );
        assert!(unknown_functions(r#""$nope(" & '$nope('"#).is_empty());
        assert!(unknown_functions("/* $nope( */ $number('1')").is_empty());
        assert!(parse_rules(
            &serde_json::json!([{"transform": {"expression": "{\"n\": $uppercas(name)}"}}]),
            "rules"
        )
        .unwrap_err()
        .to_string()
        .contains("$uppercas is not a JSONata function"));
    }

    #[test]
    fn collect_keeps_the_last_value_per_label() {
        let mut s = stage("b/+room/t", r#"[{"collect": {}}]"#, "all");
        let mut st = Stage {
            subscriptions: vec![Subscription::parse("b/+room/t", Some("r_{room}".into()))],
            rules: vec![Rule::Collect],
            publish: Some(TopicPattern::parse("all")),
        }
        .make();
        let o = st.apply(
            vec![item("b/a/t", "1"), item("b/b/t", "2"), item("b/a/t", "3")],
            Instant::now(),
        );
        assert_eq!(
            out(&o),
            [
                r#"all {"r_a":1}"#,
                r#"all {"r_a":1,"r_b":2}"#,
                r#"all {"r_a":3,"r_b":2}"#
            ]
        );
        // Without a label the key is the topic as written.
        let o = s.apply(vec![item("b/x/t", "1")], Instant::now());
        assert_eq!(out(&o), [r#"all {"b/+room/t":1}"#]);
    }

    #[test]
    fn burst_by_size_and_time_holds_what_it_waits_for() {
        let mut s = stage(
            "a",
            r#"[{"burst": {"maxSize": 3, "interval": 1000}}, {"transform": {"expression": "{\"n\": $count($)}"}}]"#,
            "b",
        );
        let t0 = Instant::now();
        let o = s.apply(vec![item("a", "1"), item("a", "2")], t0);
        assert!(o.items.is_empty());
        assert_eq!(s.held(), 2);
        assert!(s.deadline().is_some());
        let o = s.apply(vec![item("a", "3"), item("a", "4")], t0);
        assert_eq!(out(&o), [r#"b {"n":3}"#]);
        assert_eq!(s.held(), 1, "the fourth waits");
        let o = s.flush(t0 + Duration::from_millis(10));
        assert!(o.items.is_empty(), "not due yet");
        let o = s.flush(t0 + Duration::from_secs(2));
        assert_eq!(out(&o), [r#"b {"n":1}"#]);
        assert_eq!(s.held(), 0);
        assert!(s.deadline().is_none());
    }

    #[test]
    fn a_filtered_record_after_a_held_one_keeps_the_hold() {
        let mut s = stage(
            "a",
            r#"[{"filter": {"expression": "$ > 0"}}, {"burst": {"maxSize": 2}}]"#,
            "b",
        );
        let o = s.apply(vec![item("a", "1"), item("a", "0")], Instant::now());
        assert!(o.items.is_empty());
        // Both are held: the acknowledgement of the first must wait.
        assert_eq!(s.held(), 2);
    }

    #[test]
    fn runaway_expressions_are_record_faults() {
        let mut s = stage(
            "a",
            r#"[{"transform": {"expression": "($f := function($x){ $f($x) + 1 }; $f(1))"}}]"#,
            "b",
        );
        let o = s.apply(vec![item("a", "1")], Instant::now());
        assert!(o.items.is_empty());
        assert_eq!(o.faults.len(), 1, "{:?}", o.faults);
    }

    #[test]
    fn unsupported_rules_are_refused_by_name() {
        let e = parse_rules(&serde_json::json!([{"cov": {"key": "x"}}]), "m.rules").unwrap_err();
        assert_eq!(e.path, "m.rules[0].cov");
        assert!(e.message.contains("\"cov\" is not supported"), "{e}");
        let e = parse_rules(
            &serde_json::json!([{"filter": {"expression": "a >"}}]),
            "m.rules",
        )
        .unwrap_err();
        assert_eq!(e.path, "m.rules[0].filter.expression");
        let e =
            parse_rules(&serde_json::json!([{"burst": {"maxSize": 0}}]), "m.rules").unwrap_err();
        assert_eq!(e.path, "m.rules[0].burst.maxSize");
    }

    #[test]
    fn topic_patterns() {
        let p = TopicPattern::parse("a/$x/{y}/c$");
        let mut vars = Map::new();
        vars.insert("x".into(), Json::String("1".into()));
        vars.insert("y".into(), Json::String("2".into()));
        assert_eq!(p.render(&vars).unwrap(), "a/1/2/c$");
        assert_eq!(p.vars().collect::<Vec<_>>(), ["x", "y"]);
        let s = Subscription::parse("f/+m/#rest", None);
        assert_eq!(s.filter, "f/+/#");
        let v = s.vars("f/a/b/c");
        assert_eq!(v["m"], "a");
        assert_eq!(v["rest"], "b/c");
    }
}
