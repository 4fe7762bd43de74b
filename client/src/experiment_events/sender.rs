//! The sender task: every `events_interval` it moves the aggregates into the backlog as
//! batches and posts the backlog, oldest first, until it is empty or a request fails.
//!
//! - 2xx: the node has recorded the batch durably; it leaves the backlog.
//! - 4xx other than 408 and 429: the node will never take this body; it is dropped (its
//!   events counted as dropped) and the answer logged.
//! - anything else (network error, timeout, 408, 429, 5xx, 3xx): the batch stays, the shared
//!   endpoint rotation moves to the next node, and the backlog is retried at the next tick with
//!   the same batch ids.
//!
//! Stopping (`Client::close`, or the last clone dropped) ends the wait and any request in
//! flight (its batch stays queued), then makes one last attempt bounded by [`FINAL_FLUSH`].

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use reqwest::header::CONTENT_TYPE;
use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior};

use super::backlog::Backlog;
use super::batch::{cut, MAX_ENTRIES};
use super::Recorder;
use crate::shared::Shared;
use crate::sync_loop::{read_limited, urlencode, MAX_ERROR_BODY};

/// Bound on the last flush when the client stops.
pub(crate) const FINAL_FLUSH: Duration = Duration::from_secs(1);

/// Bytes of a refusing answer's body written to the log.
const LOGGED_BODY: usize = 512;

enum Outcome {
    Accepted,
    /// For good: the batch is dropped.
    Refused {
        status: u16,
        body: String,
    },
    /// For now: the batch is retried at the next tick.
    Failed(String),
}

/// Runs until `stop` turns true (or its sender is gone), then flushes once. Returns at once
/// when events are disabled (`events_interval` zero, or no endpoints).
pub(crate) async fn run(
    shared: Arc<Shared>,
    http: reqwest::Client,
    mut stop: watch::Receiver<bool>,
) {
    let Some(recorder) = shared.events.as_ref() else {
        return;
    };
    let every = shared.cfg.events_interval;
    let mut backlog = Backlog::new(shared.cfg.max_event_batches);
    let start = Instant::now()
        .checked_add(every)
        .unwrap_or_else(Instant::now);
    let mut ticks = tokio::time::interval_at(start, every);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = stopped(&mut stop) => break,
        }
        collect(&shared, recorder, &mut backlog);
        // A request cut short leaves its batch queued: the final flush sends it again.
        tokio::select! {
            _ = send(&shared, &http, &mut backlog) => {}
            _ = stopped(&mut stop) => break,
        }
    }
    collect(&shared, recorder, &mut backlog);
    let _ = tokio::time::timeout(FINAL_FLUSH, send(&shared, &http, &mut backlog)).await;
    gauge(&shared, &backlog);
}

async fn stopped(stop: &mut watch::Receiver<bool>) {
    while !*stop.borrow_and_update() {
        if stop.changed().await.is_err() {
            return;
        }
    }
}

fn gauge(shared: &Shared, backlog: &Backlog) {
    shared
        .counters
        .events_backlog_batches
        .store(backlog.len() as u64, Ordering::Relaxed);
}

/// The interval's aggregates into the backlog.
fn collect(shared: &Shared, recorder: &Recorder, backlog: &mut Backlog) {
    let mut batches = cut(recorder.take(), MAX_ENTRIES);
    // The flags evaluated since the last interval ride with the first batch (or alone).
    let evaluated: Vec<String> = shared
        .data
        .load()
        .as_ref()
        .map(|d| {
            d.flags
                .keys()
                .filter(|k| d.flags.get(k).is_some_and(|f| f.take_evaluated()))
                .take(super::batch::MAX_EVALUATED)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    if !evaluated.is_empty() {
        if batches.is_empty() {
            batches.push(super::batch::Batch::new(Vec::new(), Vec::new()));
        }
        batches[0].evaluated = evaluated;
    }
    let dropped = backlog.push(batches);
    if dropped > 0 {
        shared
            .counters
            .events_dropped
            .fetch_add(dropped, Ordering::Relaxed);
        tracing::warn!(
            dropped,
            "flagstaff experiment events dropped: the backlog of unsent batches is full"
        );
    }
    gauge(shared, backlog);
}

/// Posts the backlog oldest first until it is empty or a request fails.
async fn send(shared: &Shared, http: &reqwest::Client, backlog: &mut Backlog) {
    // At most one batch of drops alone per round: a node refusing every body must not keep
    // the round going.
    let mut carrier_formed = false;
    loop {
        if backlog.is_empty() && backlog.unreported() > 0 && !carrier_formed {
            // Drops to report and nothing else to carry them.
            carrier_formed = true;
            backlog.push(Vec::new());
        }
        let Some(batch) = backlog.front() else {
            break;
        };
        let Some((idx, ep)) = shared.endpoints.current() else {
            break;
        };
        let outcome = match serde_json::to_vec(batch) {
            Ok(body) => post(shared, http, ep, body).await,
            // Every number in a batch is finite; should serializing ever fail, retrying the
            // same body cannot help.
            Err(e) => Outcome::Refused {
                status: 0,
                body: format!("cannot serialize the batch: {e}"),
            },
        };
        match outcome {
            Outcome::Accepted => {
                backlog.accepted();
                shared
                    .counters
                    .events_sent_batches
                    .fetch_add(1, Ordering::Relaxed);
            }
            Outcome::Refused { status, body } => {
                let dropped = backlog.refused();
                shared
                    .counters
                    .events_dropped
                    .fetch_add(dropped, Ordering::Relaxed);
                tracing::warn!(
                    endpoint = ep,
                    status,
                    dropped,
                    "flagstaff experiment events refused, batch dropped: {body}"
                );
            }
            Outcome::Failed(why) => {
                tracing::debug!(endpoint = ep, "flagstaff experiment events not sent: {why}");
                shared.endpoints.advance_from(idx);
                break;
            }
        }
        gauge(shared, backlog);
    }
    gauge(shared, backlog);
}

async fn post(shared: &Shared, http: &reqwest::Client, ep: &str, body: Vec<u8>) -> Outcome {
    let url = format!(
        "{ep}/v1/namespaces/{}/events",
        urlencode(&shared.cfg.namespace)
    );
    let sent = http
        .post(&url)
        .bearer_auth(&shared.cfg.sdk_key)
        .header(CONTENT_TYPE, "application/json")
        // Covers the answer's body too.
        .timeout(shared.cfg.request_timeout)
        .body(body)
        .send()
        .await;
    let resp = match sent {
        Ok(r) => r,
        Err(e) => return Outcome::Failed(e.to_string()),
    };
    let status = resp.status();
    if status.is_success() {
        return Outcome::Accepted;
    }
    if status.is_client_error() && !matches!(status.as_u16(), 408 | 429) {
        let body = read_limited(resp, MAX_ERROR_BODY).await.unwrap_or_default();
        let cut = &body[..body.len().min(LOGGED_BODY)];
        let mut text = String::from_utf8_lossy(cut).into_owned();
        if body.len() > LOGGED_BODY {
            text.push('…');
        }
        return Outcome::Refused {
            status: status.as_u16(),
            body: text,
        };
    }
    Outcome::Failed(format!("HTTP {status}"))
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::Mutex;

    use axum::extract::State;
    use axum::http::{HeaderMap, StatusCode};
    use axum::routing::post;
    use axum::Router;
    use serde_json::{json, Value};
    use tokio::sync::{mpsc, oneshot};

    use crate::{context, Client};

    /// A node's events route: records each request, answers the scripted statuses (then 200).
    struct Node {
        answers: Mutex<VecDeque<u16>>,
        /// The first request waits for this before answering.
        hold_first: tokio::sync::Mutex<Option<oneshot::Receiver<()>>>,
        seen: mpsc::UnboundedSender<(Option<String>, Value)>,
    }

    async fn events(
        State(n): State<std::sync::Arc<Node>>,
        h: HeaderMap,
        body: String,
    ) -> (StatusCode, String) {
        let auth = h
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let _ = n
            .seen
            .send((auth, serde_json::from_str(&body).unwrap_or(Value::Null)));
        let hold = n.hold_first.lock().await.take();
        if let Some(hold) = hold {
            let _ = hold.await;
        }
        let status = n.answers.lock().unwrap().pop_front().unwrap_or(200);
        (
            StatusCode::from_u16(status).unwrap(),
            r#"{"error":{"code":"BAD_REQUEST","message":"scripted"}}"#.into(),
        )
    }

    struct Scripted {
        url: String,
        seen: mpsc::UnboundedReceiver<(Option<String>, Value)>,
    }

    impl Scripted {
        /// The next request's body (and `Authorization`), waited for at most 10 s.
        async fn next(&mut self) -> (Option<String>, Value) {
            tokio::time::timeout(std::time::Duration::from_secs(10), self.seen.recv())
                .await
                .expect("a request within 10 s")
                .expect("the node is running")
        }
    }

    async fn node(answers: &[u16], hold: Option<oneshot::Receiver<()>>) -> Scripted {
        let (tx, rx) = mpsc::unbounded_channel();
        let state = std::sync::Arc::new(Node {
            answers: Mutex::new(answers.iter().copied().collect()),
            hold_first: tokio::sync::Mutex::new(hold),
            seen: tx,
        });
        let app = Router::new()
            .route("/v1/namespaces/{ns}/events", post(events))
            .with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Scripted {
            url: format!("http://{addr}"),
            seen: rx,
        }
    }

    fn doc() -> Value {
        let exp = json!({"control": "a", "metrics": ["checkout_completed", "signup"]});
        json!({"flags": {
            "checkout": {"state": "ENABLED", "variants": {"a": "A", "b": "B"}, "defaultVariant": "a",
                         "targeting": {"if": [{"==": [{"var": "targetingKey"}, "u-b"]}, "b", "a"]},
                         "experiment": exp},
            "paused": {"state": "DISABLED", "variants": {"a": 1, "b": 2}, "defaultVariant": "a",
                       "experiment": exp},
            "plain": {"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "on"}
        }})
    }

    fn client(url: &str, interval_ms: u64, max_batches: usize) -> Client {
        Client::builder("shop", "sdk-key")
            .endpoint(url)
            .bootstrap_document(doc())
            .events_interval(std::time::Duration::from_millis(interval_ms))
            .max_event_batches(max_batches)
            // The scripted node has no snapshot route: keep the sync loop's retries rare.
            .backoff(
                std::time::Duration::from_secs(5),
                std::time::Duration::from_secs(5),
            )
            .build()
            .unwrap()
    }

    /// Waits (at most 10 s) for a condition on the client's metrics.
    async fn until(c: &Client, what: &str, f: impl Fn(&crate::Metrics) -> bool) {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        while !f(&c.metrics()) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{what}: {:?}",
                c.metrics()
            );
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }

    fn user(k: &str) -> flagstaff_flags::Context {
        context().with_targeting_key(k)
    }

    // The tests run on a current-thread runtime: the client's tasks run only while a test
    // awaits, so what a test records between two awaits lands in one batch.

    #[tokio::test]
    async fn a_failed_batch_is_retried_with_the_same_id_and_counted_once() {
        let mut node = node(&[503], None).await;
        let c = client(&node.url, 50, 120);
        for u in ["u1", "u2", "u1"] {
            assert_eq!(c.string("checkout", &user(u), "x"), "A");
        }
        assert_eq!(c.string_details("checkout", &user("u-b"), "x").value, "B");
        assert!(c.bool("plain", &user("u1"), false));
        c.track("checkout_completed", &user("u-b"), Some(10.0));
        c.track("checkout_completed", &user("u-b"), Some(f64::INFINITY));
        c.track("not an event", &user("u-b"), None);
        c.track("refund", &user("u-b"), None); // no experiment counts it

        let (auth, first) = node.next().await;
        assert_eq!(auth.as_deref(), Some("Bearer sdk-key"));
        let id = first["batch"].as_str().unwrap().to_string();
        assert!(
            id.len() == 32
                && id
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
        let exposures = first["exposures"].as_array().unwrap();
        let arm = |v: &str| {
            exposures
                .iter()
                .find(|e| e["variant"] == v)
                .unwrap()
                .clone()
        };
        assert_eq!(exposures.len(), 2, "{first}");
        assert_eq!(
            (arm("a")["flag"].clone(), arm("a")["count"].clone()),
            (json!("checkout"), json!(3))
        );
        assert_eq!(arm("a")["users"].as_array().unwrap().len(), 2, "u1 and u2");
        assert_eq!(arm("b")["count"], 1);
        assert_eq!(
            first["conversions"],
            json!([{"flag": "checkout", "variant": "b", "metric": "checkout_completed", "count": 2,
                    "users": arm("b")["users"], "valueCount": 1, "valueSum": 10.0,
                    "valueSumSquares": 100.0}])
        );
        assert_eq!(first["dropped"], 0);

        // 503: the same body again, same id.
        let (_, again) = node.next().await;
        assert_eq!(again, first);
        until(&c, "the retry accepted", |m| m.events_sent_batches == 1).await;
        assert_eq!(c.metrics().events_backlog_batches, 0);

        // Counted once: the next batch holds only what came after.
        c.i64("paused", &user("u1"), 0); // DISABLED: no exposure
        c.bool("checkout", &user("u1"), false); // a type mismatch: no exposure
        c.string("checkout", &user("u3"), "x");
        let (_, next) = node.next().await;
        assert_ne!(next["batch"], first["batch"]);
        assert_eq!(next["exposures"].as_array().unwrap().len(), 1, "{next}");
        assert_eq!(next["exposures"][0]["count"], 1);
        assert_eq!(next["conversions"], json!([]));
        let m = c.metrics();
        assert_eq!((m.events_invalid_names, m.events_dropped), (1, 0));
        c.close();
    }

    #[tokio::test]
    async fn a_full_backlog_drops_the_oldest_and_a_later_batch_reports_it() {
        let (release, hold) = oneshot::channel();
        let mut node = node(&[503], Some(hold)).await;
        let c = client(&node.url, 20, 1);
        c.string("checkout", &user("u1"), "x");
        c.string("checkout", &user("u2"), "x");
        let (_, oldest) = node.next().await;
        assert_eq!(oldest["exposures"][0]["count"], 2);
        // While that request waits for its 503, one more exposure: the next batch.
        c.string("checkout", &user("u3"), "x");
        release.send(()).unwrap();
        // The backlog holds one batch: the new one pushes the failed one out.
        let (_, newer) = node.next().await;
        assert_ne!(newer["batch"], oldest["batch"]);
        assert_eq!(
            (
                newer["exposures"][0]["count"].clone(),
                newer["dropped"].clone()
            ),
            (json!(1), json!(0))
        );
        // Accepted; the drop is reported by a batch of its own at once.
        let (_, report) = node.next().await;
        assert_eq!(report["exposures"], json!([]));
        assert_eq!(report["conversions"], json!([]));
        assert_eq!(report["dropped"], 2);
        until(&c, "both accepted", |m| m.events_sent_batches == 2).await;
        assert_eq!(c.metrics().events_dropped, 2);
        c.close();
    }

    #[tokio::test]
    async fn a_bad_request_drops_the_batch_and_the_next_one_reports_it() {
        let mut node = node(&[400], None).await;
        let c = client(&node.url, 20, 120);
        for u in ["u1", "u2", "u3"] {
            c.string("checkout", &user(u), "x");
        }
        let (_, refused) = node.next().await;
        assert_eq!(refused["exposures"][0]["count"], 3);
        let (_, report) = node.next().await;
        assert_ne!(
            report["batch"], refused["batch"],
            "a refused body is never sent again"
        );
        assert_eq!(
            (report["exposures"].clone(), report["dropped"].clone()),
            (json!([]), json!(3))
        );
        until(&c, "the report accepted", |m| m.events_sent_batches == 1).await;
        assert_eq!(c.metrics().events_dropped, 3);
        c.close();
    }

    #[tokio::test]
    async fn close_sends_what_is_left_at_once() {
        let mut node = node(&[], None).await;
        let c = client(&node.url, 3_600_000, 120);
        c.track("signup", &user("u1"), None);
        c.close();
        let (_, last) = node.next().await;
        assert_eq!(last["conversions"][0]["metric"], "signup");
        assert_eq!(last["conversions"][0]["variant"], "a");
        assert_eq!(last["conversions"][0]["valueCount"], 0);
    }

    #[tokio::test]
    async fn an_interval_of_zero_counts_nothing() {
        let c = Client::builder("shop", "sdk-key")
            .endpoint("http://127.0.0.1:9")
            .bootstrap_document(doc())
            .events_interval(std::time::Duration::ZERO)
            .build()
            .unwrap();
        assert!(c.shared().events.is_none());
        assert_eq!(c.string("checkout", &user("u1"), "x"), "A");
        c.track("signup", &user("u1"), None);
        c.close();
    }
}
