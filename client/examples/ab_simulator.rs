//! Simulated users of an A/B test, in an application that embeds `flagstaff-client`: each user
//! evaluates the experiment flag, and converts with a known rate per variant (a fixed pattern of
//! user numbers, so the rates are exact), which the application reports with `track`. The SDK's
//! experiment test runs two of these as separate processes.
//!
//! ```sh
//! FLAGSTAFF_ENDPOINTS=http://127.0.0.1:7701 FLAGSTAFF_NAMESPACE=shop FLAGSTAFF_SDK_KEY=fsk_… \
//! FLAGSTAFF_FLAG=checkout FLAGSTAFF_EVENT=purchase FLAGSTAFF_USERS=0-1000 \
//! FLAGSTAFF_RATES=control=10,treatment=25 cargo run --example ab_simulator
//! ```
//!
//! Protocol on standard output, one JSON line each: `{"half": …}` once the first half of the
//! users is done (then it waits for a line on standard input before the second half), then
//! `{"done": {"exposed": {variant: n}, "converted": {variant: n}}}`. It keeps running (the SDK
//! keeps sending) until standard input is closed, then closes the client and exits; it gives up
//! by itself after 300 s.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::time::{Duration, Instant};

use flagstaff_client::{context, Client};
use serde_json::json;

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is required"))
}

/// Whether user `i` converts at `percent` percent: exactly `percent` of every 100 users.
fn converts(i: u64, percent: u64) -> bool {
    (i * 61) % 100 < percent
}

fn main() {
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let _guard = runtime.enter();
    let endpoints: Vec<String> = env("FLAGSTAFF_ENDPOINTS")
        .split(',')
        .map(str::to_string)
        .collect();
    let flag = env("FLAGSTAFF_FLAG");
    let event = env("FLAGSTAFF_EVENT");
    let (from, to) = env("FLAGSTAFF_USERS")
        .split_once('-')
        .map(|(a, b)| (a.parse::<u64>().unwrap(), b.parse::<u64>().unwrap()))
        .expect("FLAGSTAFF_USERS=from-to");
    let rates: BTreeMap<String, u64> = env("FLAGSTAFF_RATES")
        .split(',')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.parse().unwrap()))
        .collect();
    let extra: Vec<String> = std::env::var("FLAGSTAFF_ALSO_EVALUATE")
        .unwrap_or_default()
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    let client = Client::builder(env("FLAGSTAFF_NAMESPACE"), env("FLAGSTAFF_SDK_KEY"))
        .endpoints(endpoints)
        .events_interval(Duration::from_millis(300))
        .request_timeout(Duration::from_secs(3))
        .build()
        .expect("client");
    client
        .wait_ready_blocking(Duration::from_secs(30))
        .expect("the client gets the flags");
    for key in &extra {
        let _ = client.bool(key, &context(), false);
    }

    let mut stdin = std::io::stdin().lock();
    let mut exposed = BTreeMap::<String, u64>::new();
    let mut converted = BTreeMap::<String, u64>::new();
    let half = from + (to - from) / 2;
    for i in from..to {
        if i == half {
            println!("{}", json!({"half": i}));
            let mut go = String::new();
            if stdin.read_line(&mut go).unwrap_or(0) == 0 {
                return;
            }
        }
        let ctx = context().with_targeting_key(format!("user-{i}"));
        let d = client.string_details(&flag, &ctx, "none");
        let Some(variant) = d.variant else { continue };
        *exposed.entry(variant.clone()).or_default() += 1;
        if converts(i, rates.get(&variant).copied().unwrap_or(0)) {
            *converted.entry(variant.clone()).or_default() += 1;
            client.track(&event, &ctx, Some(30.0));
        }
    }
    println!(
        "{}",
        json!({"done": {"exposed": exposed, "converted": converted}})
    );
    drop(stdin);
    // Keep sending until told to stop (standard input closed), at most 300 s.
    let stop = Instant::now() + Duration::from_secs(300);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        while std::io::stdin().lock().read_line(&mut line).unwrap_or(0) > 0 {
            line.clear();
        }
        let _ = tx.send(());
    });
    let _ = rx.recv_timeout(stop.saturating_duration_since(Instant::now()));
    client.close();
}
