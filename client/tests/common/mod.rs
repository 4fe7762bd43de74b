#![allow(dead_code)]

pub mod cluster;
pub mod fake_node;
pub mod freeze_proxy;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use flagstaff_client::Event;
use serde_json::{json, Value};

/// Polls `cond` until it holds or `within` passes (then panics with `what`).
pub async fn wait_until(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + within;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {within:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub fn bool_flag(default: &str) -> Value {
    json!({"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": default})
}

/// Records every event a client emits.
#[derive(Clone, Default)]
pub struct Recorder(pub Arc<Mutex<Vec<Event>>>);

impl Recorder {
    pub fn listener(&self) -> impl Fn(&Event) + Send + Sync + 'static {
        let log = self.0.clone();
        move |e| log.lock().unwrap().push(e.clone())
    }

    pub fn any(&self, f: impl Fn(&Event) -> bool) -> bool {
        self.0.lock().unwrap().iter().any(f)
    }

    pub fn all(&self) -> Vec<Event> {
        self.0.lock().unwrap().clone()
    }
}

/// A local address nothing listens on.
pub fn dead_endpoint() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    format!("http://{addr}")
}
