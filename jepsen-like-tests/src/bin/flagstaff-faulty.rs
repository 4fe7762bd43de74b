//! `flagstaff-faulty serve …`: a node built with the `fault-injection` feature (debug builds
//! only), taking the subset of `flagstaff serve`'s options the harness uses. The breaks are
//! switched on by `FLAGSTAFF_FAULT_*` environment variables.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use clap::Parser;
use flagstaff_node::NodeConfig;

#[derive(Parser)]
enum Cli {
    Serve(Serve),
}

#[derive(clap::Args)]
struct Serve {
    #[arg(long)]
    id: u64,
    #[arg(long)]
    data_dir: PathBuf,
    #[arg(long)]
    listen_client: SocketAddr,
    #[arg(long)]
    listen_peer: SocketAddr,
    #[arg(long)]
    advertise_peer: Option<String>,
    #[arg(long)]
    cluster_id: Option<String>,
    #[arg(long)]
    peer_source_ip: Option<IpAddr>,
    #[arg(long, env = "FLAGSTAFF_CLUSTER_SECRET", hide_env_values = true)]
    cluster_secret: String,
    #[arg(long, env = "FLAGSTAFF_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: String,
    #[arg(long, default_value_t = 2000)]
    max_staleness_ms: u64,
    #[arg(long, default_value_t = 10_000)]
    snapshot_every: u64,
    #[arg(long, default_value_t = 10_000)]
    logs_behind_snapshot: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FLAGSTAFF_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let Cli::Serve(a) = Cli::parse();
    let api = format!("http://{}", a.listen_client);
    let peer = a
        .advertise_peer
        .unwrap_or_else(|| format!("http://{}", a.listen_peer));
    let mut c = NodeConfig::new(a.id, a.data_dir, api, peer);
    c.cluster_id = a.cluster_id;
    c.cluster_secret = a.cluster_secret;
    c.admin_tokens = vec![("admin".into(), a.admin_token)];
    c.peer_source_ip = a.peer_source_ip;
    c.max_staleness = std::time::Duration::from_millis(a.max_staleness_ms);
    c.snapshot_every = a.snapshot_every;
    c.logs_behind_snapshot = a.logs_behind_snapshot;
    let client = flagstaff_node::listener::bind(a.listen_client)?;
    let peer = flagstaff_node::listener::bind(a.listen_peer)?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    flagstaff_node::run(c, client, peer, async move {
        term.recv().await;
    })
    .await?;
    Ok(())
}
