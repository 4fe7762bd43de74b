//! The files in `deploy/` as an operator uses them: the systemd unit passes `systemd-analyze
//! verify`, and a node runs from the shipped `flagstaff.toml` (with this machine's addresses),
//! logs JSON, serves `/metrics` on its metrics listener, lets the command line override the
//! file, and refuses a file with an unknown key; its commented TLS keys, uncommented, serve
//! HTTPS with certificates from `flagstaff tls`.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn exe() -> &'static str {
    env!("CARGO_BIN_EXE_flagstaff")
}

fn deploy(file: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(file);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn the_systemd_unit_verifies() {
    let dir = tempfile::tempdir().unwrap();
    // As installed, with the binary where this build put it.
    let unit = deploy("flagstaff.service").replace("/usr/bin/flagstaff", exe());
    let path = dir.path().join("flagstaff.service");
    std::fs::write(&path, unit).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze (bash scripts/setup.sh installs systemd)");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // It only warns about unknown keys and bad values: any output is a finding.
    assert!(out.status.success() && said.trim().is_empty(), "{said}");
}

#[test]
fn a_node_runs_from_the_shipped_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let (in_file, on_cli, peer, metrics) = (free_port(), free_port(), free_port(), free_port());
    let config = deploy("flagstaff.toml")
        .replace(
            "/var/lib/flagstaff",
            dir.path().join("data").to_str().unwrap(),
        )
        .replace("0.0.0.0:7701", &format!("127.0.0.1:{in_file}"))
        .replace(
            "http://10.0.0.1:7701",
            &format!("http://127.0.0.1:{on_cli}"),
        )
        .replace("10.0.0.1:7801", &format!("127.0.0.1:{peer}"))
        .replace("10.0.0.1:9101", &format!("127.0.0.1:{metrics}"));
    assert!(!config.contains("10.0.0.1"), "{config}");
    let path = dir.path().join("flagstaff.toml");
    std::fs::write(&path, &config).unwrap();
    let mut node = Command::new(exe())
        .args(["serve", "--config", path.to_str().unwrap()])
        .args(["--listen-client", &format!("127.0.0.1:{on_cli}")])
        .env("FLAGSTAFF_CLUSTER_SECRET", "deploy-test-secret")
        .env("FLAGSTAFF_ADMIN_TOKEN", "deploy-test-token")
        .env_remove("FLAGSTAFF_LOG_FORMAT")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = node.stderr.take().unwrap();
    let (tx, log) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok).take(3) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let get = |port: u16, path: &str| {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        use std::io::{Read, Write};
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .ok()?;
        let mut answer = String::new();
        s.read_to_string(&mut answer).ok()?;
        Some(answer)
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let health = loop {
        if let Some(a) = get(on_cli, "/healthz") {
            break a;
        }
        assert!(Instant::now() < deadline, "the node never served /healthz");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    // The command line won over the file's listen-client.
    assert!(get(in_file, "/healthz").is_none());
    let scrape = get(metrics, "/metrics").expect("the metrics listener from the file");
    assert!(scrape.contains("flagstaff_raft_term"), "{scrape}");
    // The first log line may come after the listeners answer: wait for it before the kill.
    let first = log.recv_timeout(Duration::from_secs(30));
    // SAFETY: kill(2) on the child this test started and still owns.
    unsafe {
        libc::kill(node.id() as i32, libc::SIGKILL);
    }
    let _ = node.wait();
    let lines: Vec<String> = first.into_iter().chain(log.try_iter()).collect();
    assert!(!lines.is_empty(), "the node logged nothing");
    for line in lines {
        let v: serde_json::Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
        assert!(v["level"].is_string() && v["fields"].is_object(), "{line}");
    }

    // A key that is no option is refused, naming it.
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "listen-clinet = \"127.0.0.1:1\"\n").unwrap();
    let out = Command::new(exe())
        .args(["serve", "--config", bad.to_str().unwrap()])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{said}");
    assert!(said.contains("listen-clinet"), "{said}");
}

#[tokio::test]
async fn the_config_files_tls_keys_serve_https_with_certificates_from_flagstaff_tls() {
    let dir = tempfile::tempdir().unwrap();
    let tls = dir.path().join("tls");
    for args in [
        vec!["tls", "ca", "--dir"],
        vec![
            "tls",
            "cert",
            "--name",
            "node",
            "--host",
            "127.0.0.1",
            "--dir",
        ],
    ] {
        let out = Command::new(exe()).args(args).arg(&tls).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let (client, peer, metrics) = (free_port(), free_port(), free_port());
    let mut config = String::new();
    for line in deploy("flagstaff.toml").lines() {
        // The five TLS keys, uncommented as the file says.
        let line = match line.strip_prefix("# ") {
            Some(key) if key.contains("tls") && key.contains(" = ") => key,
            _ => line,
        };
        config.push_str(line);
        config.push('\n');
    }
    let config = config
        .replace("/etc/flagstaff/tls", tls.to_str().unwrap())
        .replace(
            "/var/lib/flagstaff",
            dir.path().join("data").to_str().unwrap(),
        )
        .replace("0.0.0.0:7701", &format!("127.0.0.1:{client}"))
        .replace(
            "http://10.0.0.1:7701",
            &format!("https://127.0.0.1:{client}"),
        )
        .replace("http://10.0.0.1:7801", &format!("https://127.0.0.1:{peer}"))
        .replace("10.0.0.1:7801", &format!("127.0.0.1:{peer}"))
        .replace("10.0.0.1:9101", &format!("127.0.0.1:{metrics}"));
    let tls_keys = config
        .lines()
        .filter(|l| !l.starts_with('#') && l.contains("tls"))
        .count();
    assert_eq!(tls_keys, 5, "{config}");
    let path = dir.path().join("flagstaff.toml");
    std::fs::write(&path, &config).unwrap();
    let mut node = Command::new(exe())
        .args(["serve", "--config", path.to_str().unwrap()])
        .env("FLAGSTAFF_CLUSTER_SECRET", "deploy-test-secret")
        .env("FLAGSTAFF_ADMIN_TOKEN", "deploy-test-token")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut https = reqwest::Client::builder().timeout(Duration::from_secs(5));
    let ca = std::fs::read(tls.join("ca.pem")).unwrap();
    for cert in reqwest::Certificate::from_pem_bundle(&ca).unwrap() {
        https = https.add_root_certificate(cert);
    }
    let https = https.build().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let health = loop {
        match https
            .get(format!("https://127.0.0.1:{client}/healthz"))
            .send()
            .await
        {
            Ok(r) => break r.status(),
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("the node never served HTTPS: {e}"),
        }
    };
    // Plain HTTP to the same port is not served.
    let plain = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{client}/healthz"))
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    // SAFETY: kill(2) on the child this test started and still owns.
    unsafe {
        libc::kill(node.id() as i32, libc::SIGKILL);
    }
    let _ = node.wait();
    assert_eq!(health, 200);
    assert!(plain.map_or(true, |r| !r.status().is_success()));
}
