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

/// Cores available to this process (0 if unknown).
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(0, |n| n.get())
}

/// CPU time (user + system) process `pid` has used so far, or this process's with `None`.
pub fn cpu_time(pid: Option<i32>) -> Option<Duration> {
    let stat = read(&match pid {
        Some(pid) => format!("/proc/{pid}/stat"),
        None => "/proc/self/stat".to_string(),
    });
    // Fields after the parenthesised command name: state is the 3rd field of the line, utime
    // and stime the 14th and 15th.
    let mut rest = stat.rsplit_once(')')?.1.split_whitespace().skip(11);
    let utime: u64 = rest.next()?.parse().ok()?;
    let stime: u64 = rest.next()?.parse().ok()?;
    // SAFETY: sysconf only reads a configuration value.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (ticks > 0).then(|| Duration::from_secs_f64((utime + stime) as f64 / ticks as f64))
}

/// `rss_kib` of each of `pids` (`None` where there is no process or it cannot be read).
pub fn rss_of(pids: &[Option<i32>]) -> Vec<Option<u64>> {
    pids.iter().map(|p| p.and_then(rss_kib)).collect()
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
    let cores = cores();
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

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    #[test]
    fn cpu_time_of_this_process_grows_while_it_computes() {
        let before = super::cpu_time(None).expect("/proc/self/stat is readable");
        let started = Instant::now();
        let mut x = 1u64;
        // Bounded: at most 5 s of work, checked every million steps.
        while super::cpu_time(None).unwrap() <= before && started.elapsed() < Duration::from_secs(5)
        {
            for i in 0..1_000_000u64 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
            }
        }
        assert!(
            super::cpu_time(None).unwrap() > before,
            "no CPU time counted after {:?}",
            started.elapsed()
        );
        assert_eq!(
            super::cpu_time(Some(i32::MAX)),
            None,
            "a process that does not exist"
        );
    }
}
