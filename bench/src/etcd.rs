//! A 3-member etcd cluster of real processes on loopback, owned by the bench: its own data
//! dirs under a temp dir, its own ports, fsync on (etcd's default; `--unsafe-no-fsync` is never
//! passed), stopped by the PIDs it spawned. Driven through etcd's HTTP/JSON gateway (`/v3/...`),
//! which is served on the client port by the same process.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::{json, Value};
use tokio::process::{Child, Command};
use tokio::time::Instant;

/// Member `i` (1-based) listens on 127.0.0.(70 + i), away from the addresses Flagstaff uses.
pub fn member_ip(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, 70 + i as u8))
}

fn free_port(ip: IpAddr) -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind((ip, 0))?.local_addr()?.port())
}

pub struct Member {
    pub name: String,
    pub client: SocketAddr,
    pub peer: SocketAddr,
    pub dir: PathBuf,
    pub log: PathBuf,
    child: Option<Child>,
}

impl Member {
    pub fn url(&self) -> String {
        format!("http://{}", self.client)
    }
}

pub struct EtcdCluster {
    pub members: Vec<Member>,
    bin: PathBuf,
    initial_cluster: String,
    http: reqwest::Client,
}

/// Base64 (standard alphabet, padded), as the gateway wants for keys and values.
pub fn b64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        out.push(T[(n >> 18) as usize & 63] as char);
        out.push(T[(n >> 12) as usize & 63] as char);
        out.push(if chunk.len() > 1 {
            T[(n >> 6) as usize & 63] as char
        } else {
            '='
        });
        out.push(if chunk.len() > 2 {
            T[n as usize & 63] as char
        } else {
            '='
        });
    }
    out
}

impl EtcdCluster {
    /// Starts 3 members from `bin` under `dir` and waits until they agree on a leader.
    pub async fn start(bin: &Path, dir: &Path) -> anyhow::Result<EtcdCluster> {
        let mut members = Vec::new();
        for i in 1..=3 {
            let ip = member_ip(i);
            members.push(Member {
                name: format!("e{i}"),
                client: SocketAddr::new(ip, free_port(ip)?),
                peer: SocketAddr::new(ip, free_port(ip)?),
                dir: dir.join(format!("e{i}")),
                log: dir.join(format!("e{i}.log")),
                child: None,
            });
        }
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}=http://{}", m.name, m.peer))
            .collect::<Vec<_>>()
            .join(",");
        let mut c = EtcdCluster {
            members,
            bin: bin.to_path_buf(),
            initial_cluster,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()?,
        };
        for i in 0..3 {
            c.spawn(i)?;
        }
        c.wait_leader(Duration::from_secs(30)).await?;
        Ok(c)
    }

    fn spawn(&mut self, i: usize) -> anyhow::Result<()> {
        let m = &self.members[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&m.log)?;
        let child = Command::new(&self.bin)
            .args(["--name", &m.name])
            .arg("--data-dir")
            .arg(&m.dir)
            .args(["--listen-client-urls", &m.url()])
            .args(["--advertise-client-urls", &m.url()])
            .args(["--listen-peer-urls", &format!("http://{}", m.peer)])
            .args([
                "--initial-advertise-peer-urls",
                &format!("http://{}", m.peer),
            ])
            .args(["--initial-cluster", &self.initial_cluster])
            .args(["--initial-cluster-token", "flagstaff-bench"])
            .args(["--initial-cluster-state", "new"])
            .args(["--logger", "zap", "--log-level", "warn"])
            // No environment from the machine's own etcd configuration.
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("spawning {}", self.bin.display()))?;
        self.members[i].child = Some(child);
        Ok(())
    }

    pub fn urls(&self) -> Vec<String> {
        self.members.iter().map(Member::url).collect()
    }

    pub fn pid(&self, i: usize) -> Option<i32> {
        self.members[i]
            .child
            .as_ref()
            .and_then(|c| c.id())
            .map(|p| p as i32)
    }

    pub fn running(&self, i: usize) -> bool {
        self.members[i].child.is_some()
    }

    /// The highest Raft term any running member reports (`None` if none answers).
    pub async fn term(&self) -> Option<u64> {
        let mut best = None;
        for i in (0..self.members.len()).filter(|i| self.running(*i)) {
            let Ok(v) = self.status_json(i).await else {
                continue;
            };
            // The JSON gateway writes 64-bit integers as strings.
            let term = &v["header"]["raft_term"];
            let term = term
                .as_u64()
                .or_else(|| term.as_str().and_then(|s| s.parse().ok()));
            best = best.max(term);
        }
        best
    }

    /// Member `i`'s `/v3/maintenance/status` answer.
    async fn status_json(&self, i: usize) -> anyhow::Result<Value> {
        Ok(self
            .http
            .post(format!("{}/v3/maintenance/status", self.members[i].url()))
            .timeout(Duration::from_millis(800))
            .json(&json!({}))
            .send()
            .await?
            .json()
            .await?)
    }

    /// `(member_id, leader_id)` as member `i` reports them.
    async fn status(&self, i: usize) -> anyhow::Result<(String, String)> {
        let v = self.status_json(i).await?;
        let me = v["header"]["member_id"].as_str().unwrap_or("").to_string();
        let leader = v["leader"].as_str().unwrap_or("").to_string();
        if me.is_empty() || leader.is_empty() || leader == "0" {
            bail!("member {i}: no leader in {v}");
        }
        Ok((me, leader))
    }

    /// Index (0-based) of the leader every running member agrees on, within `limit`.
    pub async fn wait_leader(&self, limit: Duration) -> anyhow::Result<usize> {
        let deadline = Instant::now() + limit;
        let mut last = String::new();
        while Instant::now() < deadline {
            let mut ids = Vec::new();
            let mut leaders = Vec::new();
            let mut ok = true;
            for i in 0..self.members.len() {
                if !self.running(i) {
                    ids.push(None);
                    continue;
                }
                match self.status(i).await {
                    Ok((me, l)) => {
                        ids.push(Some(me));
                        leaders.push(l);
                    }
                    Err(e) => {
                        last = e.to_string();
                        ok = false;
                        break;
                    }
                }
            }
            if ok && !leaders.is_empty() && leaders.iter().all(|l| *l == leaders[0]) {
                if let Some(pos) = ids.iter().position(|m| m.as_deref() == Some(&leaders[0])) {
                    return Ok(pos);
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!("etcd: no agreed leader within {limit:?} ({last})")
    }

    /// `kill -9` of member `i` by its PID; waits until it is gone.
    pub async fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            let _ = child.start_kill();
            let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
        }
    }

    /// Restarts killed member `i` from its data dir (etcd ignores the initial-cluster flags
    /// when the dir holds data).
    pub async fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        if self.running(i) {
            return Ok(());
        }
        self.spawn(i)?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if self.status(i).await.is_ok() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!(
            "etcd member {i} did not come back; see {}",
            self.members[i].log.display()
        )
    }

    /// Kills every member (the data dirs stay until the temp dir goes).
    pub async fn stop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::b64;

    #[test]
    fn base64_matches_rfc_4648_vectors() {
        let cases = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ];
        for (raw, enc) in cases {
            assert_eq!(b64(raw.as_bytes()), enc, "{raw:?}");
        }
    }
}
