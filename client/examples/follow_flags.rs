//! A small application: reads a feature flag and a runtime-config object, and prints them again
//! whenever they change.
//!
//! ```sh
//! FLAGSTAFF_ENDPOINTS=http://127.0.0.1:7701,http://127.0.0.1:7702,http://127.0.0.1:7703 \
//! FLAGSTAFF_NAMESPACE=checkout FLAGSTAFF_SDK_KEY=fsk_… \
//!   cargo run -p flagstaff-client --example follow_flags
//! ```

use std::time::Duration;

use flagstaff_client::{context, Client, Event};
use serde_json::json;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let env = |k: &str, d: &str| std::env::var(k).unwrap_or_else(|_| d.to_string());
    let endpoints = env("FLAGSTAFF_ENDPOINTS", "http://127.0.0.1:7701");
    let client = Client::builder(
        env("FLAGSTAFF_NAMESPACE", "checkout"),
        env("FLAGSTAFF_SDK_KEY", ""),
    )
    .endpoints(endpoints.split(',').map(str::trim))
    .lkg_file(env("FLAGSTAFF_LKG_FILE", "follow_flags.lkg"))
    .on_event(|e| match e {
        Event::ConfigurationChanged { .. } => {}
        other => eprintln!("event: {other:?}"),
    })
    .build()?;
    if let Err(status) = client.wait_ready(Duration::from_secs(2)).await {
        eprintln!(
            "not fresh yet ({status}); serving {} data meanwhile",
            client.source()
        );
    }

    let ctx = context().with_targeting_key("user-42");
    let limits_default = json!({"max_items": 50});
    let show = {
        let client = client.clone();
        let ctx = ctx.clone();
        let limits_default = limits_default.clone();
        move || {
            let on = client.bool_details("new-checkout", &ctx, false);
            let limits = client.object("checkout-limits", &ctx, &limits_default);
            println!(
                "new-checkout={} ({}, source {}, revision {:?}, stale {}) checkout-limits={limits}",
                on.value, on.reason, on.source, on.revision, on.stale
            );
        }
    };
    show();
    let on_change = show.clone();
    client.on_change(move |set| {
        println!(
            "revision {:?}: {:?} changed",
            set.new_revision,
            set.flags.iter().map(|f| &f.key).collect::<Vec<_>>()
        );
        on_change();
    });
    tokio::signal::ctrl_c().await?;
    Ok(())
}
