//! Topic names and filters: validation before anything is sent, and matching.
//!
//! Rules from MQTT 3.1.1 §4.7 and MQTT 5 §4.7–4.8: names and filters are
//! 1..=65,535 bytes of UTF-8 without NUL; empty levels (`a//b`, `/a`) are
//! valid; `+` fills a whole level; `#` fills a whole level and comes last;
//! names carry no wildcards; `$share/<group>/<filter>` is a shared
//! subscription; filters starting with a wildcard do not match `$` topics.

use std::fmt;

/// Why a topic name or filter was refused. Every variant names the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    /// An empty topic.
    #[error("the topic is empty")]
    Empty,
    /// Over 65,535 bytes.
    #[error("topic {topic:?} is {len} bytes long; MQTT allows at most 65535")]
    TooLong {
        /// The topic (its start).
        topic: String,
        /// Its length in bytes.
        len: usize,
    },
    /// A NUL character in it.
    #[error("topic {0:?} contains a NUL character")]
    Nul(String),
    /// A wildcard in a topic name.
    #[error(
        "topic name {0:?} contains a wildcard ('+' or '#'); wildcards belong in subscriptions only"
    )]
    WildcardInName(String),
    /// A `$share/…` filter used as a topic name.
    #[error("topic name {0:?} is a shared subscription filter; publish to a plain topic")]
    SharedName(String),
    /// '#' not alone at the end.
    #[error("filter {0:?}: '#' must be the last level and stand alone (as in \"a/#\")")]
    BadMultiLevel(String),
    /// '+' not alone in its level.
    #[error("filter {0:?}: '+' must stand alone in its level (as in \"a/+/b\")")]
    BadSingleLevel(String),
    /// More levels than brokers take (see [`MAX_LEVELS`]).
    #[error("topic {topic:?} has {levels} levels; at most {max} (Mosquitto refuses deeper topics)", max = MAX_LEVELS)]
    TooDeep {
        /// The topic (its start).
        topic: String,
        /// Its number of levels.
        levels: usize,
    },
    /// A malformed `$share/<group>/<filter>`.
    #[error("shared subscription {0:?} must look like $share/<group>/<filter> with a non-empty group without '+', '#' or '/'")]
    BadShared(String),
}

const MAX_LEN: usize = 65_535;

/// Levels of a topic that Mosquitto accepts (it refuses more than 200 `/`,
/// TOPIC_HIERARCHY_LIMIT, and disconnects the publisher). MQTT itself has
/// no limit; deeper topics are only checked where mqlink makes the topic
/// (sink templates), not where a user typed it.
pub const MAX_LEVELS: usize = 201;

/// Refuses a topic of more than [`MAX_LEVELS`] levels.
pub fn check_levels(topic: &str) -> Result<(), TopicError> {
    let levels = topic.bytes().filter(|&b| b == b'/').count() + 1;
    if levels > MAX_LEVELS {
        return Err(TopicError::TooDeep {
            topic: topic.chars().take(40).collect::<String>() + "…",
            levels,
        });
    }
    Ok(())
}

fn check_common(t: &str) -> Result<(), TopicError> {
    if t.is_empty() {
        return Err(TopicError::Empty);
    }
    if t.len() > MAX_LEN {
        return Err(TopicError::TooLong {
            topic: t.chars().take(40).collect::<String>() + "…",
            len: t.len(),
        });
    }
    if t.contains('\0') {
        return Err(TopicError::Nul(t.to_owned()));
    }
    Ok(())
}

/// Checks a topic name a message is published to.
pub fn validate_topic_name(topic: &str) -> Result<(), TopicError> {
    check_common(topic)?;
    if topic.contains(['+', '#']) {
        return Err(TopicError::WildcardInName(topic.to_owned()));
    }
    if topic.starts_with("$share/") {
        return Err(TopicError::SharedName(topic.to_owned()));
    }
    Ok(())
}

/// Checks a subscription filter, including `$share/<group>/<filter>`.
pub fn validate_filter(filter: &str) -> Result<(), TopicError> {
    check_common(filter)?;
    let inner = match shared_parts(filter) {
        Some(Ok((_, inner))) => inner,
        Some(Err(())) => return Err(TopicError::BadShared(filter.to_owned())),
        None => filter,
    };
    let mut levels = inner.split('/').peekable();
    while let Some(level) = levels.next() {
        if level.contains('#') && (level != "#" || levels.peek().is_some()) {
            return Err(TopicError::BadMultiLevel(filter.to_owned()));
        }
        if level.contains('+') && level != "+" {
            return Err(TopicError::BadSingleLevel(filter.to_owned()));
        }
    }
    Ok(())
}

/// `Some(Ok((group, filter)))` for a well-formed `$share/…`, `Some(Err)` for a
/// malformed one, `None` for an ordinary filter.
pub(crate) fn shared_parts(filter: &str) -> Option<Result<(&str, &str), ()>> {
    let rest = filter.strip_prefix("$share/")?;
    Some(match rest.split_once('/') {
        Some((group, inner))
            if !group.is_empty() && !group.contains(['+', '#']) && !inner.is_empty() =>
        {
            Ok((group, inner))
        }
        _ => Err(()),
    })
}

/// A validated subscription filter, split into its share group (if any) and
/// the filter topics are matched against.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct TopicFilter {
    full: String,
    /// Byte offset in `full` where the matching filter starts (after `$share/<group>/`).
    inner_at: usize,
}

impl TopicFilter {
    /// A validated filter (a `$share/group/` prefix is understood).
    pub fn new(filter: impl Into<String>) -> Result<Self, TopicError> {
        let full = filter.into();
        validate_filter(&full)?;
        let inner_at = match shared_parts(&full) {
            Some(Ok((group, _))) => "$share/".len() + group.len() + 1,
            _ => 0,
        };
        Ok(TopicFilter { full, inner_at })
    }

    /// Wraps `filter` as `$share/<group>/<filter>`.
    pub fn shared(group: &str, filter: &str) -> Result<Self, TopicError> {
        TopicFilter::new(format!("$share/{group}/{filter}"))
    }

    /// The filter as sent to the broker.
    pub fn as_str(&self) -> &str {
        &self.full
    }
    /// The filter topics are matched against (without `$share/<group>/`).
    pub fn filter(&self) -> &str {
        &self.full[self.inner_at..]
    }
    /// The share group of a `$share/group/…` filter.
    pub fn share_group(&self) -> Option<&str> {
        (self.inner_at > 0).then(|| &self.full["$share/".len()..self.inner_at - 1])
    }
    /// Whether a message on `topic` matches the filter (MQTT's rules:
    /// `+` one level, `#` the rest, `$` topics only by explicit filters).
    pub fn matches(&self, topic: &str) -> bool {
        matches(self.filter(), topic)
    }
}

impl fmt::Debug for TopicFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.full, f)
    }
}
impl fmt::Display for TopicFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.full)
    }
}

/// Whether `topic` matches `filter` (a valid filter without `$share/…`).
pub fn matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && filter.starts_with(['+', '#']) {
        return false;
    }
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(fl), Some(tl)) if fl == tl => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

fn is_dollar_start(level: Option<&str>) -> bool {
    level.is_some_and(|l| l.starts_with('$'))
}

fn is_wild(level: Option<&str>) -> bool {
    matches!(level, Some("+" | "#"))
}

/// Whether some topic matches both filters (plain filters, no `$share/`).
pub fn intersects(a: &str, b: &str) -> bool {
    let (mut x, mut y) = (a.split('/'), b.split('/'));
    let (fa, fb) = (a.split('/').next(), b.split('/').next());
    // Wildcards in the first level never match `$` topics.
    if (is_dollar_start(fa) && is_wild(fb)) || (is_dollar_start(fb) && is_wild(fa)) {
        return false;
    }
    loop {
        match (x.next(), y.next()) {
            (Some("#"), _) | (_, Some("#")) => return true,
            (None, None) => return true,
            (Some(p), Some(q)) if p == q || p == "+" || q == "+" => {}
            _ => return false,
        }
    }
}

/// Whether every topic matching `b` also matches `a` (plain filters).
pub fn covers(a: &str, b: &str) -> bool {
    let (fa, fb) = (a.split('/').next(), b.split('/').next());
    if is_wild(fa) && is_dollar_start(fb) {
        return false;
    }
    let (mut x, mut y) = (a.split('/'), b.split('/'));
    loop {
        match (x.next(), y.next()) {
            (Some("#"), _) => return true,
            (_, Some("#")) => return false,
            (Some("+"), Some(_)) => {}
            (Some(p), Some(q)) if p == q => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// The most specific filter covering both `a` and `b`: equal levels are
/// kept, differing ones become `+`, and `#` (or differing lengths) ends it
/// with `#`.
fn generalize(a: &str, b: &str) -> String {
    let (mut x, mut y) = (a.split('/'), b.split('/'));
    let mut out: Vec<&str> = Vec::new();
    loop {
        match (x.next(), y.next()) {
            (None, None) => break,
            (Some("#"), _) | (_, Some("#")) | (None, Some(_)) | (Some(_), None) => {
                out.push("#");
                break;
            }
            (Some(p), Some(q)) if p == q => out.push(p),
            _ => out.push("+"),
        }
    }
    out.join("/")
}

/// Filters to subscribe to so that no topic matches two of them, covering
/// every filter given. A broker sends one copy of a message per matching
/// subscription (Mosquitto does for MQTT 5); subscribing to these instead,
/// and matching locally against the filters asked for, gives each message
/// once. Covered filters are dropped (`factory/#` covers
/// `factory/machine1/temperature`); partly overlapping ones are merged
/// (`a/+/c` and `a/b/+` become `a/+/+`), which may bring in topics matching
/// none of the filters given: the caller drops those.
pub fn disjoint_cover(filters: &[String]) -> Vec<String> {
    disjoint_cover_groups(filters)
        .into_iter()
        .map(|(f, _)| f)
        .collect()
}

/// [`disjoint_cover`] with, for each filter of the cover, the indices of
/// the filters given that it covers (each index in exactly one group). The
/// cover is in the order of each group's first filter.
///
/// Filters already taken sit in a trie of levels, so finding those a new
/// filter intersects walks only the branches it can match: a list of
/// 20,000 plain topics takes milliseconds (comparing every pair took
/// minutes). Each merge removes a filter for good, so there are fewer
/// merges than filters.
pub fn disjoint_cover_groups(filters: &[String]) -> Vec<(String, Vec<usize>)> {
    let mut trie = Trie::default();
    // Slot per cover filter; `None` once merged into another.
    let mut slots: Vec<Option<(String, Vec<usize>)>> = Vec::new();
    for (i, f) in filters.iter().enumerate() {
        let (mut filter, mut members) = (f.clone(), vec![i]);
        loop {
            let mut hits = Vec::new();
            trie.intersecting(&filter, &mut hits);
            if hits.is_empty() {
                break;
            }
            for id in hits {
                let Some((other, m)) = slots[id].take() else {
                    continue;
                };
                trie.remove(&other);
                filter = generalize(&filter, &other);
                members.extend(m);
            }
        }
        trie.insert(&filter, slots.len());
        slots.push(Some((filter, members)));
    }
    let mut cover: Vec<(String, Vec<usize>)> = slots
        .into_iter()
        .flatten()
        .map(|(f, mut m)| {
            m.sort_unstable();
            (f, m)
        })
        .collect();
    cover.sort_by_key(|(_, m)| m[0]);
    cover
}

/// Filters by level: `end` holds the id of the filter ending at a node,
/// `hash` the one ending with `#` right below it.
#[derive(Default)]
struct Trie {
    children: std::collections::HashMap<String, Trie>,
    end: Option<usize>,
    hash: Option<usize>,
}

impl Trie {
    fn insert(&mut self, filter: &str, id: usize) {
        let mut node = self;
        let mut levels = filter.split('/').peekable();
        while let Some(level) = levels.next() {
            if level == "#" {
                node.hash = Some(id);
                return;
            }
            node = node.children.entry(level.to_string()).or_default();
            if levels.peek().is_none() {
                node.end = Some(id);
            }
        }
    }

    fn is_empty(&self) -> bool {
        self.end.is_none() && self.hash.is_none() && self.children.is_empty()
    }

    /// Removes `filter`, pruning the branches it leaves empty.
    fn remove(&mut self, filter: &str) {
        let levels: Vec<&str> = filter.split('/').collect();
        self.remove_levels(&levels);
    }

    fn remove_levels(&mut self, levels: &[&str]) {
        match levels {
            [] => self.end = None,
            ["#"] => self.hash = None,
            [first, rest @ ..] => {
                if let Some(child) = self.children.get_mut(*first) {
                    child.remove_levels(rest);
                    if child.is_empty() {
                        self.children.remove(*first);
                    }
                }
            }
        }
    }

    /// The ids of the filters that some topic matches together with
    /// `filter` (as [`intersects`] says), in `out`.
    fn intersecting(&self, filter: &str, out: &mut Vec<usize>) {
        let levels: Vec<&str> = filter.split('/').collect();
        // Wildcards in the first level never match `$` topics.
        let dollar = levels[0].starts_with('$');
        let wild = is_wild(Some(levels[0]));
        let mut stack = vec![(self, 0usize)];
        while let Some((node, depth)) = stack.pop() {
            let root = depth == 0;
            if !(root && dollar) {
                out.extend(node.hash);
            }
            let skip = |name: &str| root && wild && name.starts_with('$');
            match levels.get(depth).copied() {
                None => out.extend(node.end),
                Some("#") => {
                    out.extend(node.end);
                    for (name, child) in &node.children {
                        if !skip(name) {
                            child.collect_all(out);
                        }
                    }
                }
                Some("+") => {
                    for (name, child) in &node.children {
                        if !skip(name) {
                            stack.push((child, depth + 1));
                        }
                    }
                }
                Some(level) => {
                    if let Some(child) = node.children.get(level) {
                        stack.push((child, depth + 1));
                    }
                    if let (false, Some(child)) = (root && dollar, node.children.get("+")) {
                        stack.push((child, depth + 1));
                    }
                }
            }
        }
    }

    /// Every id at or below this node.
    fn collect_all(&self, out: &mut Vec<usize>) {
        let mut stack = vec![self];
        while let Some(node) = stack.pop() {
            out.extend(node.end);
            out.extend(node.hash);
            stack.extend(node.children.values());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn names() {
        for ok in [
            "a",
            "a/b",
            "/",
            "a//b",
            "/a",
            "a/",
            "$SYS/x",
            "$aws/things/t",
            "ü/ß",
            " ",
        ] {
            assert_eq!(validate_topic_name(ok), Ok(()), "{ok}");
        }
        assert_eq!(validate_topic_name(""), Err(TopicError::Empty));
        assert!(
            matches!(validate_topic_name("a/+"), Err(TopicError::WildcardInName(t)) if t == "a/+")
        );
        assert!(matches!(
            validate_topic_name("a/#"),
            Err(TopicError::WildcardInName(_))
        ));
        assert!(matches!(
            validate_topic_name("a\0b"),
            Err(TopicError::Nul(_))
        ));
        assert!(matches!(
            validate_topic_name("$share/g/a"),
            Err(TopicError::SharedName(_))
        ));
        let long = "x".repeat(65_536);
        assert!(matches!(
            validate_topic_name(&long),
            Err(TopicError::TooLong { len: 65_536, .. })
        ));
        assert_eq!(validate_topic_name(&"x".repeat(65_535)), Ok(()));
    }

    #[test]
    fn filters() {
        for ok in [
            "#",
            "+",
            "a/#",
            "a/+/b",
            "+/+",
            "/+",
            "a//#",
            "$SYS/#",
            "$share/g/a/#",
            "$share/g/+",
        ] {
            assert_eq!(validate_filter(ok), Ok(()), "{ok}");
        }
        for (bad, want) in [
            ("a/#/b", TopicError::BadMultiLevel("a/#/b".into())),
            ("a#", TopicError::BadMultiLevel("a#".into())),
            ("a/b#", TopicError::BadMultiLevel("a/b#".into())),
            ("a+", TopicError::BadSingleLevel("a+".into())),
            ("a/+b/c", TopicError::BadSingleLevel("a/+b/c".into())),
            ("$share/g", TopicError::BadShared("$share/g".into())),
            ("$share//a", TopicError::BadShared("$share//a".into())),
            ("$share/g+/a", TopicError::BadShared("$share/g+/a".into())),
            ("$share/g/", TopicError::BadShared("$share/g/".into())),
            (
                "$share/g/a/#/b",
                TopicError::BadMultiLevel("$share/g/a/#/b".into()),
            ),
            ("", TopicError::Empty),
        ] {
            assert_eq!(validate_filter(bad), Err(want), "{bad}");
        }
    }

    #[test]
    fn error_names_the_value() {
        let e = validate_filter("a/#/b").unwrap_err().to_string();
        assert!(e.contains("\"a/#/b\""), "{e}");
        let e = validate_topic_name("x/+").unwrap_err().to_string();
        assert!(e.contains("\"x/+\""), "{e}");
    }

    #[test]
    fn matching_table() {
        for (filter, topic, want) in [
            ("a/b", "a/b", true),
            ("a/b", "a/c", false),
            ("a/+", "a/b", true),
            ("a/+", "a/b/c", false),
            ("a/+", "a/", true),
            ("a/#", "a", true),
            ("a/#", "a/b/c", true),
            ("#", "a/b", true),
            ("#", "$SYS/x", false),
            ("+/x", "$SYS/x", false),
            ("$SYS/#", "$SYS/x", true),
            ("+", "/", false),
            ("+/+", "/", true),
            ("/+", "/a", true),
            ("a//b", "a//b", true),
            ("a/+/b", "a//b", true),
            ("factory/#", "factory/machine1/temperature", true),
            (
                "factory/machine1/temperature",
                "factory/machine1/temperature",
                true,
            ),
        ] {
            assert_eq!(matches(filter, topic), want, "{filter} vs {topic}");
        }
    }

    #[test]
    fn shared_filter_parts() {
        let f = TopicFilter::new("$share/grp/sensors/+/t").unwrap();
        assert_eq!(f.share_group(), Some("grp"));
        assert_eq!(f.filter(), "sensors/+/t");
        assert!(f.matches("sensors/1/t"));
        let f = TopicFilter::new("a/#").unwrap();
        assert_eq!(f.share_group(), None);
        assert_eq!(f.filter(), "a/#");
    }

    #[test]
    fn overlapping_filters_become_disjoint() {
        let v = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            disjoint_cover(&v(&["factory/machine1/temperature", "factory/#"])),
            ["factory/#"]
        );
        assert_eq!(disjoint_cover(&v(&["a/+/c", "a/b/+"])), ["a/+/+"]);
        assert_eq!(disjoint_cover(&v(&["a/b", "c/d", "a/b"])), ["a/b", "c/d"]);
        assert_eq!(disjoint_cover(&v(&["a/+", "a/#"])), ["a/#"]);
        assert_eq!(disjoint_cover(&v(&["$SYS/#", "#"])), ["$SYS/#", "#"]);
        assert!(!intersects("a/b", "a/b/c"));
        assert!(intersects("a", "a/#"));
        assert!(covers("a/#", "a"));
        assert!(!covers("a/+", "a"));
        assert!(!covers("+/x", "$SYS/x"));
        assert!(!covers("a/+", "a/#"));
    }

    fn filter_level() -> impl Strategy<Value = String> {
        prop_oneof!["[a-b]{1}", Just("+".to_string())]
    }
    fn filter() -> impl Strategy<Value = String> {
        (
            proptest::collection::vec(filter_level(), 1..4),
            any::<bool>(),
        )
            .prop_map(|(mut v, hash)| {
                if hash {
                    v.push("#".into());
                }
                v.join("/")
            })
    }

    /// The pairwise algorithm the trie replaced, to compare with.
    fn pairwise_cover(filters: &[String]) -> Vec<String> {
        let mut set: Vec<String> = Vec::new();
        for f in filters {
            if !set.contains(f) {
                set.push(f.clone());
            }
        }
        'again: loop {
            for i in 0..set.len() {
                for j in 0..set.len() {
                    if i == j || !intersects(&set[i], &set[j]) {
                        continue;
                    }
                    if covers(&set[i], &set[j]) {
                        set.remove(j);
                    } else if covers(&set[j], &set[i]) {
                        set.remove(i);
                    } else {
                        let g = generalize(&set[i], &set[j]);
                        let (hi, lo) = (i.max(j), i.min(j));
                        set.remove(hi);
                        set[lo] = g;
                    }
                    continue 'again;
                }
            }
            return set;
        }
    }

    /// Levels that exercise the `$` rule, empty levels and shared prefixes.
    fn any_filter() -> impl Strategy<Value = String> {
        let level = prop_oneof![
            "[a-b]{1}",
            Just("+".to_string()),
            Just(String::new()),
            Just("$s".to_string())
        ];
        (proptest::collection::vec(level, 1..5), any::<bool>()).prop_map(|(mut v, hash)| {
            if hash {
                v.push("#".into());
            }
            v.join("/")
        })
    }

    #[test]
    fn twenty_thousand_topics_are_covered_quickly() {
        let topics: Vec<String> = (0..20_000)
            .map(|i| format!("site/{}/dev{i}/t", i % 50))
            .collect();
        let started = std::time::Instant::now();
        let cover = disjoint_cover_groups(&topics);
        assert_eq!(cover.len(), 20_000);
        let mut with_wildcards = topics.clone();
        with_wildcards.extend((0..50).map(|i| format!("site/{i}/+/t")));
        let cover = disjoint_cover_groups(&with_wildcards);
        assert_eq!(cover.len(), 50);
        assert!(cover.iter().all(|(_, m)| m.len() == 401), "{:?}", &cover[0]);
        assert!(
            started.elapsed() < std::time::Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
    }

    proptest! {
        #[test]
        fn trie_cover_is_the_pairwise_cover(filters in proptest::collection::vec(any_filter(), 1..12)) {
            let mut fast = disjoint_cover(&filters);
            let mut slow = pairwise_cover(&filters);
            fast.sort();
            slow.sort();
            prop_assert_eq!(&fast, &slow);
            let groups = disjoint_cover_groups(&filters);
            let mut seen: Vec<usize> = groups.iter().flat_map(|(_, m)| m.clone()).collect();
            seen.sort();
            prop_assert_eq!(seen, (0..filters.len()).collect::<Vec<_>>());
            for (g, members) in &groups {
                for &i in members {
                    prop_assert!(covers(g, &filters[i]), "{} does not cover {}", g, filters[i]);
                }
            }
        }

        #[test]
        fn disjoint_cover_matches_each_topic_once_and_covers_all(
            filters in proptest::collection::vec(filter(), 1..5),
            topics in proptest::collection::vec(topic(), 1..20),
        ) {
            let cover = disjoint_cover(&filters);
            for t in &topics {
                let n = cover.iter().filter(|c| matches(c, t)).count();
                prop_assert!(n <= 1, "{t} matches {n} of {cover:?}");
                if filters.iter().any(|f| matches(f, t)) {
                    prop_assert_eq!(n, 1, "{} not covered by {:?}", t, cover);
                }
            }
        }

        #[test]
        fn intersects_and_covers_agree_with_matching(a in filter(), b in filter(), t in topic()) {
            if matches(&a, &t) && matches(&b, &t) {
                prop_assert!(intersects(&a, &b));
            }
            if covers(&a, &b) && matches(&b, &t) {
                prop_assert!(matches(&a, &t));
            }
        }
    }

    fn level() -> impl Strategy<Value = String> {
        "[a-c]{0,2}"
    }
    fn topic() -> impl Strategy<Value = String> {
        proptest::collection::vec(level(), 1..5).prop_map(|v| v.join("/"))
    }

    proptest! {
        #[test]
        fn a_topic_matches_itself_and_hash(t in topic()) {
            prop_assume!(!t.is_empty());
            prop_assert!(validate_topic_name(&t).is_ok());
            prop_assert!(matches(&t, &t));
            prop_assert!(matches("#", &t));
        }

        #[test]
        fn plus_replacing_any_level_still_matches(t in topic(), i in 0usize..5) {
            prop_assume!(!t.is_empty());
            let mut levels: Vec<&str> = t.split('/').collect();
            let i = i % levels.len();
            levels[i] = "+";
            let filter = levels.join("/");
            prop_assert!(validate_filter(&filter).is_ok());
            prop_assert!(matches(&filter, &t));
        }

        #[test]
        fn hash_after_a_prefix_matches(t in topic(), n in 0usize..5) {
            prop_assume!(!t.is_empty());
            let levels: Vec<&str> = t.split('/').collect();
            let n = n % (levels.len() + 1);
            let mut f: Vec<&str> = levels[..n].to_vec();
            f.push("#");
            let filter = f.join("/");
            prop_assert!(validate_filter(&filter).is_ok());
            prop_assert!(matches(&filter, &t));
        }

        #[test]
        fn differing_literal_level_never_matches(t in topic(), i in 0usize..5) {
            let mut levels: Vec<String> = t.split('/').map(str::to_owned).collect();
            let i = i % levels.len();
            levels[i].push('z'); // topics use only a-c, so this level differs
            let filter = levels.join("/");
            prop_assert!(!matches(&filter, &t));
        }

        #[test]
        fn validation_never_panics(s in "\\PC{0,30}") {
            let _ = validate_filter(&s);
            let _ = validate_topic_name(&s);
            if validate_filter(&s).is_ok() {
                let _ = matches(TopicFilter::new(s.clone()).unwrap().filter(), "a/b");
            }
        }

        #[test]
        fn names_without_wildcards_are_valid_filters(t in topic()) {
            prop_assume!(!t.is_empty());
            prop_assert!(validate_filter(&t).is_ok());
        }
    }
}
