//! Topic trees: subscriptions by filter level, and retained messages by
//! topic level. Matching a topic walks at most two branches per level
//! (`+` and the level itself) plus `#`, so it costs the depth of the topic
//! and the number of matches, not the number of subscriptions.
//!
//! Walks recurse once per level, so filters and topic names deeper than
//! [`MAX_LEVELS`] are refused before they reach a tree: a 6,500-level
//! filter must not overflow a stack when it is removed.

use std::collections::HashMap;
use std::sync::Arc;

use super::session::{Message, Session};
use crate::codec::SubscribeOptions;

/// Levels a topic name or filter may have (VerneMQ's `topic_max_depth`
/// is the same idea, at 10 by default).
pub(super) const MAX_LEVELS: usize = 200;

/// Whether a topic name or filter has more than [`MAX_LEVELS`] levels.
pub(super) fn too_deep(topic: &str) -> bool {
    topic.bytes().filter(|b| *b == b'/').count() >= MAX_LEVELS
}

/// One client's subscription, as the tree keeps it.
#[derive(Clone)]
pub(super) struct Subscriber {
    pub session: Arc<Session>,
    pub opts: SubscribeOptions,
    /// MQTT 5 subscription identifier, sent back with each match.
    pub id: Option<u32>,
}

/// A subscription a topic matched.
pub(super) struct Match {
    pub sub: Subscriber,
    /// Through a shared subscription (`$share/group/…`): one member of the
    /// group was picked; retain-as-published and no-local do not apply.
    pub shared: bool,
}

#[derive(Default)]
struct Node {
    children: HashMap<Box<str>, Node>,
    /// Subscriptions whose filter ends here, by session key.
    subs: HashMap<u64, Subscriber>,
    /// Shared subscriptions whose filter ends here, by group name.
    shared: HashMap<Box<str>, SharedGroup>,
}

#[derive(Default)]
struct SharedGroup {
    members: Vec<Subscriber>,
    /// Round-robin position.
    next: usize,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.children.is_empty() && self.subs.is_empty() && self.shared.is_empty()
    }

    fn emit(&mut self, out: &mut Vec<Match>) {
        out.extend(self.subs.values().map(|s| Match {
            sub: s.clone(),
            shared: false,
        }));
        for g in self.shared.values_mut() {
            let n = g.members.len();
            // Round robin, preferring a member that is connected.
            let pick = (0..n)
                .map(|i| (g.next + i) % n)
                .find(|&i| g.members[i].session.is_online())
                .unwrap_or(g.next % n);
            g.next = pick + 1;
            out.push(Match {
                sub: g.members[pick].clone(),
                shared: true,
            });
        }
    }
}

/// Subscriptions by filter.
#[derive(Default)]
pub(super) struct SubTree {
    root: Node,
    len: usize,
}

impl SubTree {
    /// Adds or replaces a session's subscription; true when it is new
    /// (retain handling 1 sends retained messages only then).
    pub fn insert(&mut self, group: Option<&str>, filter: &str, sub: Subscriber) -> bool {
        let mut node = &mut self.root;
        for level in filter.split('/') {
            node = node.children.entry(level.into()).or_default();
        }
        let key = sub.session.key;
        let new = match group {
            None => node.subs.insert(key, sub).is_none(),
            Some(g) => {
                let members = &mut node.shared.entry(g.into()).or_default().members;
                match members.iter_mut().find(|m| m.session.key == key) {
                    Some(m) => {
                        *m = sub;
                        false
                    }
                    None => {
                        members.push(sub);
                        true
                    }
                }
            }
        };
        self.len += new as usize;
        new
    }

    /// Removes a session's subscription; true if it existed.
    pub fn remove(&mut self, group: Option<&str>, filter: &str, key: u64) -> bool {
        let levels: Vec<&str> = filter.split('/').collect();
        let removed = remove_at(&mut self.root, &levels, group, key);
        self.len -= removed as usize;
        removed
    }

    /// Every subscription matching `topic` (a valid topic name).
    pub fn matches(&mut self, topic: &str, out: &mut Vec<Match>) {
        let levels: Vec<&str> = topic.split('/').collect();
        collect(&mut self.root, &levels, true, out);
    }

    pub fn len(&self) -> usize {
        self.len
    }
}

/// Gives a map's memory back once it is mostly empty (a root with
/// 500,000 filters keeps its table after they leave otherwise).
fn shrink<K: std::hash::Hash + Eq, V>(m: &mut HashMap<K, V>) {
    if m.capacity() > 64 && m.len() * 4 < m.capacity() {
        m.shrink_to_fit();
    }
}

fn remove_at(node: &mut Node, levels: &[&str], group: Option<&str>, key: u64) -> bool {
    let Some((first, rest)) = levels.split_first() else {
        return match group {
            None => {
                let removed = node.subs.remove(&key).is_some();
                shrink(&mut node.subs);
                removed
            }
            Some(g) => {
                let Some(grp) = node.shared.get_mut(g) else {
                    return false;
                };
                let before = grp.members.len();
                grp.members.retain(|m| m.session.key != key);
                let removed = grp.members.len() < before;
                if grp.members.is_empty() {
                    node.shared.remove(g);
                }
                removed
            }
        };
    };
    let Some(child) = node.children.get_mut(*first) else {
        return false;
    };
    let removed = remove_at(child, rest, group, key);
    if child.is_empty() {
        node.children.remove(*first);
        shrink(&mut node.children);
    }
    removed
}

fn collect(node: &mut Node, levels: &[&str], first: bool, out: &mut Vec<Match>) {
    let Some((level, rest)) = levels.split_first() else {
        node.emit(out);
        // `a/#` also matches `a`.
        if let Some(hash) = node.children.get_mut("#") {
            hash.emit(out);
        }
        return;
    };
    // Wildcards at the first level do not match `$` topics ([MQTT-4.7.2-1]).
    if !(first && level.starts_with('$')) {
        if let Some(hash) = node.children.get_mut("#") {
            hash.emit(out);
        }
        if let Some(plus) = node.children.get_mut("+") {
            collect(plus, rest, false, out);
        }
    }
    if let Some(child) = node.children.get_mut(*level) {
        collect(child, rest, false, out);
    }
}

/// Retained messages by topic.
#[derive(Default)]
pub(super) struct RetainedTree {
    root: RNode,
    len: usize,
}

#[derive(Default)]
struct RNode {
    children: HashMap<Box<str>, RNode>,
    msg: Option<Arc<Message>>,
}

impl RetainedTree {
    /// Keeps `msg` for its topic; `None` (an empty retained payload) deletes it.
    pub fn set(&mut self, topic: &str, msg: Option<Arc<Message>>) {
        let levels: Vec<&str> = topic.split('/').collect();
        match msg {
            Some(m) => {
                let mut node = &mut self.root;
                for level in levels {
                    node = node.children.entry(level.into()).or_default();
                }
                self.len += node.msg.replace(m).is_none() as usize;
            }
            None => {
                if clear(&mut self.root, &levels) {
                    self.len -= 1;
                }
            }
        }
    }

    /// Retained messages whose topic matches `filter` (a valid filter).
    pub fn matching(&self, filter: &str, out: &mut Vec<Arc<Message>>) {
        let levels: Vec<&str> = filter.split('/').collect();
        walk(&self.root, &levels, true, out);
    }

    pub fn len(&self) -> usize {
        self.len
    }
}

fn clear(node: &mut RNode, levels: &[&str]) -> bool {
    let Some((first, rest)) = levels.split_first() else {
        return node.msg.take().is_some();
    };
    let Some(child) = node.children.get_mut(*first) else {
        return false;
    };
    let cleared = clear(child, rest);
    if child.msg.is_none() && child.children.is_empty() {
        node.children.remove(*first);
        shrink(&mut node.children);
    }
    cleared
}

fn walk(node: &RNode, levels: &[&str], first: bool, out: &mut Vec<Arc<Message>>) {
    match levels.split_first() {
        None => out.extend(node.msg.clone()),
        Some((&"#", _)) => {
            out.extend(node.msg.clone().filter(|_| !first));
            for (name, child) in &node.children {
                if !(first && name.starts_with('$')) {
                    all(child, out);
                }
            }
        }
        Some((&"+", rest)) => {
            for (name, child) in &node.children {
                if !(first && name.starts_with('$')) {
                    walk(child, rest, false, out);
                }
            }
        }
        Some((level, rest)) => {
            if let Some(child) = node.children.get(*level) {
                walk(child, rest, false, out);
            }
        }
    }
}

fn all(node: &RNode, out: &mut Vec<Arc<Message>>) {
    out.extend(node.msg.clone());
    for child in node.children.values() {
        all(child, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::session::QueueLimits;
    use crate::types::QoS;

    fn sub(key: u64) -> Subscriber {
        Subscriber {
            session: Arc::new(Session::new(
                format!("c{key}"),
                key,
                QueueLimits {
                    messages: 10,
                    bytes: 1 << 20,
                    hold: false,
                },
                Arc::default(),
            )),
            opts: SubscribeOptions::qos(QoS::AtLeastOnce),
            id: None,
        }
    }

    fn keys(t: &mut SubTree, topic: &str) -> Vec<u64> {
        let mut out = Vec::new();
        t.matches(topic, &mut out);
        let mut k: Vec<u64> = out.iter().map(|m| m.sub.session.key).collect();
        k.sort();
        k
    }

    #[test]
    fn matches_as_mqtt_says() {
        let mut t = SubTree::default();
        let filters = [
            "a/b", "a/+", "a/#", "#", "+/+", "+", "$SYS/#", "a//c", "a/+/c",
        ];
        for (i, f) in filters.iter().enumerate() {
            assert!(t.insert(None, f, sub(i as u64)));
        }
        assert!(
            !t.insert(None, "a/b", sub(0)),
            "same session, same filter: replaced"
        );
        assert_eq!(t.len(), filters.len());
        // (topic, indexes of the filters that match)
        let table: &[(&str, &[u64])] = &[
            ("a/b", &[0, 1, 2, 3, 4]),
            ("a", &[2, 3, 5]),
            ("a/b/c", &[2, 3, 8]),
            ("a//c", &[2, 3, 7, 8]),
            ("$SYS/x", &[6]),
            ("$SYS", &[6]),
            ("b", &[3, 5]),
            ("/", &[3, 4]),
        ];
        for (topic, want) in table {
            assert_eq!(keys(&mut t, topic), *want, "{topic}");
        }
        assert!(t.remove(None, "a/#", 2));
        assert!(!t.remove(None, "a/#", 2));
        assert_eq!(keys(&mut t, "a"), vec![3, 5]);
        for (i, f) in filters.iter().enumerate() {
            t.remove(None, f, i as u64);
        }
        assert_eq!(t.len(), 0);
        assert!(t.root.is_empty(), "empty branches pruned");
    }

    #[test]
    fn a_shared_group_gets_each_message_once_in_turn() {
        let mut t = SubTree::default();
        for k in 0..3 {
            t.insert(Some("g"), "s/+", sub(k));
        }
        t.insert(None, "s/+", sub(9));
        let picks: Vec<Vec<u64>> = (0..6).map(|_| keys(&mut t, "s/x")).collect();
        for p in &picks {
            assert_eq!(p.len(), 2, "one of the group and the plain subscriber");
            assert!(p.contains(&9));
        }
        let members: std::collections::BTreeSet<u64> = picks
            .iter()
            .flatten()
            .copied()
            .filter(|k| *k != 9)
            .collect();
        assert_eq!(members.len(), 3, "every member gets a turn");
    }

    #[test]
    fn retained_messages_are_found_by_filter() {
        let mut r = RetainedTree::default();
        let msg = |t: &str| {
            Arc::new(Message {
                topic: t.into(),
                payload: bytes::Bytes::from_static(b"x"),
                qos: QoS::AtMostOnce,
                retain: true,
                properties: None,
                expires: None,
                origin: 0,
            })
        };
        for t in ["a", "a/b", "a/b/c", "$SYS/x", "b/c"] {
            r.set(t, Some(msg(t)));
        }
        let find = |r: &RetainedTree, f: &str| {
            let mut out = Vec::new();
            r.matching(f, &mut out);
            let mut t: Vec<String> = out.iter().map(|m| m.topic.to_string()).collect();
            t.sort();
            t
        };
        assert_eq!(find(&r, "a/#"), ["a", "a/b", "a/b/c"]);
        assert_eq!(find(&r, "#"), ["a", "a/b", "a/b/c", "b/c"]);
        assert_eq!(find(&r, "+/c"), ["b/c"]);
        assert_eq!(find(&r, "$SYS/+"), ["$SYS/x"]);
        r.set("a/b", None);
        assert_eq!(find(&r, "a/+"), Vec::<String>::new());
        assert_eq!(r.len(), 4);
    }

    #[test]
    fn levels_are_counted() {
        let deep = |n: usize| vec!["a"; n].join("/");
        assert!(!too_deep(&deep(MAX_LEVELS)));
        assert!(too_deep(&deep(MAX_LEVELS + 1)));
        assert!(too_deep(&"/".repeat(65_000)));
    }
}
