//! The cluster's registry of protocol client ids (docs/cluster.md "MQTT
//! sessions across nodes"). One record per client id with a session in
//! the cluster, in the metadata group: the node whose connection claimed
//! it last, and that connection's id. A connection claims its client id
//! before it is accepted; every other node that applies the claim drops
//! its own connection for that id and lets go of the session, keeping
//! its record until the claiming node fetches it ([`PeerCall::TakeSession`])
//! or it expires. The claim is removed when the session ends, by its
//! holder only ([`MetaOp::DeleteIf`]): a later claim is never undone by an
//! earlier one's end.
//!
//! The registry is the adapter's to use ([`ClientSessions`]); outside a
//! cluster every call here does nothing.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use super::records::{self, TAG_CLIENT};
use super::{Broker, MetaOp, PeerCall, PeerReply};
use crate::codec::{Reader, Writer};
use crate::error::CoreError;
use crate::ids::ConnectionId;

/// Longest wait for another node to hand over a session.
const HAND_OVER_WITHIN: Duration = Duration::from_secs(8);
/// How long a node asked for a session takes at most to answer, all its
/// waits included: well within the asker's wait, so that an answer is
/// never lost to the asker's timeout.
const ANSWER_WITHIN: Duration = Duration::from_secs(6);
/// Longest wait of a node asked for a session until it has applied the
/// asker's claim (part of [`ANSWER_WITHIN`]).
const CLAIM_SEEN_WITHIN: Duration = Duration::from_secs(2);

/// A client id's claim: the node holding its session, and the connection
/// that claimed it there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientClaim {
    pub node: String,
    pub connection: u64,
}

impl ClientClaim {
    fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.str(&self.node);
        w.u64(self.connection);
        w.finish().to_vec()
    }

    pub(crate) fn decode(data: &[u8]) -> Result<ClientClaim, CoreError> {
        let mut r = Reader::new(data);
        Ok(ClientClaim {
            node: r.string()?,
            connection: r.u64()?,
        })
    }
}

/// What [`ClientSessions::hand_over`] returns.
pub type HandOverFuture<'a> = Pin<Box<dyn Future<Output = Option<Vec<u8>>> + Send + 'a>>;

/// What a node asked for a client's session answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TakenSession {
    /// The session's record, given up there.
    Record(Vec<u8>),
    /// It had no session (or could not give it in time).
    Nothing,
    /// It claimed the client id again after the asker: the session stays
    /// there, and the asker's claim is not the latest any more.
    Kept,
}

/// The protocol adapter's side of the registry (MQTT sessions).
pub trait ClientSessions: Send + Sync {
    /// Another node claimed `client_id` of `vhost`: close its connection
    /// here and stop delivering to its session, keeping what
    /// [`ClientSessions::hand_over`] gives. Called as the claim is
    /// applied here: it must not wait.
    fn claimed_elsewhere(&self, vhost: &str, client_id: &str);
    /// Another node takes `client_id`'s session over: end its connection
    /// here, give up the session, and answer its record (None: no
    /// session here, or its connection did not go by `deadline`).
    fn hand_over<'a>(
        &'a self,
        vhost: &'a str,
        client_id: &'a str,
        deadline: tokio::time::Instant,
    ) -> HandOverFuture<'a>;
}

impl Broker {
    /// Tell `sessions` of claims other nodes make (once, at start).
    pub fn serve_client_sessions(&self, sessions: Arc<dyn ClientSessions>) {
        if self.client_sessions.set(sessions).is_err() {
            tracing::warn!("client sessions were attached twice; kept the first");
        }
    }

    /// The claim on `client_id` as this node last applied it (None:
    /// none, or not in a cluster).
    pub fn client_claim(&self, vhost: &str, client_id: &str) -> Option<ClientClaim> {
        let raw = self
            .meta_log()?
            .get(&records::client_key(vhost, client_id))?;
        match ClientClaim::decode(&raw) {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(client_id, error = %e, "an unreadable client claim: ignored");
                None
            }
        }
    }

    /// Whether the registry names another node as `client_id`'s holder.
    pub fn client_elsewhere(&self, vhost: &str, client_id: &str) -> bool {
        self.client_claim(vhost, client_id)
            .is_some_and(|c| Some(c.node.as_str()) != self.node_name())
    }

    /// Claims `client_id` for connection `conn` of this node, returning
    /// the claim it replaced with the log index of the new one (None:
    /// there was none, or not in a cluster). Returns once the claim is
    /// applied here (every connection for the id on a node that applied
    /// it was told to go). Unavailable when the cluster could not commit
    /// it (no majority within its timeout).
    pub async fn claim_client(
        &self,
        vhost: &str,
        client_id: &str,
        conn: ConnectionId,
    ) -> Result<Option<(ClientClaim, u64)>, CoreError> {
        let (Some(log), Some(node)) = (self.meta_log(), self.node_name()) else {
            return Ok(None);
        };
        let previous = self.client_claim(vhost, client_id);
        let claim = ClientClaim {
            node: node.to_owned(),
            connection: conn.0,
        };
        let index = log
            .commit_at(vec![MetaOp::Put {
                key: records::client_key(vhost, client_id),
                value: claim.encode(),
            }])
            .await?;
        Ok(previous.map(|p| (p, index)))
    }

    /// Removes the claim connection `conn` made on `client_id`, if it
    /// still stands (the session ended). In the background: nothing waits
    /// for it, and a claim left behind by a failure only costs the next
    /// claimant a call (and is removed at this node's next start).
    pub fn release_client(&self, vhost: &str, client_id: &str, conn: ConnectionId) {
        self.release_clients(vhost, vec![(client_id.to_owned(), conn)]);
    }

    /// [`Broker::release_client`] for many claims, in one entry.
    pub fn release_clients(&self, vhost: &str, claims: Vec<(String, ConnectionId)>) {
        let (Some(log), Some(node)) = (self.meta_log(), self.node_name()) else {
            return;
        };
        let ops: Vec<MetaOp> = claims
            .iter()
            // Connection 0: no connection of this node's life claimed it.
            .filter(|(_, conn)| conn.0 != 0)
            .map(|(client_id, conn)| MetaOp::DeleteIf {
                key: records::client_key(vhost, client_id),
                value: ClientClaim {
                    node: node.to_owned(),
                    connection: conn.0,
                }
                .encode(),
            })
            .collect();
        if ops.is_empty() {
            return;
        }
        let log = Arc::clone(log);
        tokio::spawn(async move {
            let n = ops.len();
            if let Err(e) = log.commit(ops).await {
                tracing::info!(claims = n, error = %e, "client id claims were not removed");
            }
        });
    }

    /// Asks node `node` for `client_id`'s session (its adapter's record
    /// of it), which that node gives up.
    /// `index`: the log index of the claim `conn` made.
    pub async fn take_client_session(
        &self,
        node: &str,
        vhost: &str,
        client_id: &str,
        conn: ConnectionId,
        index: u64,
    ) -> Result<TakenSession, CoreError> {
        let Some(forwarder) = self.forwarder.get() else {
            return Ok(TakenSession::Nothing);
        };
        let call = PeerCall::TakeSession {
            life: self.life(),
            vhost: vhost.to_owned(),
            client_id: client_id.to_owned(),
            connection: conn.0,
            index,
        };
        match forwarder.call(node, call, HAND_OVER_WITHIN).await {
            Ok(PeerReply::Session(Some(record))) => Ok(TakenSession::Record(record)),
            Ok(PeerReply::Session(None)) => Ok(TakenSession::Nothing),
            Ok(PeerReply::SessionKept) => Ok(TakenSession::Kept),
            Ok(other) => Err(CoreError::Unavailable(format!(
                "node {node} answered a session hand-over with {other:?}"
            ))),
            Err(e) => Err(CoreError::Unavailable(format!(
                "node {node} did not hand over the session: {e}"
            ))),
        }
    }

    /// Answers [`PeerCall::TakeSession`] from node `from` for its
    /// connection `connection`, whose claim is the entry at `index` (all
    /// within [`ANSWER_WITHIN`]): once that entry is applied here, the
    /// session goes to it if its claim is still the latest; a later one
    /// (this node's, or another's) keeps the session here
    /// ([`PeerReply::SessionKept`]).
    /// An entry not applied here in time is answered as no session: the
    /// asker's claim stands, and this node lets go of the session when
    /// it applies it.
    pub(crate) async fn hand_over_client(
        &self,
        from: &str,
        vhost: &str,
        client_id: &str,
        connection: u64,
        index: u64,
    ) -> PeerReply {
        let deadline = tokio::time::Instant::now() + ANSWER_WITHIN;
        let Some(log) = self.meta_log() else {
            return PeerReply::Session(None);
        };
        if !log.wait_applied(index, CLAIM_SEEN_WITHIN).await {
            tracing::info!(
                client_id,
                node = from,
                "a session stays here for now: the claim asking for it is not applied here yet"
            );
            return PeerReply::Session(None);
        }
        let theirs = ClientClaim {
            node: from.to_owned(),
            connection,
        };
        // Only the latest claim is given the session: a later one (this
        // node's: the client came back; or a third node's, racing) means
        // the asker's connection is not the client's any more, and a
        // session handed to it would be ended by a clean start there,
        // queue and all, under the latest claimant.
        if self.client_claim(vhost, client_id).as_ref() != Some(&theirs) {
            tracing::info!(
                client_id,
                node = from,
                "a session stays here: the client id was claimed again after the asker"
            );
            return PeerReply::SessionKept;
        }
        let sessions = self.client_sessions.get().cloned();
        let record = match sessions {
            Some(s) => s.hand_over(vhost, client_id, deadline).await,
            None => None,
        };
        PeerReply::Session(record)
    }

    /// Every claim of `vhost` that names this node, by client id.
    pub fn client_claims_here(&self, vhost: &str) -> Vec<(String, ClientClaim)> {
        let (Some(log), Some(me)) = (self.meta_log(), self.node_name()) else {
            return Vec::new();
        };
        log.scan(&records::vhost_prefix(TAG_CLIENT, vhost))
            .into_iter()
            .filter_map(|(k, v)| {
                let (_, id) = records::decode_name_key(&k).ok()?;
                let claim = ClientClaim::decode(&v).ok()?;
                (claim.node == me).then_some((id, claim))
            })
            .collect()
    }

    /// Whether `key` is a client claim's.
    pub(crate) fn is_client_key(key: &[u8]) -> bool {
        key.first() == Some(&TAG_CLIENT)
    }

    /// A committed claim (or its removal), applied here: a claim of
    /// another node takes the client away from this one.
    pub(crate) fn apply_client(&self, key: &[u8], value: Option<&[u8]>) {
        let Some(value) = value else {
            return;
        };
        let (vhost, client_id) = match records::decode_name_key(key) {
            Ok(k) => k,
            Err(e) => {
                tracing::warn!(error = %e, "an unreadable client claim key: ignored");
                return;
            }
        };
        let claim = match ClientClaim::decode(value) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(%client_id, error = %e, "an unreadable client claim: ignored");
                return;
            }
        };
        if Some(claim.node.as_str()) == self.node_name() {
            return;
        }
        if let Some(sessions) = self.client_sessions.get() {
            sessions.claimed_elsewhere(&vhost, &client_id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_claim_reads_back_as_written_and_a_truncated_one_is_refused() {
        let c = ClientClaim {
            node: "n2".into(),
            connection: 77,
        };
        let bytes = c.encode();
        assert_eq!(ClientClaim::decode(&bytes).unwrap(), c);
        assert!(ClientClaim::decode(&bytes[..bytes.len() - 1]).is_err());
    }

    #[test]
    fn a_client_key_names_its_vhost_and_client() {
        let key = records::client_key("/", "dev/7");
        assert!(Broker::is_client_key(&key));
        assert_eq!(
            records::decode_name_key(&key).unwrap(),
            ("/".to_owned(), "dev/7".to_owned())
        );
    }
}
