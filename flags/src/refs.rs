//! `$ref` discovery and cycle detection among segments.

use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};

/// Names of the segments a flag definition's `targeting` references with `{"$ref": "name"}`,
/// sorted and deduplicated. Never panics; a definition without targeting has none.
pub fn flag_refs(def: &Value) -> BTreeSet<String> {
    match def.get("targeting") {
        Some(targeting) => rule_refs(targeting),
        None => BTreeSet::new(),
    }
}

/// Names of the segments referenced anywhere in a rule, sorted and deduplicated.
pub fn rule_refs(rule: &Value) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    collect(rule, &mut out);
    out
}

fn collect(v: &Value, out: &mut BTreeSet<String>) {
    out.extend(refs_borrowed(v).into_iter().map(str::to_string));
}

/// The names a rule references, borrowed from it, sorted and deduplicated. An explicit stack:
/// rules from outside may be nested arbitrarily deep.
pub(crate) fn refs_borrowed(rule: &Value) -> Vec<&str> {
    let mut out = Vec::new();
    let mut stack = vec![rule];
    while let Some(v) = stack.pop() {
        match v {
            Value::Object(map) => {
                if map.len() == 1 {
                    if let Some(Value::String(name)) = map.get("$ref") {
                        out.push(name.as_str());
                        continue;
                    }
                }
                stack.extend(map.values());
            }
            Value::Array(items) => stack.extend(items),
            _ => {}
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// Segments (name → rule, in name order) as graph entries: each name with the names it
/// references.
pub(crate) fn segment_entries(segments: &BTreeMap<String, Value>) -> Vec<(&str, Vec<&str>)> {
    segments
        .iter()
        .map(|(name, rule)| (name.as_str(), refs_borrowed(rule)))
        .collect()
}

/// Follows `$ref`s from segment `start` through `segments` (name → rule). Returns the cycle
/// if one is reachable, as the names along it with the first repeated at the end
/// (`["a", "b", "a"]`; a segment referencing itself gives `["a", "a"]`). References to
/// segments that do not exist are ignored here (they are a different fault). Deterministic:
/// references are followed in name order.
pub fn find_ref_cycle(segments: &BTreeMap<String, Value>, start: &str) -> Option<Vec<String>> {
    let mut on_path: Vec<String> = Vec::new();
    let mut done: BTreeSet<String> = BTreeSet::new();
    visit(segments, start, &mut on_path, &mut done)
}

fn visit(
    segments: &BTreeMap<String, Value>,
    name: &str,
    on_path: &mut Vec<String>,
    done: &mut BTreeSet<String>,
) -> Option<Vec<String>> {
    if let Some(pos) = on_path.iter().position(|n| n == name) {
        let mut cycle = on_path[pos..].to_vec();
        cycle.push(name.to_string());
        return Some(cycle);
    }
    if done.contains(name) {
        return None;
    }
    let rule = segments.get(name)?;
    on_path.push(name.to_string());
    for next in rule_refs(rule) {
        if let Some(cycle) = visit(segments, &next, on_path, done) {
            return Some(cycle);
        }
    }
    on_path.pop();
    done.insert(name.to_string());
    None
}

/// Why a namespace's segments cannot all be linked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefFault {
    /// `segment` references `missing`, which does not exist.
    Missing {
        /// The referencing segment.
        segment: String,
        /// The name it references.
        missing: String,
    },
    /// Segments reference each other in a cycle: the names along it, starting and ending at
    /// the least name (`["a", "b", "a"]`).
    Cycle(Vec<String>),
    /// A `$ref` chain from `segment` passes through `chain` segments, more than allowed.
    TooDeep {
        /// The first segment (in name order) whose chain is too long.
        segment: String,
        /// How many segments its longest chain passes through.
        chain: usize,
        /// The limit.
        max: usize,
    },
}

impl std::fmt::Display for RefFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RefFault::Missing { segment, missing } => {
                write!(f, "segment \"{segment}\" references \"{missing}\", which does not exist")
            }
            RefFault::Cycle(cycle) => write!(f, "$ref cycle: {}", cycle.join(" -> ")),
            RefFault::TooDeep { segment, chain, max } => write!(
                f,
                "the $ref chain from segment \"{segment}\" passes through {chain} segments, more than {max}"
            ),
        }
    }
}

/// Checks a namespace's segments (name → the names its rule references) in one O(V+E) pass:
/// every `$ref` names a segment of the graph, no cycle, and no chain passes through more than
/// `max_chain` segments. The verdict depends only on the graph, never on names or order; the
/// fault reported is the one at the least name.
pub fn check_segment_graph<'a, I, R>(segments: I, max_chain: usize) -> Result<(), RefFault>
where
    I: IntoIterator<Item = (&'a str, R)>,
    R: IntoIterator<Item = &'a str>,
{
    let mut entries: Vec<(&'a str, Vec<&'a str>)> = segments
        .into_iter()
        .map(|(name, refs)| (name, refs.into_iter().collect()))
        .collect();
    entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
    entries.dedup_by(|a, b| a.0 == b.0);
    let graph = Graph::new(&entries);
    for (name, refs) in &entries {
        if let Some(missing) = refs.iter().find(|r| graph.index(r).is_none()) {
            return Err(RefFault::Missing {
                segment: name.to_string(),
                missing: missing.to_string(),
            });
        }
    }
    let links = graph.analyse(max_chain);
    for (i, status) in links.status.iter().enumerate() {
        match status {
            Status::InCycle(c) => return Err(RefFault::Cycle(links.cycle_names(&graph, *c))),
            Status::TooDeep(chain) => {
                return Err(RefFault::TooDeep {
                    segment: graph.names[i].to_string(),
                    chain: *chain,
                    max: max_chain,
                })
            }
            Status::Linked(_) | Status::Broken => {}
        }
    }
    Ok(())
}

/// Segments as indices, with their references resolved (names that are not segments dropped).
pub(crate) struct Graph<'a> {
    pub(crate) names: Vec<&'a str>,
    edges: Vec<Vec<usize>>,
    index: std::collections::HashMap<&'a str, usize>,
}

/// What linking found for one segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Status {
    /// Linkable: its longest chain passes through this many segments.
    Linked(usize),
    /// On a cycle (the index of the cycle in `Links::cycles`).
    InCycle(usize),
    /// Its longest chain passes through this many segments, one more than allowed.
    TooDeep(usize),
    /// It references a segment that is on a cycle, too deep, or broken itself.
    Broken,
}

pub(crate) struct Links {
    pub(crate) status: Vec<Status>,
    /// Every segment, each after the segments it references (cycles aside).
    pub(crate) order: Vec<usize>,
    cycles: Vec<Vec<usize>>,
}

impl Links {
    /// The cycle's names, starting and ending at its least name.
    pub(crate) fn cycle_names(&self, graph: &Graph<'_>, cycle: usize) -> Vec<String> {
        let members = &self.cycles[cycle];
        let start = (0..members.len())
            .min_by_key(|&i| graph.names[members[i]])
            .unwrap_or(0);
        let mut out: Vec<String> = (0..members.len())
            .map(|k| graph.names[members[(start + k) % members.len()]].to_string())
            .collect();
        if let Some(first) = out.first().cloned() {
            out.push(first);
        }
        out
    }

    /// The cycle's least member, where it is reported once.
    pub(crate) fn cycle_head(&self, graph: &Graph<'_>, cycle: usize) -> usize {
        let members = &self.cycles[cycle];
        members
            .iter()
            .copied()
            .min_by_key(|&m| graph.names[m])
            .unwrap_or(0)
    }
}

impl<'a> Graph<'a> {
    /// `entries` sorted by name, without duplicates.
    pub(crate) fn new<R: AsRef<[&'a str]>>(entries: &[(&'a str, R)]) -> Self {
        let names: Vec<&'a str> = entries.iter().map(|(n, _)| *n).collect();
        let index: std::collections::HashMap<&'a str, usize> =
            names.iter().enumerate().map(|(i, n)| (*n, i)).collect();
        let edges = entries
            .iter()
            .map(|(_, refs)| {
                let mut e: Vec<usize> = refs
                    .as_ref()
                    .iter()
                    .filter_map(|r| index.get(r).copied())
                    .collect();
                e.sort_unstable();
                e.dedup();
                e
            })
            .collect();
        Self {
            names,
            edges,
            index,
        }
    }

    pub(crate) fn index(&self, name: &str) -> Option<usize> {
        self.index.get(name).copied()
    }

    /// One iterative depth-first pass: cycles, chain lengths, and a linking order.
    pub(crate) fn analyse(&self, max_chain: usize) -> Links {
        const WHITE: u8 = 0;
        const GRAY: u8 = 1;
        const BLACK: u8 = 2;
        let n = self.names.len();
        let mut color = vec![WHITE; n];
        let mut status: Vec<Option<Status>> = vec![None; n];
        let mut stack_pos = vec![usize::MAX; n];
        let mut cycles: Vec<Vec<usize>> = Vec::new();
        let mut order = Vec::with_capacity(n);
        let mut stack: Vec<(usize, usize)> = Vec::new();
        for root in 0..n {
            if color[root] != WHITE {
                continue;
            }
            color[root] = GRAY;
            stack_pos[root] = 0;
            stack.push((root, 0));
            while let Some(&mut (v, ref mut next)) = stack.last_mut() {
                if let Some(&w) = self.edges[v].get(*next) {
                    *next += 1;
                    match color[w] {
                        WHITE => {
                            color[w] = GRAY;
                            stack_pos[w] = stack.len();
                            stack.push((w, 0));
                        }
                        GRAY => {
                            let id = cycles.len();
                            let members: Vec<usize> =
                                stack[stack_pos[w]..].iter().map(|&(m, _)| m).collect();
                            for &m in &members {
                                if status[m].is_none() {
                                    status[m] = Some(Status::InCycle(id));
                                }
                            }
                            cycles.push(members);
                        }
                        _ => {}
                    }
                    continue;
                }
                stack.pop();
                color[v] = BLACK;
                order.push(v);
                if status[v].is_some() {
                    continue;
                }
                let mut longest = 0;
                let mut broken = false;
                for &w in &self.edges[v] {
                    match status[w] {
                        Some(Status::Linked(h)) => longest = longest.max(h),
                        _ => broken = true,
                    }
                }
                status[v] = Some(if broken {
                    Status::Broken
                } else if longest + 1 > max_chain {
                    Status::TooDeep(longest + 1)
                } else {
                    Status::Linked(longest + 1)
                });
            }
        }
        Links {
            status: status
                .into_iter()
                .map(|s| s.unwrap_or(Status::Broken))
                .collect(),
            order,
            cycles,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn segs(pairs: &[(&str, Value)]) -> BTreeMap<String, Value> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    }

    #[test]
    fn refs_are_found_anywhere_sorted_and_deduped() {
        let def = json!({"targeting": {"if": [{"and": [{"$ref": "b"}, {"$ref": "a"}]}, "on", {"$ref": "b"}]}});
        let refs: Vec<String> = flag_refs(&def).into_iter().collect();
        assert_eq!(refs, ["a", "b"]);
        assert!(flag_refs(&json!({"state": "ENABLED"})).is_empty());
        // An object with more keys than `$ref` is not a reference.
        assert!(rule_refs(&json!({"$ref": "a", "x": 1})).is_empty());
    }

    #[test]
    fn cycles() {
        let s = segs(&[
            ("a", json!({"$ref": "b"})),
            ("b", json!({"and": [true, {"$ref": "a"}]})),
            ("c", json!({"$ref": "missing"})),
            ("d", json!({"or": [{"$ref": "c"}, {"$ref": "d"}]})),
            ("e", json!({"$ref": "a"})),
        ]);
        assert_eq!(
            find_ref_cycle(&s, "a"),
            Some(vec!["a".into(), "b".into(), "a".into()])
        );
        assert_eq!(find_ref_cycle(&s, "c"), None);
        assert_eq!(find_ref_cycle(&s, "d"), Some(vec!["d".into(), "d".into()]));
        assert_eq!(
            find_ref_cycle(&s, "e"),
            Some(vec!["a".into(), "b".into(), "a".into()])
        );
        assert_eq!(find_ref_cycle(&s, "nope"), None);
    }
}
