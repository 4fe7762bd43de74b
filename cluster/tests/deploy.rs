//! The files in `deploy/` as an operator uses them: the systemd unit passes `systemd-analyze
//! verify`, and a node runs from the shipped `flagstaff.toml` (with this machine's addresses),
//! logs JSON, serves `/metrics` on its metrics listener, lets the command line override the
//! file, and refuses a file with an unknown key.

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
    let lines = std::thread::spawn(move || {
        BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .take(3)
            .collect::<Vec<_>>()
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
    // SAFETY: kill(2) on the child this test started and still owns.
    unsafe {
        libc::kill(node.id() as i32, libc::SIGKILL);
    }
    let _ = node.wait();
    let lines = lines.join().unwrap();
    assert!(!lines.is_empty());
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
