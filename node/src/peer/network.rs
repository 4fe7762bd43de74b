//! openraft's network: one [`PeerNetwork`] per target node, speaking the peer protocol.

use flagstaff_raft_store::{Member, NodeId, TypeConfig};
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Timeout, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::RPCTypes;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::peer::{PeerCallError, PeerClient, PATH_APPEND, PATH_SNAPSHOT, PATH_VOTE};

/// Creates per-target network clients.
#[derive(Clone)]
pub struct NetworkFactory {
    pub node_id: NodeId,
    pub client: PeerClient,
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerNetwork;

    async fn new_client(&mut self, target: NodeId, node: &Member) -> Self::Network {
        PeerNetwork {
            from: self.node_id,
            target,
            addr: node.peer_addr.clone(),
            client: self.client.clone(),
        }
    }
}

pub struct PeerNetwork {
    from: NodeId,
    target: NodeId,
    addr: String,
    client: PeerClient,
}

impl PeerNetwork {
    async fn rpc<Req, Resp, E>(
        &self,
        action: RPCTypes,
        path: &str,
        req: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, Member, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let timeout = option.hard_ttl();
        let answer: Result<Resp, RaftError<NodeId, E>> = self
            .client
            .call(&self.addr, path, req, timeout)
            .await
            .map_err(|e| match e {
                PeerCallError::Connect(..) => RPCError::Unreachable(Unreachable::new(&e)),
                PeerCallError::Timeout(_) => RPCError::Timeout(Timeout {
                    action,
                    id: self.from,
                    target: self.target,
                    timeout,
                }),
                _ => RPCError::Network(NetworkError::new(&e)),
            })?;
        answer.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for PeerNetwork {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, Member, RaftError<NodeId>>> {
        self.rpc(RPCTypes::AppendEntries, PATH_APPEND, &rpc, &option)
            .await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, Member, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.rpc(RPCTypes::InstallSnapshot, PATH_SNAPSHOT, &rpc, &option)
            .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, Member, RaftError<NodeId>>> {
        self.rpc(RPCTypes::Vote, PATH_VOTE, &rpc, &option).await
    }
}
