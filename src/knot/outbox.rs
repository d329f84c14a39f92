//! How the repository actor reaches the network without waiting on it:
//! joining a repository's gossip topic on a task of its own, and handing a
//! signed announcement to the topic's task (neighbours or everyone) and to
//! the direct-push tasks. Nothing here keeps state of its own.

use super::{
    Knot,
    topics::{self, TopicCommand},
};
use crate::{
    announce::{Announcement, SignedStatement},
    core::{Audience, Busy, Event},
    repo_id::RepoId,
};

impl Knot {
    /// Join `repo`'s topic on a task of its own (gossip is never awaited
    /// here); when joined already, dial `peers`.
    pub(super) fn join_topic(&mut self, repo: RepoId, peers: Vec<iroh::EndpointId>) {
        if let Some(topic) = self.topics.get(&repo) {
            topic.send(&repo, TopicCommand::JoinPeers(peers));
            return;
        }
        self.next_topic_epoch += 1;
        let topic = topics::spawn(
            &mut self.topic_tasks,
            self.topic_ctx.clone(),
            (repo.clone(), self.next_topic_epoch),
            peers,
            self.cancel.child_token(),
        );
        self.topics.insert(repo, topic);
    }

    /// Wrap a statement in this node's signed envelope.
    pub(super) fn envelope(&self, statement: SignedStatement) -> Vec<u8> {
        let addrs = self.parts.endpoint.addr().ip_addrs().copied().collect();
        Announcement::new(statement, &self.secret_key, addrs).encode()
    }

    pub(super) fn announce(
        &mut self,
        repo: &RepoId,
        statement: SignedStatement,
        audience: Audience,
    ) {
        let message = self.envelope(statement);
        if let Some(topic) = self.topics.get(repo) {
            let bytes = bytes::Bytes::from(message.clone());
            let command = match &audience {
                Audience::Neighbors { .. } => Some(TopicCommand::BroadcastNeighbors(bytes)),
                Audience::Everyone { .. } => Some(TopicCommand::Broadcast(bytes)),
                Audience::Direct { .. } => None,
            };
            if let Some(command) = command {
                topic.send(repo, command);
            }
        }
        let (Audience::Everyone { direct }
        | Audience::Neighbors { direct }
        | Audience::Direct { direct }) = audience;
        for peer in direct {
            if !self.net.push(&self.parts.endpoint, peer, message.clone()) {
                self.reported.push_back(Event::NetBusy(Busy::Push { peer }));
            }
        }
    }
}
