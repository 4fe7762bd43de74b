//! The least a server pays on this machine to deliver one watch frame: a process that does
//! nothing but write a frame to each of N loopback TCP sockets, one `write(2)` per socket per
//! round from one loop, with the readers in a child process of their own. On loopback the
//! writer's system call also runs the receiving side's TCP processing, so its CPU per
//! delivery is the floor under `watch_fanout`'s "CPU per delivery, nodes".
//!
//! `target/release/socket_floor --streams 10000 --rounds 30 --gap-ms 100`

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;
use flagstaff_bench::machine::cpu_time;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};

#[derive(Parser)]
struct Args {
    /// Sockets written to.
    #[arg(long, default_value_t = 10_000)]
    streams: usize,
    /// Frames written to every socket.
    #[arg(long, default_value_t = 30)]
    rounds: usize,
    /// Size of a frame (about a small `change` event).
    #[arg(long, default_value_t = 300)]
    frame_bytes: usize,
    /// Time between rounds, milliseconds.
    #[arg(long, default_value_t = 100)]
    gap_ms: u64,
    /// Run as the readers: connect `--streams` sockets to this address, read them until each
    /// has had `--rounds` frames, then print this process's CPU time.
    #[arg(long, hide = true)]
    reader: Option<String>,
}

/// How long any phase may take before the run gives up.
const LIMIT: Duration = Duration::from_secs(120);

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    match &args.reader {
        Some(addr) => rt.block_on(read_all(addr, &args)),
        None => rt.block_on(write_all(&args)),
    }
}

async fn read_all(addr: &str, args: &Args) -> anyhow::Result<()> {
    let mut sockets = Vec::with_capacity(args.streams);
    for _ in 0..args.streams {
        sockets.push(TcpStream::connect(addr).await?);
    }
    let want = args.rounds * args.frame_bytes;
    let readers = sockets.into_iter().map(|mut s| async move {
        let mut buf = vec![0u8; 4096];
        let mut got = 0;
        while got < want {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got += n,
            }
        }
        got
    });
    let got: usize = tokio::time::timeout(LIMIT, futures::future::join_all(readers))
        .await
        .context("the readers timed out")?
        .into_iter()
        .sum();
    let cpu = cpu_time(None).unwrap_or_default();
    println!("read {got} cpu_us {}", cpu.as_micros());
    Ok(())
}

async fn write_all(args: &Args) -> anyhow::Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?.to_string();
    let mut child = Command::new(std::env::current_exe()?)
        .args(["--reader", &addr])
        .args(["--streams", &args.streams.to_string()])
        .args(["--rounds", &args.rounds.to_string()])
        .args(["--frame-bytes", &args.frame_bytes.to_string()])
        .stdout(Stdio::piped())
        .spawn()?;
    let result = run_writer(args, &listener).await;
    // Stopped by its id whatever happened; it ends by itself once it has read everything.
    if result.is_err() {
        let _ = child.kill();
    }
    let status = child.wait()?;
    let (frames_cpu, wall) = result?;
    let line = child
        .stdout
        .take()
        .and_then(|out| BufReader::new(out).lines().next()?.ok())
        .unwrap_or_default();
    anyhow::ensure!(status.success(), "the readers failed: {line}");
    let reader_cpu_us: f64 = line
        .split_whitespace()
        .skip_while(|w| *w != "cpu_us")
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN);
    let deliveries = (args.streams * args.rounds) as f64;
    println!("| streams | frame bytes | deliveries | writer CPU per delivery µs | readers' CPU per delivery µs (whole run) | one round to every socket, p50 / max ms |");
    println!("|---|---|---|---|---|---|");
    println!(
        "| {} | {} | {} | {:.1} | {:.1} | {:.1} / {:.1} |",
        args.streams,
        args.frame_bytes,
        deliveries,
        frames_cpu.as_secs_f64() * 1e6 / deliveries,
        reader_cpu_us / deliveries,
        percentile(&wall, 0.5),
        percentile(&wall, 1.0),
    );
    Ok(())
}

/// Accepts the readers, then writes the rounds: this process's CPU time over the rounds, and
/// each round's wall time in ms.
async fn run_writer(args: &Args, listener: &TcpListener) -> anyhow::Result<(Duration, Vec<f64>)> {
    let mut sockets = Vec::with_capacity(args.streams);
    let accepting = async {
        while sockets.len() < args.streams {
            let (s, _) = listener.accept().await?;
            s.set_nodelay(true)?;
            sockets.push(s);
        }
        Ok::<_, std::io::Error>(())
    };
    tokio::time::timeout(LIMIT, accepting)
        .await
        .context("the readers did not connect")??;
    let mut frame = vec![b'x'; args.frame_bytes.max(2)];
    let n = frame.len();
    frame[n - 2..].copy_from_slice(b"\n\n");
    let mut wall = Vec::with_capacity(args.rounds);
    let started = cpu_time(None).unwrap_or_default();
    let deadline = Instant::now() + LIMIT;
    for _ in 0..args.rounds {
        let round = Instant::now();
        for s in &sockets {
            write_frame(s, &frame).await?;
        }
        wall.push(round.elapsed().as_secs_f64() * 1e3);
        anyhow::ensure!(Instant::now() < deadline, "the rounds took too long");
        tokio::time::sleep(Duration::from_millis(args.gap_ms)).await;
    }
    let used = cpu_time(None).unwrap_or_default().saturating_sub(started);
    Ok((used, wall))
}

/// One frame to one socket: a non-blocking write, waiting only if the socket is full.
async fn write_frame(s: &TcpStream, frame: &[u8]) -> std::io::Result<()> {
    let mut sent = 0;
    while sent < frame.len() {
        match s.try_write(&frame[sent..]) {
            Ok(n) => sent += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => s.writable().await?,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn percentile(values: &[f64], q: f64) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let i = ((v.len() as f64 - 1.0) * q).round() as usize;
    v.get(i).copied().unwrap_or(f64::NAN)
}
