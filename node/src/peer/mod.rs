//! The peer protocol: postcard bodies (with the format-version byte) over HTTP POST on the peer
//! listener, authenticated by the cluster secret and checked against the cluster id.
//!
//! One module for the whole protocol: the wire types and the client (this file), the server
//! (`server.rs`: the peer listener's routes) and openraft's network over it (`network.rs`).

pub mod network;
pub mod server;

use std::sync::{Arc, RwLock};
use std::time::Duration;

use flagstaff_raft_store::codec;
use flagstaff_raft_store::{CommandResult, Envelope, NodeId};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::tls::{ClientTls, PeerTlsFiles, TlsError};

pub const PATH_APPEND: &str = "/raft/append";
pub const PATH_VOTE: &str = "/raft/vote";
pub const PATH_SNAPSHOT: &str = "/raft/snapshot";
pub const PATH_READ_INDEX: &str = "/raft/read-index";
pub const PATH_FORWARD: &str = "/raft/forward";
/// A stopping leader asks a caught-up voter to campaign now (`crate::hand_over`).
pub const PATH_ELECT: &str = "/raft/elect";
/// A member's own view of itself, for the console's cluster page.
pub const PATH_STATUS: &str = "/raft/status";
/// The one peer route served without the cluster secret: a node proves that it holds the
/// secret without sending it ([`identity_proof`]), before a leader adds it as a learner.
pub const PATH_IDENTIFY: &str = "/raft/identify";

/// Header carrying the cluster id on every peer request; a node from another cluster is refused.
pub const CLUSTER_HEADER: &str = "flagstaff-cluster";

/// Answer to `POST /raft/read-index`: the leader's quorum-confirmed read log index.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReadIndexReply {
    pub index: u64,
}

/// Answer to `POST /raft/status`: how a member sees itself.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MemberView {
    pub id: NodeId,
    /// `leader`, `follower`, `candidate`, `learner` or `shutdown`.
    pub state: String,
    pub term: u64,
    pub leader: Option<NodeId>,
    pub applied_index: Option<u64>,
    pub revision: u64,
    /// What `/readyz` would answer: a leader is known and this member has caught up.
    pub ready: bool,
}

/// `POST /raft/identify`: a fresh random challenge from a leader about to add this node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IdentifyRequest {
    /// [`IDENTIFY_NONCE_BYTES`] random bytes, never reused.
    pub nonce: Vec<u8>,
}

/// Length of an [`IdentifyRequest`] nonce.
pub const IDENTIFY_NONCE_BYTES: usize = 32;

/// Answer to `POST /raft/identify`: who the node is, from its own configuration, and the proof
/// that it holds the cluster secret.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IdentifyReply {
    pub cluster_id: String,
    pub node_id: NodeId,
    /// The node's advertised client listener URL.
    pub api_addr: String,
    /// The node's advertised peer listener URL.
    pub peer_addr: String,
    /// [`identity_proof`] of the fields above and the request's nonce.
    pub proof: Vec<u8>,
}

/// HMAC-SHA256, keyed by the cluster secret, of a node's cluster id, node id, advertised
/// addresses and a challenge's nonce.
///
/// Only a holder of the secret can make it, and the secret never travels: the challenger
/// computes the same value and compares. The fresh nonce defeats a replay of an old answer;
/// covering the node's own id and addresses defeats a relay, since a genuine node asked
/// through an impostor's address answers with its own address, which is not the one the
/// challenger was given. Every field is length-prefixed, so no two inputs read alike.
pub fn identity_proof(
    secret: &str,
    cluster_id: &str,
    node_id: NodeId,
    api_addr: &str,
    peer_addr: &str,
    nonce: &[u8],
) -> [u8; 32] {
    use hmac::Mac;
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = <hmac::Hmac<sha2::Sha256> as Mac>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    mac.update(b"flagstaff identify v1\0");
    for field in [
        cluster_id.as_bytes(),
        &node_id.to_be_bytes(),
        api_addr.as_bytes(),
        peer_addr.as_bytes(),
        nonce,
    ] {
        mac.update(&(field.len() as u64).to_be_bytes());
        mac.update(field);
    }
    mac.finalize().into_bytes().into()
}

/// Largest [`IdentifyReply`] read from an unproven address.
const IDENTIFY_REPLY_LIMIT: usize = 64 << 10;

/// Writes forwarded from a follower to the leader.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ForwardRequest {
    pub envelopes: Vec<Envelope>,
}

/// Why the leader did not run forwarded writes or a read-index round.
#[derive(Debug, Clone, Serialize, Deserialize, thiserror::Error)]
pub enum PeerRefusal {
    #[error("not the leader (leader is {leader:?})")]
    NotLeader { leader: Option<NodeId> },
    #[error("{0}")]
    Unavailable(String),
}

/// `POST /raft/elect`: campaign now. Sent by a leader that stops, once the voter holds every
/// entry up to `last_log_index`; a voter in another term, or behind it, refuses.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ElectRequest {
    pub term: u64,
    pub last_log_index: u64,
}

pub type ForwardReply = Result<Vec<CommandResult>, PeerRefusal>;
pub type ElectReply = Result<(), PeerRefusal>;
pub type ReadIndexResult = Result<ReadIndexReply, PeerRefusal>;

/// A failed peer call, split by whether the request may have reached the other node.
#[derive(Debug, thiserror::Error)]
pub enum PeerCallError {
    /// The connection was never established: the request was not sent.
    #[error("connect to {0}: {1}")]
    Connect(String, String),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Transport(String),
    #[error("peer answered {0}: {1}")]
    Status(u16, String),
    #[error("decoding peer answer: {0}")]
    Decode(String),
}

impl PeerCallError {
    /// True when the request certainly did not reach the peer.
    pub fn never_sent(&self) -> bool {
        matches!(self, PeerCallError::Connect(..))
    }
}

/// HTTP client for the peer protocol. Cheap to clone; clones share the connections and see a
/// reload of the certificates.
#[derive(Clone)]
pub struct PeerClient {
    http: Arc<RwLock<Clients>>,
    tls: Option<PeerTlsFiles>,
    source_ip: Option<std::net::IpAddr>,
    secret: String,
    cluster_id: String,
}

/// The two outgoing clients, rebuilt together when the certificates are reloaded.
struct Clients {
    /// To other nodes' peer listeners. With peer TLS: https only, the peer's certificate must
    /// chain to the cluster CA, and this node presents its own, so the cluster secret is never
    /// sent to an endpoint that has not proved it is a node of this cluster.
    peer: reqwest::Client,
    /// To other nodes' client listeners (membership changes relayed to the leader): the
    /// built-in roots and the cluster CA are trusted.
    api: reqwest::Client,
}

impl Clients {
    fn build(
        tls: Option<&PeerTlsFiles>,
        source_ip: Option<std::net::IpAddr>,
    ) -> Result<Self, TlsError> {
        let base = || {
            reqwest::Client::builder()
                .local_address(source_ip)
                .connect_timeout(Duration::from_millis(500))
                .redirect(reqwest::redirect::Policy::none())
        };
        let mut peer = base()
            .pool_idle_timeout(Duration::from_secs(30))
            .tcp_nodelay(true);
        let mut api = base();
        if let Some(files) = tls {
            let client = ClientTls::load(files)?;
            peer = peer
                .https_only(true)
                .tls_built_in_root_certs(false)
                .identity(client.identity);
            for ca in client.trusted_ca {
                peer = peer.add_root_certificate(ca.clone());
                api = api.add_root_certificate(ca);
            }
        }
        let built =
            |b: reqwest::ClientBuilder| b.build().map_err(|e| TlsError::Config(e.to_string()));
        Ok(Self {
            peer: built(peer)?,
            api: built(api)?,
        })
    }
}

impl PeerClient {
    /// Fails only on unusable peer TLS files.
    pub fn new(
        secret: String,
        cluster_id: String,
        source_ip: Option<std::net::IpAddr>,
        tls: Option<PeerTlsFiles>,
    ) -> Result<Self, TlsError> {
        let http = Clients::build(tls.as_ref(), source_ip)?;
        Ok(Self {
            http: Arc::new(RwLock::new(http)),
            tls,
            source_ip,
            secret,
            cluster_id,
        })
    }

    /// Reads the peer TLS files again; on failure the clients in use are kept.
    pub fn reload(&self) -> Result<(), TlsError> {
        if self.tls.is_none() {
            return Ok(());
        }
        let fresh = Clients::build(self.tls.as_ref(), self.source_ip)?;
        *self.http.write().unwrap_or_else(|e| e.into_inner()) = fresh;
        Ok(())
    }

    fn peer_http(&self) -> reqwest::Client {
        self.http
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .peer
            .clone()
    }

    /// A client for other nodes' client listeners.
    pub fn api_http(&self) -> reqwest::Client {
        self.http
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .api
            .clone()
    }

    /// POSTs `req` to `base` + `path` and decodes the answer, within `timeout`.
    pub async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        base: &str,
        path: &str,
        req: &Req,
        timeout: Duration,
    ) -> Result<Resp, PeerCallError> {
        let body = codec::encode(req).map_err(|e| PeerCallError::Transport(e.to_string()))?;
        let url = format!("{}{}", base.trim_end_matches('/'), path);
        let send = self
            .peer_http()
            .post(&url)
            .bearer_auth(&self.secret)
            .header(CLUSTER_HEADER, &self.cluster_id)
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .body(body)
            .timeout(timeout)
            .send();
        let resp = send.await.map_err(|e| classify(&url, e, timeout))?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| classify(&url, e, timeout))?;
        if !status.is_success() {
            return Err(PeerCallError::Status(
                status.as_u16(),
                String::from_utf8_lossy(&bytes).into_owned(),
            ));
        }
        codec::decode(&bytes).map_err(|e| PeerCallError::Decode(e.to_string()))
    }

    /// Asks the peer listener at `base` to prove who it is. The request carries no credential
    /// and no cluster id: it goes to an address nobody has vouched for yet (with peer TLS, the
    /// address must still hold a certificate of the cluster CA).
    pub async fn identify(
        &self,
        base: &str,
        nonce: &[u8],
        timeout: Duration,
    ) -> Result<IdentifyReply, PeerCallError> {
        let url = format!("{}{}", base.trim_end_matches('/'), PATH_IDENTIFY);
        let http = self.peer_http();
        let body = codec::encode(&IdentifyRequest {
            nonce: nonce.to_vec(),
        })
        .map_err(|e| PeerCallError::Transport(e.to_string()))?;
        let exchange = async {
            let mut resp = http
                .post(&url)
                .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
                .body(body)
                .send()
                .await
                .map_err(|e| classify(&url, e, timeout))?;
            let status = resp.status();
            let mut bytes = Vec::new();
            while let Some(chunk) = resp.chunk().await.map_err(|e| classify(&url, e, timeout))? {
                if bytes.len() + chunk.len() > IDENTIFY_REPLY_LIMIT {
                    return Err(PeerCallError::Decode(format!(
                        "answer longer than {IDENTIFY_REPLY_LIMIT} bytes"
                    )));
                }
                bytes.extend_from_slice(&chunk);
            }
            if !status.is_success() {
                let text: String = String::from_utf8_lossy(&bytes).chars().take(200).collect();
                return Err(PeerCallError::Status(status.as_u16(), text));
            }
            codec::decode(&bytes).map_err(|e| PeerCallError::Decode(e.to_string()))
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| PeerCallError::Timeout(timeout))?
    }
}

fn classify(url: &str, e: reqwest::Error, timeout: Duration) -> PeerCallError {
    if e.is_connect() {
        PeerCallError::Connect(url.to_string(), causes(&e))
    } else if e.is_timeout() {
        PeerCallError::Timeout(timeout)
    } else {
        PeerCallError::Transport(causes(&e))
    }
}

/// An error with its sources (reqwest's own message omits why a connection or TLS handshake
/// failed).
fn causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
