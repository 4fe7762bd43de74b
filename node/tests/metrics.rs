//! `GET /metrics`: after writes, reads of both consistencies, a refused read, OFREP evaluations,
//! snapshot requests and a watch stream, every node's output is read by the Prometheus
//! project's own parser (Debian's `python3-prometheus-client`, OpenMetrics), follows the naming
//! conventions, and counts what happened. Also: the evaluation series stop at their cap, and
//! `--listen-metrics` serves the same metrics and nothing else.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::{Command, Stdio};

use common::{TestCluster, TOKEN};
use flagstaff_node::NodeConfig;
use serde_json::{json, Value};

const MAX_EVALUATION_SERIES: usize = 3;

/// The metrics-only listener of node `id`: an address no other test uses.
fn metrics_addr(id: u64) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 200 + id as u8)), 9101)
}

fn tune(c: &mut NodeConfig) {
    c.max_evaluation_series = MAX_EVALUATION_SERIES;
    c.listen_metrics = Some(metrics_addr(c.node_id));
    // A Raft snapshot is built during the test.
    c.snapshot_every = 5;
}

/// One metric family as the parser read it.
#[derive(Debug)]
struct Family {
    kind: String,
    unit: String,
    /// (sample name, labels, value)
    samples: Vec<(String, BTreeMap<String, String>, f64)>,
}

impl Family {
    /// The value of the sample named `name` whose labels include `labels`.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples
            .iter()
            .find(|(n, l, _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|(_, _, v)| *v)
    }
}

/// Parses OpenMetrics text with `prometheus_client.openmetrics.parser`, which rejects anything
/// the format does not allow; panics with the parser's message if it does.
fn parse(text: &str) -> BTreeMap<String, Family> {
    const SCRIPT: &str = r#"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
out = {}
for f in text_string_to_metric_families(sys.stdin.read()):
    out[f.name] = {"type": f.type, "unit": f.unit,
                   "samples": [[s.name, s.labels, s.value] for s in f.samples]}
print(json.dumps(out))
"#;
    let mut child = Command::new("/usr/bin/python3")
        .args(["-c", SCRIPT])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect(
            "/usr/bin/python3 (bash scripts/setup.sh installs it with python3-prometheus-client)",
        );
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the Prometheus parser refused the output: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let parsed: BTreeMap<String, Value> = serde_json::from_slice(&out.stdout).unwrap();
    parsed
        .into_iter()
        .map(|(name, f)| {
            let samples = f["samples"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| {
                    let labels = s[1]
                        .as_object()
                        .unwrap()
                        .iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
                        .collect();
                    (
                        s[0].as_str().unwrap().to_string(),
                        labels,
                        s[2].as_f64().unwrap(),
                    )
                })
                .collect();
            let family = Family {
                kind: f["type"].as_str().unwrap().to_string(),
                unit: f["unit"].as_str().unwrap_or_default().to_string(),
                samples,
            };
            (name, family)
        })
        .collect()
}

/// The Prometheus naming conventions every family must follow.
fn check_names(families: &BTreeMap<String, Family>) {
    for (name, f) in families {
        assert!(
            name.starts_with("flagstaff_"),
            "{name}: no flagstaff_ prefix"
        );
        assert!(
            !name.ends_with("_total"),
            "{name}: a family name carries no _total (its counter samples do)"
        );
        if !f.unit.is_empty() {
            assert!(
                name.ends_with(&format!("_{}", f.unit)),
                "{name}: unit {}",
                f.unit
            );
            assert!(
                ["seconds", "bytes"].contains(&f.unit.as_str()),
                "{name}: {} is not a base unit",
                f.unit
            );
        }
        if name.contains("duration") {
            assert_eq!(f.unit, "seconds", "{name}: a duration in seconds");
        }
        for (sample, _, _) in &f.samples {
            match f.kind.as_str() {
                "counter" => assert!(
                    sample == &format!("{name}_total") || sample == &format!("{name}_created"),
                    "{sample}: a counter sample ends in _total"
                ),
                "histogram" => assert!(
                    ["_bucket", "_count", "_sum", "_created"]
                        .iter()
                        .any(|s| sample == &format!("{name}{s}")),
                    "{sample}"
                ),
                "gauge" => assert_eq!(sample, name),
                other => panic!("{name}: unexpected type {other}"),
            }
        }
    }
}

async fn scrape(c: &TestCluster, url: String) -> BTreeMap<String, Family> {
    let r = c.http.get(url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let content_type = r.headers()["content-type"].to_str().unwrap().to_string();
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    let families = parse(&r.text().await.unwrap());
    check_names(&families);
    families
}

fn get<'a>(families: &'a BTreeMap<String, Family>, name: &str) -> &'a Family {
    families
        .get(name)
        .unwrap_or_else(|| panic!("no {name} in {:?}", families.keys()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_parse_follow_the_conventions_and_count_what_happened() {
    let c = TestCluster::start(3, tune).await;
    let leader = c.wait_leader().await;
    let follower = c.follower_of(leader);
    c.create_namespace(leader, "m").await;
    let flag =
        json!({"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "on"});
    let mut writes = 1;
    for f in ["f1", "f2", "f3", "f4"] {
        let (s, b) = c
            .put(leader, &format!("/v1/namespaces/m/flags/{f}"), flag.clone())
            .await;
        assert_eq!(s, 200, "{b}");
        writes += 1;
    }
    let (s, b) = c
        .post(leader, "/v1/namespaces/m/sdk-keys", json!({"name": "m"}))
        .await;
    assert_eq!(s, 200, "{b}");
    writes += 1;
    let key = b["secret"].as_str().unwrap().to_string();
    let revision = b["revision"].as_u64().unwrap();

    // Reads: linearizable on the leader, bounded on a follower, and one the follower must
    // refuse (a revision that does not exist yet).
    let (s, b) = c
        .get(leader, "/v1/namespaces/m?consistency=linearizable")
        .await;
    assert_eq!(s, 200, "{b}");
    let (s, b) = c
        .get(
            follower,
            &format!("/v1/namespaces/m?consistency=bounded&min_revision={revision}"),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    let (s, b) = c
        .get(
            follower,
            &format!("/v1/namespaces/m?min_revision={}", revision + 1000),
        )
        .await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (503, Some("STALE_REPLICA")),
        "{b}"
    );

    // OFREP on the leader: f1 twice, f2, f3, f4 (over the series cap) and a flag that does
    // not exist.
    let ofrep = |flag: &'static str| {
        let (http, url, key) = (
            c.http.clone(),
            format!(
                "{}/ofrep/v1/evaluate/flags/{flag}?consistency=linearizable",
                c.node(leader).api
            ),
            key.clone(),
        );
        async move {
            let r = http
                .post(url)
                .bearer_auth(key)
                .json(&json!({"context": {"targetingKey": "u"}}))
                .send()
                .await
                .unwrap();
            r.status().as_u16()
        }
    };
    for (flag, status) in [
        ("f1", 200),
        ("f1", 200),
        ("f2", 200),
        ("f3", 200),
        ("f4", 200),
        ("nope", 404),
    ] {
        assert_eq!(ofrep(flag).await, status, "{flag}");
    }

    // A snapshot with the key, one without any credential.
    let snapshot = format!("{}/v1/namespaces/m/snapshot", c.node(leader).api);
    let r = c
        .http
        .get(&snapshot)
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = c.http.get(&snapshot).send().await.unwrap();
    assert_eq!(r.status(), 401);

    // A watch stream, open while the leader is scraped.
    let mut watch = c
        .http
        .get(format!("{}/v1/namespaces/m/watch", c.node(leader).api))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(watch.status(), 200);
    let first = watch.chunk().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&first).contains("event: snapshot"));

    let m = scrape(&c, format!("{}/metrics", c.node(leader).api)).await;
    let g = |name: &str| get(&m, name).value(name, &[]).unwrap();
    assert!(g("flagstaff_raft_term") >= 1.0);
    assert_eq!(g("flagstaff_raft_is_leader"), 1.0);
    let leader_changes = get(&m, "flagstaff_raft_leader_changes");
    assert!(leader_changes.value("flagstaff_raft_leader_changes_total", &[]) >= Some(1.0));
    let (applied, committed, last) = (
        g("flagstaff_raft_applied_index"),
        g("flagstaff_raft_committed_index"),
        g("flagstaff_raft_last_log_index"),
    );
    assert!(
        applied >= writes as f64 && committed >= applied && last >= committed,
        "applied {applied}, committed {committed}, last {last}"
    );
    let w = get(&m, "flagstaff_write_duration_seconds");
    assert!(
        w.value(
            "flagstaff_write_duration_seconds_count",
            &[("outcome", "committed")]
        ) >= Some(writes as f64),
        "{w:?}"
    );
    let batches = get(&m, "flagstaff_raft_proposal_batch_commands");
    assert!(
        batches.value("flagstaff_raft_proposal_batch_commands_count", &[]) >= Some(writes as f64)
    );
    let sync = get(&m, "flagstaff_raft_log_sync_duration_seconds");
    assert!(
        sync.value("flagstaff_raft_log_sync_duration_seconds_count", &[]) >= Some(writes as f64)
    );
    let barrier = get(&m, "flagstaff_read_barrier_duration_seconds");
    assert!(
        barrier.value(
            "flagstaff_read_barrier_duration_seconds_count",
            &[("consistency", "linearizable")]
        ) >= Some(1.0),
        "{barrier:?}"
    );
    let ofrep_requests = get(&m, "flagstaff_ofrep_requests");
    let by_code =
        |code: &str| ofrep_requests.value("flagstaff_ofrep_requests_total", &[("code", code)]);
    assert_eq!((by_code("200"), by_code("404")), (Some(5.0), Some(1.0)));
    let snapshots = get(&m, "flagstaff_snapshot_requests");
    let by_code =
        |code: &str| snapshots.value("flagstaff_snapshot_requests_total", &[("code", code)]);
    assert_eq!((by_code("200"), by_code("401")), (Some(1.0), Some(1.0)));
    // Three series, then the rest under `_other`; the missing flag is not a series.
    let evaluations = get(&m, "flagstaff_evaluations");
    let evaluated = |flag: &str| {
        evaluations.value(
            "flagstaff_evaluations_total",
            &[
                ("namespace", if flag == "_other" { "_other" } else { "m" }),
                ("flag", flag),
            ],
        )
    };
    let total: usize = evaluations
        .samples
        .iter()
        .filter(|(n, _, _)| n == "flagstaff_evaluations_total")
        .count();
    assert_eq!(total, MAX_EVALUATION_SERIES + 1, "{evaluations:?}");
    assert_eq!(evaluated("f1"), Some(2.0));
    assert_eq!(
        evaluations.value(
            "flagstaff_evaluations_total",
            &[("flag", "f1"), ("variant", "on")]
        ),
        Some(2.0)
    );
    assert_eq!((evaluated("f2"), evaluated("f3")), (Some(1.0), Some(1.0)));
    assert_eq!((evaluated("f4"), evaluated("_other")), (None, Some(1.0)));
    assert_eq!(evaluated("nope"), None);
    assert_eq!(g("flagstaff_watch_streams"), 1.0);
    let sent = get(&m, "flagstaff_watch_events_sent");
    assert!(sent.value("flagstaff_watch_events_sent_total", &[]) >= Some(1.0));
    let dropped = get(&m, "flagstaff_watch_slow_subscribers_dropped");
    assert_eq!(
        dropped.value("flagstaff_watch_slow_subscribers_dropped_total", &[]),
        Some(0.0)
    );
    assert!(g("flagstaff_rocksdb_size_bytes") > 0.0);
    // More than `snapshot_every` entries: every node built a Raft snapshot.
    let built = get(&m, "flagstaff_raft_snapshot_duration_seconds");
    assert!(
        built.value(
            "flagstaff_raft_snapshot_duration_seconds_count",
            &[("phase", "build")]
        ) >= Some(1.0),
        "{built:?}"
    );
    let size = get(&m, "flagstaff_raft_snapshot_size_bytes");
    assert!(size.value("flagstaff_raft_snapshot_size_bytes", &[("phase", "build")]) > Some(0.0));
    drop(watch);

    // The shipped Grafana dashboard asks only for series that exist.
    let seen: std::collections::HashSet<&str> = m
        .iter()
        .flat_map(|(name, f)| {
            std::iter::once(name.as_str()).chain(f.samples.iter().map(|(s, _, _)| s.as_str()))
        })
        .collect();
    let dashboard = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/grafana/flagstaff.json"
    ))
    .unwrap();
    serde_json::from_str::<Value>(&dashboard).expect("the dashboard is JSON");
    let asked: std::collections::BTreeSet<&str> = dashboard
        .match_indices("flagstaff_")
        .map(|(at, _)| {
            let rest = &dashboard[at..];
            let end = rest
                .find(|c: char| !(c.is_ascii_lowercase() || c == '_'))
                .unwrap_or(rest.len());
            &rest[..end]
        })
        .collect();
    assert!(asked.len() >= 15, "{asked:?}");
    let missing: Vec<_> = asked.iter().filter(|n| !seen.contains(*n)).collect();
    assert!(missing.is_empty(), "the dashboard asks for {missing:?}");

    // The follower: its own view, through its metrics-only listener.
    let m = scrape(&c, format!("http://{}/metrics", metrics_addr(follower))).await;
    let g = |name: &str| get(&m, name).value(name, &[]);
    assert_eq!(g("flagstaff_raft_is_leader"), Some(0.0));
    let age = g("flagstaff_staleness_proof_age_seconds").expect("a follower holds a proof");
    assert!((0.0..=2.0).contains(&age), "proof age {age} s");
    let refused = get(&m, "flagstaff_stale_replica_answers");
    assert_eq!(
        refused.value("flagstaff_stale_replica_answers_total", &[]),
        Some(1.0)
    );
    let barrier = get(&m, "flagstaff_read_barrier_duration_seconds");
    assert!(
        barrier.value(
            "flagstaff_read_barrier_duration_seconds_count",
            &[("consistency", "bounded")]
        ) >= Some(2.0),
        "{barrier:?}"
    );
    // The metrics listener serves nothing else.
    let r = c
        .http
        .get(format!("http://{}/v1/cluster", metrics_addr(follower)))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    c.shutdown().await;
}
