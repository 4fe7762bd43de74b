//! A TCP proxy in front of one node's peer listener, owned by the harness. Node `N` sends its
//! peer traffic from its own loopback address, so refusing a source address cuts exactly the
//! link from that node to this one: a partition that really drops traffic.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

#[derive(Default)]
struct Shared {
    blocked: HashSet<IpAddr>,
    conns: Vec<(IpAddr, AbortHandle)>,
}

pub struct Proxy {
    pub listen: SocketAddr,
    shared: Arc<Mutex<Shared>>,
    accept: AbortHandle,
}

fn lock(m: &Mutex<Shared>) -> std::sync::MutexGuard<'_, Shared> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Proxy {
    /// Listens on `ip` (any free port) and forwards every accepted connection to `target`.
    pub async fn start(ip: IpAddr, target: SocketAddr) -> std::io::Result<Proxy> {
        let listener = TcpListener::bind((ip, 0)).await?;
        let listen = listener.local_addr()?;
        let shared: Arc<Mutex<Shared>> = Arc::default();
        let s = shared.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, from)) = listener.accept().await {
                if lock(&s).blocked.contains(&from.ip()) {
                    drop(inbound);
                    continue;
                }
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                let mut g = lock(&s);
                g.conns.retain(|(_, h)| !h.is_finished());
                g.conns.push((from.ip(), task.abort_handle()));
            }
        })
        .abort_handle();
        Ok(Proxy {
            listen,
            shared,
            accept,
        })
    }

    /// Refuses (and cuts) every connection from `src` until [`Proxy::unblock_all`].
    pub fn block(&self, src: IpAddr) {
        let mut g = lock(&self.shared);
        g.blocked.insert(src);
        for (ip, h) in &g.conns {
            if *ip == src {
                h.abort();
            }
        }
    }

    pub fn unblock_all(&self) {
        lock(&self.shared).blocked.clear();
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        for (_, h) in &lock(&self.shared).conns {
            h.abort();
        }
    }
}
