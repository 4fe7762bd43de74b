//! The writers of watch streams on connections taken over from hyper (`takeover.rs`): a few
//! shard tasks per node, each holding its streams grouped by namespace. A change reaches a
//! shard once, and the shard writes its frame to each stream of that namespace straight to the
//! socket: no task, channel, timer or HTTP encoder per stream on the way. What a socket does
//! not take at once stays queued on its stream, and a one-off task waits for the socket to
//! drain; a stream with more than [`MAX_QUEUED`] frames queued is closed as slow (its client
//! resumes), as one that falls that far behind its hub channel is. The frames are shared by
//! every stream of the namespace, so a queue costs a pointer per frame, however large the frame.
//! A small task per stream waits only for its client to hang up.

use std::collections::HashMap;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::{broadcast, mpsc, OwnedSemaphorePermit};
use tokio::task::AbortHandle;

use crate::takeover::Socket;
use crate::watch_hub::{HubMessage, WatchHub};
use crate::watch_stream::{WatchStream, MAX_QUEUED};

/// What the hub hands the shards: a namespace's message, or (`ns: None`) one for every stream.
#[derive(Clone, Debug)]
pub struct ShardMessage {
    pub ns: Option<Arc<str>>,
    pub msg: HubMessage,
}

/// A shard's other inputs.
pub enum Control {
    /// A stream whose initial frames were written, with its socket and connection permit.
    Join(Box<Joined>),
    /// The client of stream `id` hung up.
    HungUp(u64),
    /// The socket of stream `id` can take more.
    Writable(u64),
}

pub struct Joined {
    pub stream: WatchStream,
    pub sock: Socket,
    pub permit: OwnedSemaphorePermit,
}

/// How long a taken-over stream may take to send its initial frames (its snapshot, or the
/// changes it missed) before it is dropped.
const INITIAL_WRITE_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a stream that has queued its closing frame (`stale`, `error`) may leave it unread
/// before its connection is closed anyway.
const CLOSING_GRACE: Duration = Duration::from_secs(10);

/// Streams handled before a shard lets other tasks run, while it writes one message to all.
const STREAMS_PER_TURN: usize = 256;

/// Most bytes a client may send on its stream (it has nothing to say) before it is cut off.
const MAX_CLIENT_BYTES: usize = 64 * 1024;

/// Writes `stream`'s initial frames to `sock`, then gives both to a shard of `hub`.
pub async fn start(
    hub: &WatchHub,
    mut stream: WatchStream,
    mut sock: Socket,
    permit: OwnedSemaphorePermit,
) {
    let initial = async {
        while let Some(frame) = stream.pending.pop_front() {
            sock.write_all(&frame).await?;
            stream.node.metrics.events_sent.inc();
        }
        sock.flush().await
    };
    // A client that went away or did not read is dropped here: it reconnects or resumes.
    if let Ok(Ok(())) = tokio::time::timeout(INITIAL_WRITE_TIMEOUT, initial).await {
        hub.join(Joined {
            stream,
            sock,
            permit,
        });
    }
}

/// One stream in a shard.
struct Member {
    id: u64,
    stream: WatchStream,
    sock: Arc<TcpStream>,
    /// The TLS session over `sock`, if the connection has one: frames go through it.
    tls: Option<Box<rustls::ServerConnection>>,
    /// Bytes of `stream.pending`'s first frame already written (or, over TLS, given to the
    /// session).
    offset: usize,
    /// Since when the socket has been full, if it is.
    blocked_since: Option<Instant>,
    /// Waits for the client to hang up.
    hang_up: AbortHandle,
    /// Waits for the socket to drain, while it is full.
    drain: Option<AbortHandle>,
    _permit: OwnedSemaphorePermit,
}

impl Drop for Member {
    fn drop(&mut self) {
        self.hang_up.abort();
        if let Some(d) = &self.drain {
            d.abort();
        }
        // The end of a TLS stream is its close_notify (best effort: a full socket loses it).
        if let Some(tls) = &mut self.tls {
            tls.send_close_notify();
            let _ = tls.write_tls(&mut Raw(&self.sock));
        }
        // The client sees the end at once, whoever else still holds the socket for a moment.
        // SAFETY: a valid descriptor, held by `self.sock` for the call's duration.
        unsafe {
            libc::shutdown(self.sock.as_raw_fd(), libc::SHUT_WR);
        }
    }
}

/// A socket as `std::io::Write` that never waits (`WouldBlock` when full), for rustls.
struct Raw<'a>(&'a TcpStream);

impl std::io::Write for Raw<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.try_write(buf)
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        self.0.try_write_vectored(bufs)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// What writing a stream's queue came to.
enum Wrote {
    /// All of it; the stream goes on.
    All,
    /// The socket is full; the rest stays queued.
    Blocked,
    /// The stream is over: it ended, its client is gone, or it fell too far behind.
    Over,
}

impl Member {
    /// Writes what the stream has queued, as far as the socket takes it now.
    fn write(&mut self) -> Wrote {
        let written = match &mut self.tls {
            None => write_plain(&self.sock, &mut self.stream, &mut self.offset),
            Some(tls) => write_tls(&self.sock, tls, &mut self.stream, &mut self.offset),
        };
        match written {
            Ok(()) if self.stream.ended => Wrote::Over,
            Ok(()) => {
                self.blocked_since = None;
                Wrote::All
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let since = *self.blocked_since.get_or_insert_with(Instant::now);
                // Too far behind; or ended (its last frame queued, so its queue no longer
                // grows) and still not read after a grace period.
                let closing_unread = self.stream.ended && since.elapsed() > CLOSING_GRACE;
                if self.stream.pending.len() > MAX_QUEUED || closing_unread {
                    self.stream.node.metrics.slow_subscribers.inc();
                    return Wrote::Over;
                }
                Wrote::Blocked
            }
            Err(_) => Wrote::Over,
        }
    }
}

/// Writes `stream`'s queue to `sock` until it is empty or the socket full (`WouldBlock`);
/// `offset` is how much of the first frame a full socket took before.
fn write_plain(sock: &TcpStream, stream: &mut WatchStream, offset: &mut usize) -> io::Result<()> {
    while let Some(frame) = stream.pending.front() {
        *offset += sock.try_write(&frame[*offset..])?;
        if *offset == frame.len() {
            stream.pending.pop_front();
            *offset = 0;
            stream.node.metrics.events_sent.inc();
        }
    }
    Ok(())
}

/// As [`write_plain`], through the TLS session: what it holds encrypted goes out first, and
/// only then more of the queue enters it, as much as its bound takes (`offset` into the first
/// frame), so it holds at most its bound per stream, however large the frames.
fn write_tls(
    sock: &TcpStream,
    tls: &mut rustls::ServerConnection,
    stream: &mut WatchStream,
    offset: &mut usize,
) -> io::Result<()> {
    loop {
        while tls.wants_write() {
            tls.write_tls(&mut Raw(sock))?;
        }
        let Some(frame) = stream.pending.front() else {
            return Ok(());
        };
        let n = std::io::Write::write(&mut tls.writer(), &frame[*offset..])?;
        if n == 0 {
            // Its bound is reached with nothing to send: cannot happen once drained, but
            // never spin on it.
            return Err(io::ErrorKind::WouldBlock.into());
        }
        *offset += n;
        if *offset == frame.len() {
            stream.pending.pop_front();
            *offset = 0;
            stream.node.metrics.events_sent.inc();
        }
    }
}

/// One shard: its streams by namespace, and where to find each by id.
struct Shard {
    hub: WatchHub,
    control: mpsc::UnboundedSender<Control>,
    groups: HashMap<Arc<str>, Vec<Member>>,
    /// Each stream's namespace and its place in that group.
    where_is: HashMap<u64, (Arc<str>, usize)>,
    next_id: u64,
}

/// Runs a shard until the hub stops (`messages` closes); its streams then close.
pub async fn run_shard(
    hub: WatchHub,
    control_tx: mpsc::UnboundedSender<Control>,
    mut control: mpsc::UnboundedReceiver<Control>,
    mut messages: broadcast::Receiver<ShardMessage>,
) {
    let mut shard = Shard {
        hub,
        control: control_tx,
        groups: HashMap::new(),
        where_is: HashMap::new(),
        next_id: 0,
    };
    loop {
        tokio::select! {
            biased;
            m = messages.recv() => match m {
                Ok(m) => shard.deliver(m).await,
                Err(broadcast::error::RecvError::Lagged(_)) => shard.fell_behind(),
                Err(broadcast::error::RecvError::Closed) => break,
            },
            c = control.recv() => match c {
                Some(Control::Join(j)) => shard.join(*j).await,
                Some(Control::HungUp(id)) => shard.remove(id),
                Some(Control::Writable(id)) => shard.writable(id),
                None => break,
            },
        }
    }
    shard.close_all();
}

impl Shard {
    /// Takes a stream over from its hub channel: the messages it holds come first (those this
    /// shard saw already were sent to the namespace channel before the shard got them, so
    /// none is missed; revisions drop the ones seen twice).
    async fn join(&mut self, j: Joined) {
        let Joined {
            mut stream,
            sock,
            permit,
        } = j;
        let ns: Arc<str> = Arc::from(stream.ns.as_str());
        // Keeps the namespace's frames coming to the shards once no receiver is left on it.
        self.hub.hold(&ns);
        let mut rx = stream.rx.take();
        let mut alive = true;
        while let Some(r) = rx.as_mut().map(|rx| rx.try_recv()) {
            match r {
                Ok(msg) => {
                    if stream.take(&msg).await.is_none() {
                        alive = false;
                        break;
                    }
                }
                Err(broadcast::error::TryRecvError::Empty) => break,
                Err(broadcast::error::TryRecvError::Lagged(_)) => {
                    stream.node.metrics.slow_subscribers.inc();
                    alive = false;
                    break;
                }
                Err(broadcast::error::TryRecvError::Closed) => {
                    alive = false;
                    break;
                }
            }
        }
        drop(rx);
        let id = self.next_id;
        self.next_id += 1;
        let (sock, tls) = match sock {
            Socket::Plain(sock) => (sock, None),
            Socket::Tls(tls) => {
                // Its buffers keep rustls' bound (64 KiB): frames enter it in pieces.
                let (sock, session) = tls.into_inner();
                (sock, Some(Box::new(session)))
            }
        };
        let sock = Arc::new(sock);
        let hang_up =
            tokio::spawn(wait_hang_up(sock.clone(), id, self.control.clone())).abort_handle();
        let member = Member {
            id,
            stream,
            sock,
            tls,
            offset: 0,
            blocked_since: None,
            hang_up,
            drain: None,
            _permit: permit,
        };
        let group = self.groups.entry(ns.clone()).or_default();
        self.where_is.insert(id, (ns, group.len()));
        group.push(member);
        if !alive {
            self.remove(id);
            return;
        }
        self.write_one(id);
    }

    /// Hands one message to the streams it is for, and writes what they queue.
    async fn deliver(&mut self, m: ShardMessage) {
        let namespaces: Vec<Arc<str>> = match &m.ns {
            Some(ns) if self.groups.contains_key(ns) => vec![ns.clone()],
            Some(_) => return,
            None => self.groups.keys().cloned().collect(),
        };
        let mut over = Vec::new();
        let mut blocked = Vec::new();
        let mut handled = 0usize;
        for ns in namespaces {
            let Some(group) = self.groups.get_mut(&ns) else {
                continue;
            };
            for member in group.iter_mut() {
                let taken = member.stream.take(&m.msg).await;
                match taken.map(|()| member.write()) {
                    Some(Wrote::All) => {}
                    Some(Wrote::Blocked) => blocked.push(member.id),
                    Some(Wrote::Over) | None => over.push(member.id),
                }
                handled += 1;
                if handled.is_multiple_of(STREAMS_PER_TURN) {
                    tokio::task::yield_now().await;
                }
            }
        }
        for id in over {
            self.remove(id);
        }
        for id in blocked {
            self.wait_drain(id);
        }
    }

    /// The socket of `id` drained: write more of its queue.
    fn writable(&mut self, id: u64) {
        if let Some(m) = self.member(id) {
            m.drain = None;
        }
        self.write_one(id);
    }

    fn write_one(&mut self, id: u64) {
        let wrote = match self.member(id) {
            Some(m) => m.write(),
            None => return,
        };
        match wrote {
            Wrote::All => {}
            Wrote::Blocked => self.wait_drain(id),
            Wrote::Over => self.remove(id),
        }
    }

    /// Starts waiting for `id`'s socket to take more, unless already waiting.
    fn wait_drain(&mut self, id: u64) {
        let control = self.control.clone();
        let Some(m) = self.member(id) else { return };
        if m.drain.is_some() {
            return;
        }
        let sock = m.sock.clone();
        m.drain = Some(
            tokio::spawn(async move {
                if sock.writable().await.is_ok() {
                    let _ = control.send(Control::Writable(id));
                }
            })
            .abort_handle(),
        );
    }

    fn member(&mut self, id: u64) -> Option<&mut Member> {
        let (ns, i) = self.where_is.get(&id)?;
        self.groups.get_mut(ns)?.get_mut(*i)
    }

    /// Drops stream `id` (closing its connection).
    fn remove(&mut self, id: u64) {
        let Some((ns, i)) = self.where_is.remove(&id) else {
            return;
        };
        if let Some(group) = self.groups.get_mut(&ns) {
            if i < group.len() {
                group.swap_remove(i);
                // The last member took its place.
                if let Some(moved) = group.get(i) {
                    if let Some(at) = self.where_is.get_mut(&moved.id) {
                        at.1 = i;
                    }
                }
            }
            if group.is_empty() {
                self.groups.remove(&ns);
            }
        }
        self.hub.release(&ns);
    }

    /// This shard missed hub messages: every stream of it may have missed a change, so each
    /// ends, and its client resumes from its last event id.
    fn fell_behind(&mut self) {
        tracing::warn!("a watch writer fell behind the hub; its streams resume");
        for m in self.groups.values().flatten() {
            m.stream.node.metrics.slow_subscribers.inc();
        }
        self.close_all();
    }

    /// Drops every stream (closing their connections).
    fn close_all(&mut self) {
        for (ns, group) in self.groups.drain() {
            for _ in &group {
                self.hub.release(&ns);
            }
        }
        self.where_is.clear();
    }
}

/// Waits for the client of stream `id` to close its side (or fail, or talk too much), and
/// tells the shard. Whatever a client sends is read and dropped.
async fn wait_hang_up(sock: Arc<TcpStream>, id: u64, control: mpsc::UnboundedSender<Control>) {
    let mut heard = 0usize;
    // Small: it lives in this task for as long as the stream, and a client sends nothing.
    let mut buf = [0u8; 64];
    loop {
        if sock.readable().await.is_err() {
            break;
        }
        match sock.try_read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                heard += n;
                if heard > MAX_CLIENT_BYTES {
                    break;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => break,
        }
    }
    let _ = control.send(Control::HungUp(id));
}
