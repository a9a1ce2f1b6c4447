//! openraft's network for one group, over the node's [`Peers`].

use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError,
    Unreachable,
};
use openraft::network::RPCOption;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{BasicNode, RaftNetwork, RaftNetworkFactory};

use crate::peer::{CallError, Peers, Reply, Rpc};
use crate::types::{GroupId, NodeId, TypeConfig};

/// Makes a [`Client`] per target for one group's replication.
#[derive(Clone, Debug)]
pub struct Network {
    /// The node's links.
    peers: Peers,
    /// The group whose RPCs this carries.
    group: GroupId,
}

impl Network {
    /// The network of `group` over `peers`.
    pub fn new(peers: Peers, group: GroupId) -> Self {
        Self { peers, group }
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Client;

    async fn new_client(&mut self, target: NodeId, _node: &BasicNode) -> Client {
        Client {
            peers: self.peers.clone(),
            group: self.group,
            target,
        }
    }
}

/// One group's RPCs to one target.
#[derive(Debug)]
pub struct Client {
    peers: Peers,
    group: GroupId,
    target: NodeId,
}

/// An RPC error of any kind.
type RpcErr<E> = RPCError<NodeId, BasicNode, E>;

impl Client {
    /// Send `rpc`; a transport failure becomes openraft's error.
    async fn call<E: std::error::Error>(
        &self,
        rpc: Rpc,
        option: &RPCOption,
    ) -> Result<Reply, RpcErr<E>> {
        self.peers
            .call(self.target, self.group, rpc, option.hard_ttl())
            .await
            .map_err(|e| transport(&e))
    }

    /// The error for an answer of the wrong kind, or from a node that
    /// holds no member of the group (yet).
    fn unexpected<E: std::error::Error>(&self, reply: &Reply) -> RpcErr<E> {
        let what = match reply {
            Reply::NoGroup => format!("node {} has no member of {}", self.target, self.group),
            other => format!("node {} answered with {other:?}", self.target),
        };
        RPCError::Unreachable(Unreachable::new(&std::io::Error::other(what)))
    }
}

/// openraft's error for a call that got no answer.
fn transport<E: std::error::Error>(e: &CallError) -> RpcErr<E> {
    match e {
        CallError::Unreachable(_) => RPCError::Unreachable(Unreachable::new(e)),
        CallError::Closed(_)
        | CallError::Timeout(_)
        | CallError::TooLarge(_)
        | CallError::Encode(_)
        | CallError::Refused(..) => RPCError::Network(NetworkError::new(e)),
    }
}

impl RaftNetwork<TypeConfig> for Client {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RpcErr<RaftError<NodeId>>> {
        let entries = rpc.entries.len() as u64;
        let sent = self
            .peers
            .call(self.target, self.group, Rpc::Append(rpc), option.hard_ttl())
            .await;
        let reply = match sent {
            // Too many entries for one frame: openraft retries with at most
            // the hinted number (one entry over the limit cannot be sent at
            // all; `MetaNode::write` refuses such commands).
            Err(CallError::TooLarge(_)) if entries > 1 => {
                return Err(RPCError::PayloadTooLarge(
                    PayloadTooLarge::new_entries_hint(entries / 2),
                ));
            }
            Err(e) => return Err(transport(&e)),
            Ok(reply) => reply,
        };
        match reply {
            Reply::Append(Ok(answer)) => Ok(answer),
            Reply::Append(Err(e)) => Err(RPCError::RemoteError(RemoteError::new(self.target, e))),
            other => Err(self.unexpected(&other)),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RpcErr<RaftError<NodeId, InstallSnapshotError>>>
    {
        match self.call(Rpc::Snapshot(rpc), &option).await? {
            Reply::Snapshot(Ok(answer)) => Ok(answer),
            Reply::Snapshot(Err(e)) => Err(RPCError::RemoteError(RemoteError::new(self.target, e))),
            other => Err(self.unexpected(&other)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RpcErr<RaftError<NodeId>>> {
        match self.call(Rpc::Vote(rpc), &option).await? {
            Reply::Vote(Ok(answer)) => Ok(answer),
            Reply::Vote(Err(e)) => Err(RPCError::RemoteError(RemoteError::new(self.target, e))),
            other => Err(self.unexpected(&other)),
        }
    }
}
