//! Prints the variant `flagstaff-client` assigns each of N users for one flag, as one JSON object
//! (`{"user-0": "red", …}`), so other SDKs' assignments can be compared with it. The flagd
//! provider tests (`tests/flagd-providers/run.sh`) run it beside the stock providers.
//!
//! ```sh
//! FLAGSTAFF_ENDPOINTS=https://127.0.0.1:7701 FLAGSTAFF_CA_FILE=ca.pem FLAGSTAFF_NAMESPACE=web \
//! FLAGSTAFF_SDK_KEY=fsk_… FLAGSTAFF_FLAG=split FLAGSTAFF_USERS=10000 \
//!   cargo run --example assign_users
//! ```
//!
//! Users are `user-0` … `user-{N-1}` (at most 1,000,000), each the evaluation's targeting key.
//! Exits non-zero when the client has no fresh data within 10 seconds.

use std::io::Write;
use std::time::Duration;

use flagstaff_client::{context, Client};
use serde_json::{Map, Value};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let env = |k: &str| std::env::var(k).map_err(|_| format!("{k} is not set"));
    let users: usize = env("FLAGSTAFF_USERS")?.parse()?;
    let users = users.min(1_000_000);
    let flag = env("FLAGSTAFF_FLAG")?;
    let endpoints = env("FLAGSTAFF_ENDPOINTS")?;
    let mut builder = Client::builder(env("FLAGSTAFF_NAMESPACE")?, env("FLAGSTAFF_SDK_KEY")?)
        .endpoints(endpoints.split(',').map(str::trim))
        .push(false);
    if let Ok(ca) = env("FLAGSTAFF_CA_FILE") {
        builder = builder.ca_file(ca);
    }
    let client = builder.build()?;
    client
        .wait_ready_blocking(Duration::from_secs(10))
        .map_err(|s| format!("no fresh data: {s}"))?;
    let mut out = Map::new();
    for i in 0..users {
        let key = format!("user-{i}");
        let variant = client.string(&flag, &context().with_targeting_key(&key), "");
        out.insert(key, Value::String(variant));
    }
    client.close();
    let mut stdout = std::io::stdout().lock();
    serde_json::to_writer(&mut stdout, &Value::Object(out))?;
    stdout.write_all(b"\n")?;
    Ok(())
}
