//! Unit tests of the apply rules: conditions, references, idempotency, retention, persistence.

use crate::command::{ApplyError, Command, Condition, Envelope, IdempotencyKey, Request};
use crate::state::{State, StateLimits};

fn env(command: Command) -> Envelope {
    Envelope {
        actor: "admin".into(),
        idempotency: None,
        command,
    }
}

fn apply(state: &mut State, commands: Vec<Envelope>) -> Vec<crate::CommandResult> {
    let mut rows = Vec::new();
    state.apply_request(
        &Request {
            proposed_at_ms: 1_000,
            commands,
        },
        StateLimits {
            history: 3,
            idempotency_keys: 2,
            ..StateLimits::default()
        },
        &mut rows,
    )
}

fn ns(name: &str) -> Command {
    Command::PutNamespace {
        ns: name.into(),
        description: String::new(),
        condition: Condition::None,
    }
}
fn flag(name: &str, def: &str, condition: Condition) -> Command {
    Command::PutFlag {
        ns: "prod".into(),
        key: name.into(),
        definition: def.into(),
        condition,
    }
}
fn segment(name: &str, def: &str) -> Command {
    Command::PutSegment {
        ns: "prod".into(),
        key: name.into(),
        definition: def.into(),
        condition: Condition::None,
    }
}

const BOOL_FLAG: &str =
    r#"{"state":"ENABLED","variants":{"on":true,"off":false},"defaultVariant":"off"}"#;

#[test]
fn each_change_gets_its_own_revision_and_failures_bump_nothing() {
    let mut s = State::default();
    let r = apply(
        &mut s,
        vec![
            env(ns("prod")),
            env(flag("a", BOOL_FLAG, Condition::None)),
            env(flag("b", BOOL_FLAG, Condition::IfMatch(99))),
        ],
    );
    assert_eq!(r[0].as_ref().unwrap().revision, 1);
    assert_eq!(r[1].as_ref().unwrap().revision, 2);
    assert_eq!(r[2], Err(ApplyError::PreconditionFailed { current: None }));
    assert_eq!(s.revision(), 2);
    assert_eq!(s.namespace("prod").unwrap().flags["a"].version, 2);
}

#[test]
fn conditions_are_decided_in_apply() {
    let mut s = State::default();
    apply(
        &mut s,
        vec![
            env(ns("prod")),
            env(flag("a", BOOL_FLAG, Condition::CreateOnly)),
        ],
    );
    let r = apply(
        &mut s,
        vec![env(flag("a", BOOL_FLAG, Condition::CreateOnly))],
    );
    assert_eq!(
        r[0],
        Err(ApplyError::PreconditionFailed { current: Some(2) })
    );
    let r = apply(
        &mut s,
        vec![env(flag("a", BOOL_FLAG, Condition::IfMatch(1)))],
    );
    assert_eq!(
        r[0],
        Err(ApplyError::PreconditionFailed { current: Some(2) })
    );
    let r = apply(
        &mut s,
        vec![env(flag("a", BOOL_FLAG, Condition::IfMatch(2)))],
    );
    assert_eq!(r[0].as_ref().unwrap().revision, 3);
    let r = apply(
        &mut s,
        vec![env(Command::PutFlag {
            ns: "nope".into(),
            key: "a".into(),
            definition: BOOL_FLAG.into(),
            condition: Condition::None,
        })],
    );
    assert_eq!(
        r[0],
        Err(ApplyError::NamespaceNotFound { ns: "nope".into() })
    );
    assert_eq!(s.revision(), 3);
}

#[test]
fn references_must_exist_and_not_cycle_and_segments_in_use_stay() {
    let mut s = State::default();
    apply(&mut s, vec![env(ns("prod"))]);
    let targeting = r#"{"state":"ENABLED","variants":{"on":true,"off":false},"defaultVariant":"off","targeting":{"if":[{"$ref":"beta"},"on","off"]}}"#;
    let r = apply(&mut s, vec![env(flag("a", targeting, Condition::None))]);
    assert!(matches!(&r[0], Err(ApplyError::UnknownSegment { segment, .. }) if segment == "beta"));

    let r = apply(
        &mut s,
        vec![
            env(segment("beta", r#"{"in":[{"var":"email"},["a@x"]]}"#)),
            env(flag("a", targeting, Condition::None)),
        ],
    );
    assert!(r.iter().all(|x| x.is_ok()), "{r:?}");

    let r = apply(&mut s, vec![env(segment("x", r#"{"$ref":"y"}"#))]);
    assert!(matches!(&r[0], Err(ApplyError::UnknownSegment { .. })));
    apply(
        &mut s,
        vec![
            env(segment("y", r#"{"==":[1,1]}"#)),
            env(segment("x", r#"{"$ref":"y"}"#)),
        ],
    );
    let r = apply(&mut s, vec![env(segment("y", r#"{"$ref":"x"}"#))]);
    assert!(
        matches!(&r[0], Err(ApplyError::SegmentCycle { .. })),
        "{r:?}"
    );

    let r = apply(
        &mut s,
        vec![env(Command::DeleteSegment {
            ns: "prod".into(),
            key: "beta".into(),
            condition: Condition::None,
        })],
    );
    assert!(
        matches!(&r[0], Err(ApplyError::SegmentInUse { users, .. }) if users == &vec!["flag a".to_string()])
    );
}

#[test]
fn idempotent_retry_applies_once_and_reuse_is_refused() {
    let mut s = State::default();
    apply(&mut s, vec![env(ns("prod"))]);
    let key = |fp: &str| {
        Some(IdempotencyKey {
            scope: "admin/prod/k1".into(),
            fingerprint: fp.into(),
        })
    };
    let e = Envelope {
        actor: "admin".into(),
        idempotency: key("f1"),
        command: flag("a", BOOL_FLAG, Condition::None),
    };
    let first = apply(&mut s, vec![e.clone()]);
    let again = apply(&mut s, vec![e.clone()]);
    assert_eq!(
        first[0].as_ref().unwrap().revision,
        again[0].as_ref().unwrap().revision
    );
    assert!(again[0].as_ref().unwrap().replayed);
    assert_eq!(s.revision(), 2);
    let other = Envelope {
        idempotency: key("f2"),
        ..e
    };
    assert_eq!(
        apply(&mut s, vec![other])[0],
        Err(ApplyError::IdempotencyKeyReused)
    );
}

#[test]
fn retention_is_bounded_fifo_and_rows_round_trip() {
    let mut s = State::default();
    let limits = StateLimits {
        history: 3,
        idempotency_keys: 2,
        ..StateLimits::default()
    };
    let mut rows = Vec::new();
    let mut cmds = vec![env(ns("prod"))];
    for i in 0..5 {
        cmds.push(Envelope {
            actor: "admin".into(),
            idempotency: Some(IdempotencyKey {
                scope: format!("k{i}"),
                fingerprint: "f".into(),
            }),
            command: flag(&format!("f{i}"), BOOL_FLAG, Condition::None),
        });
    }
    s.apply_request(
        &Request {
            proposed_at_ms: 5,
            commands: cmds,
        },
        limits,
        &mut rows,
    );
    assert_eq!(
        s.history().iter().map(|c| c.revision).collect::<Vec<_>>(),
        vec![4, 5, 6]
    );

    // Replaying the row operations into a fresh store gives the same state.
    let mut table = std::collections::BTreeMap::new();
    for (k, v) in rows {
        match v {
            Some(v) => table.insert(k, v),
            None => table.remove(&k),
        };
    }
    // `last_applied` lives in the meta row, written by the state machine.
    let mut meta_rows = Vec::new();
    s.take_pending();
    let mut s2 = s.clone();
    s2.set_applied(
        openraft::LogId::new(openraft::CommittedLeaderId::new(1, 1), 7),
        &mut meta_rows,
    );
    for (k, v) in meta_rows {
        table.insert(k, v.unwrap());
    }
    let loaded = State::from_rows(table.iter().map(|(k, v)| (k.as_slice(), v.as_slice()))).unwrap();
    assert_eq!(loaded, s2);
    let from_all = State::from_rows(
        s2.all_rows()
            .iter()
            .map(|(k, v)| (k.as_slice(), v.as_deref().unwrap())),
    )
    .unwrap();
    assert_eq!(from_all, s2);
}

/// Chains are built leaf first; the one-too-long link is refused whichever way the names run.
#[test]
fn ref_chains_longer_than_the_limit_are_refused_whatever_the_names() {
    let max = flagstaff_flags::limits::MAX_REF_CHAIN;
    for ascending in [true, false] {
        let mut s = State::default();
        apply(&mut s, vec![env(ns("prod"))]);
        let name = |i: usize| {
            if ascending {
                format!("s{i:03}")
            } else {
                format!("s{:03}", 999 - i)
            }
        };
        apply(&mut s, vec![env(segment(&name(0), r#"{"==":[1,1]}"#))]);
        for i in 1..=max {
            let rule = format!(r#"{{"and":[true,{{"$ref":"{}"}}]}}"#, name(i - 1));
            let r = apply(&mut s, vec![env(segment(&name(i), &rule))]);
            if i < max {
                assert!(r[0].is_ok(), "link {i} ascending={ascending}: {r:?}");
            } else {
                assert!(
                    matches!(&r[0], Err(ApplyError::SegmentChainTooLong { chain, .. }) if *chain == max + 1),
                    "link {i} ascending={ascending}: {r:?}"
                );
            }
        }
        // Lengthening the chain at its leaf end is refused too.
        let r = apply(
            &mut s,
            vec![env(segment(
                &name(0),
                &format!(r#"{{"$ref":"{}"}}"#, "leaf"),
            ))],
        );
        assert!(r[0].is_err());
        apply(&mut s, vec![env(segment("leaf", r#"{"==":[1,1]}"#))]);
        let r = apply(&mut s, vec![env(segment(&name(0), r#"{"$ref":"leaf"}"#))]);
        assert!(
            matches!(&r[0], Err(ApplyError::SegmentChainTooLong { .. })),
            "ascending={ascending}: {r:?}"
        );
    }
}

/// The in-memory `$ref` index is rebuilt when the state is loaded from its rows or decoded from
/// a snapshot, so reference checks decide the same after a restart or a snapshot install.
#[test]
fn the_reference_index_survives_loading_and_snapshots() {
    let mut s = State::default();
    let targeting = r#"{"state":"ENABLED","variants":{"on":true,"off":false},"defaultVariant":"off","targeting":{"if":[{"$ref":"b"},"on","off"]}}"#;
    let r = apply(
        &mut s,
        vec![
            env(ns("prod")),
            env(segment("a", r#"{"==":[1,1]}"#)),
            env(segment("b", r#"{"and":[{"$ref":"a"},true]}"#)),
            env(flag("f", targeting, Condition::None)),
        ],
    );
    assert!(r.iter().all(|x| x.is_ok()), "{r:?}");
    s.take_pending();

    let from_rows = State::from_rows(
        s.all_rows()
            .iter()
            .map(|(k, v)| (k.as_slice(), v.as_deref().unwrap())),
    )
    .unwrap();
    let decoded: State = crate::codec::decode(&crate::codec::encode(&s).unwrap()).unwrap();
    for (how, mut loaded) in [("rows", from_rows), ("snapshot", decoded)] {
        assert_eq!(loaded, s, "{how}");
        let space = loaded.namespace("prod").unwrap();
        let refs = |kind, key| {
            space
                .refs(kind, key)
                .map(|r| r.iter().cloned().collect::<Vec<_>>())
        };
        assert_eq!(
            refs(crate::ChangeKind::Flag, "f"),
            Some(vec!["b".into()]),
            "{how}"
        );
        assert_eq!(
            refs(crate::ChangeKind::Segment, "b"),
            Some(vec!["a".into()]),
            "{how}"
        );
        // The loaded index still protects segments in use and refuses cycles.
        let r = apply(
            &mut loaded,
            vec![
                env(Command::DeleteSegment {
                    ns: "prod".into(),
                    key: "a".into(),
                    condition: Condition::None,
                }),
                env(segment("a", r#"{"$ref":"b"}"#)),
            ],
        );
        assert!(
            matches!(&r[0], Err(ApplyError::SegmentInUse { users, .. }) if users == &vec!["segment b".to_string()]),
            "{how}: {r:?}"
        );
        assert!(
            matches!(&r[1], Err(ApplyError::SegmentCycle { .. })),
            "{how}: {r:?}"
        );
    }
}

/// The incremental check of a segment write (only what lies below its references and above
/// it) decides exactly as one pass over the whole graph would: thousands of random writes over
/// twelve names, a short chain limit so that every outcome occurs.
#[test]
fn segment_writes_are_checked_as_the_whole_graph_would_be() {
    let limits = StateLimits {
        max_ref_chain: 3,
        ..StateLimits::default()
    };
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move |n: u64| {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (seed >> 33) % n
    };
    let name = |i: u64| format!("s{i}");
    let mut s = State::default();
    apply(&mut s, vec![env(ns("prod"))]);
    let mut outcomes = std::collections::BTreeMap::new();
    for _ in 0..4000 {
        let key = name(next(12));
        let refs: std::collections::BTreeSet<String> =
            (0..next(4)).map(|_| name(next(12))).collect();
        let rule = if refs.is_empty() {
            r#"{"==":[1,1]}"#.to_string()
        } else {
            let parts: Vec<String> = refs
                .iter()
                .map(|r| format!(r#"{{"$ref":"{r}"}}"#))
                .collect();
            format!(r#"{{"or":[{}]}}"#, parts.join(","))
        };
        // What one pass over the graph with this write in place says.
        let space = s.namespace("prod").unwrap();
        let mut graph: Vec<(String, Vec<String>)> = space
            .segments
            .keys()
            .filter(|k| **k != key)
            .map(|k| {
                let r = space
                    .refs(crate::ChangeKind::Segment, k)
                    .cloned()
                    .unwrap_or_default();
                (k.clone(), r.into_iter().collect())
            })
            .collect();
        graph.push((key.clone(), refs.iter().cloned().collect()));
        let whole = flagstaff_flags::check_segment_graph(
            graph
                .iter()
                .map(|(k, r)| (k.as_str(), r.iter().map(String::as_str))),
            limits.ref_chain(),
        );
        let mut rows = Vec::new();
        let got = s.apply_request(
            &Request {
                proposed_at_ms: 1,
                commands: vec![env(segment(&key, &rule))],
            },
            limits,
            &mut rows,
        );
        let kind = match (&whole, &got[0]) {
            (Ok(()), Ok(_)) => "ok",
            (
                Err(flagstaff_flags::RefFault::Missing { .. }),
                Err(ApplyError::UnknownSegment { .. }),
            ) => "missing",
            (Err(flagstaff_flags::RefFault::Cycle(_)), Err(ApplyError::SegmentCycle { .. })) => {
                "cycle"
            }
            // The pass names the first chain it finds too long, the write its longest one.
            (
                Err(flagstaff_flags::RefFault::TooDeep { .. }),
                Err(ApplyError::SegmentChainTooLong { chain, max, .. }),
            ) if chain > max => "too long",
            (w, g) => panic!("{key} -> {refs:?}: the whole graph says {w:?}, the write got {g:?}"),
        };
        *outcomes.entry(kind).or_insert(0) += 1;
    }
    for kind in ["ok", "missing", "cycle", "too long"] {
        assert!(outcomes.get(kind).is_some_and(|n| *n > 20), "{outcomes:?}");
    }
}

fn events(id: Option<&str>, flag: &str, variant: &str, users: &[&str]) -> Command {
    use crate::experiment_data::{CountDelta, EventBatch, EventPart, SketchUpdate};
    let mut sketch = flagstaff_experiments::DistinctCount::new();
    for u in users {
        sketch.insert(u);
    }
    Command::RecordEvents {
        ns: "prod".into(),
        batch: EventBatch {
            parts: vec![EventPart {
                id: id.map(Into::into),
                counts: vec![CountDelta {
                    flag: flag.into(),
                    variant: variant.into(),
                    count: users.len() as u64,
                    ..CountDelta::default()
                }],
            }],
            sketches: vec![SketchUpdate {
                flag: flag.into(),
                variant: variant.into(),
                metric: None,
                users: sketch,
            }],
            evaluated: vec![flag.into()],
        },
    }
}

#[test]
fn events_spend_no_revision_persist_in_rows_and_snapshots_and_go_with_their_flag() {
    let mut s = State::default();
    let mut table = std::collections::BTreeMap::new();
    fn run(
        s: &mut State,
        table: &mut std::collections::BTreeMap<Vec<u8>, Vec<u8>>,
        cmds: Vec<Command>,
    ) -> Vec<crate::CommandResult> {
        let mut rows = Vec::new();
        let results = s.apply_request(
            &Request {
                proposed_at_ms: 120_000,
                commands: cmds.into_iter().map(env).collect(),
            },
            StateLimits::default(),
            &mut rows,
        );
        for (k, v) in rows {
            match v {
                Some(v) => table.insert(k, v),
                None => table.remove(&k),
            };
        }
        results
    }
    run(
        &mut s,
        &mut table,
        vec![ns("prod"), flag("f", BOOL_FLAG, Condition::None)],
    );
    let revision = s.revision();
    let r = run(
        &mut s,
        &mut table,
        vec![
            events(Some("b1"), "f", "on", &["u1", "u2"]),
            events(Some("b1"), "f", "on", &["u1", "u2"]),
            events(None, "missing", "on", &["u3"]),
        ],
    );
    assert_eq!(s.revision(), revision, "events spend no revision");
    assert!(!r[0].as_ref().unwrap().replayed && r[1].as_ref().unwrap().replayed);
    let arm = &s.experiments().record("prod", "f").unwrap().arms["on"];
    assert_eq!(arm.exposures, 2, "the retried batch counted once");
    assert_eq!(s.experiments().last_evaluated("prod", "f"), Some(120_000));
    assert!(s.experiments().record("prod", "missing").is_none());

    let loaded = State::from_rows(table.iter().map(|(k, v)| (k.as_slice(), v.as_slice()))).unwrap();
    assert_eq!(loaded.experiments(), s.experiments());
    s.take_pending();
    let snapshot = State::from_snapshot(&s.to_snapshot().unwrap()).unwrap();
    assert_eq!(snapshot, s);
    assert!(snapshot.experiments().seen("prod", "b1"));
    // A snapshot or backup written before experiment records existed still reads.
    let old = State::from_snapshot(&crate::codec::encode(&s).unwrap()).unwrap();
    assert_eq!(old.revision(), s.revision());
    assert!(old.experiments().record("prod", "f").is_none());

    run(
        &mut s,
        &mut table,
        vec![Command::DeleteFlag {
            ns: "prod".into(),
            key: "f".into(),
            condition: Condition::None,
        }],
    );
    assert!(s.experiments().record("prod", "f").is_none());
    assert_eq!(s.experiments().last_evaluated("prod", "f"), None);
    let loaded = State::from_rows(table.iter().map(|(k, v)| (k.as_slice(), v.as_slice()))).unwrap();
    assert!(
        loaded.experiments().record("prod", "f").is_none(),
        "its row is gone too"
    );
}
