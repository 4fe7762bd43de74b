//! Facts about the machine a report was measured on.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn cmd(program: &str, args: &[&str]) -> String {
    std::process::Command::new(program)
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| format!("({program} not available)"))
}

/// The three load averages from /proc/loadavg.
pub fn load_average() -> String {
    read("/proc/loadavg")
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Resident set size of process `pid` in KiB (`VmRSS`), if it is readable.
pub fn rss_kib(pid: i32) -> Option<u64> {
    read(&format!("/proc/{pid}/status"))
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// Latency of a 4 KiB write followed by `fdatasync` in `dir`: `rounds` samples.
pub fn fsync_probe(dir: &Path, rounds: usize) -> std::io::Result<Vec<Duration>> {
    let path = dir.join("fsync-probe");
    let mut f = std::fs::File::create(&path)?;
    let block = [0x5au8; 4096];
    let mut out = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let t0 = Instant::now();
        f.write_all(&block)?;
        f.sync_data()?;
        out.push(t0.elapsed());
    }
    drop(f);
    std::fs::remove_file(&path)?;
    Ok(out)
}

/// Markdown lines describing the CPU, memory, kernel and the disk under `dir`.
pub fn facts(dir: &Path) -> Vec<String> {
    let cpuinfo = read("/proc/cpuinfo");
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_else(|| "unknown".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem = read("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .map(|v| v.trim().to_string())
        .unwrap_or_default();
    let dir_s = dir.display().to_string();
    let df = cmd("df", &["-hT", &dir_s]);
    let df_line = df.lines().last().unwrap_or("").to_string();
    let dev = df_line.split_whitespace().next().unwrap_or("").to_string();
    let lsblk = cmd("lsblk", &["-dno", "NAME,ROTA,SIZE,MODEL"]);
    vec![
        format!("- CPU: {model}, {cores} cores available to this process"),
        format!("- Memory: {mem}"),
        format!("- Kernel: {}", read("/proc/sys/kernel/osrelease").trim()),
        format!("- Data dirs: `{dir_s}` on `{df_line}` (device `{dev}`)"),
        format!(
            "- Block devices (name, rotational, size, model): {}",
            lsblk.lines().collect::<Vec<_>>().join("; ")
        ),
    ]
}
