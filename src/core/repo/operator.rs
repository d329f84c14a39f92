//! What the operator changes on one repository: the peers it trusts with
//! `--peer` and the record it follows (`add-repo`), a peer it stops trusting
//! (`remove-peer`), and the repository's storage limit (`set-quota`). Each
//! change is written durably before anything acts on it.

use iroh::EndpointId;
use tracing::info;

use super::{
    outbox::{Ctx, Out, RecordRead},
    state::Repo,
};
use crate::{
    api::{Payload, Reply},
    core::io::{Effect, ReplyId, Write},
    record::{self, PeerHint},
    state::{Locator, Origin},
};

impl Repo {
    /// `add-repo`: trust `peers` as the operator's, and follow the record at
    /// `locator` if it is another one (what the old one said no longer
    /// counts). `created`: the repository was just added.
    pub fn configure(
        &mut self,
        ctx: &Ctx,
        locator: Option<Locator>,
        peers: Vec<PeerHint>,
        created: bool,
    ) {
        let repo_id = self.config.repo_id.clone();
        let mut config = self.config.clone();
        config.origin = Origin::Operator;
        config.operator_peers = record::merge_peers(config.operator_peers, peers.clone());
        let new_locator = locator.filter(|l| self.config.locator.as_ref() != Some(l));
        if let Some(l) = &new_locator {
            config.locator = Some(l.clone());
        }
        let changed = config != self.config;
        self.config = config.clone();
        if changed {
            self.emit(Effect::Persist(Write::Config(config)));
        }
        if new_locator.is_some() && !created {
            self.record = None;
            self.emit(Effect::Persist(Write::Record(repo_id.clone(), None)));
            self.request(Out::RecordRead(RecordRead::Track));
        }
        if !peers.is_empty() {
            self.emit(Effect::LearnAddrs(peers));
        }
        self.wake(ctx);
    }

    /// `remove-peer`: stop trusting a peer the operator named, from the
    /// next decision on (it may stay known as a learned hint, untrusted).
    pub fn remove_peer(&mut self, reply: ReplyId, node_id: EndpointId) {
        let repo_id = self.config.repo_id.clone();
        let id = node_id.to_string();
        let before = self.config.operator_peers.len();
        self.config.operator_peers.retain(|p| p.node_id != id);
        if self.config.operator_peers.len() == before {
            let in_record = self
                .record
                .as_ref()
                .is_some_and(|c| c.record.peers.iter().any(|p| p.node_id == id));
            let why = if in_record {
                "; it is listed in the owner's record, which only the owner can change"
            } else {
                ""
            };
            return self.reply_err(
                reply,
                format!(
                    "{} is not a peer named for {repo_id} with --peer{why}",
                    node_id.fmt_short()
                ),
            );
        }
        self.emit(Effect::Persist(Write::Config(self.config.clone())));
        info!(repo = %repo_id, peer = %node_id.fmt_short(), "operator peer revoked");
        self.reply(
            reply,
            Reply::Ok(Payload::Done {
                message: format!("{repo_id} no longer trusts {node_id}"),
            }),
        );
    }

    /// `set-quota`: set (or clear, with `None`) the repository's storage
    /// limit; a state refused before is asked for again.
    pub fn set_quota(&mut self, ctx: &Ctx, reply: ReplyId, max_bytes: Option<u64>) {
        let repo_id = self.config.repo_id.clone();
        self.config.max_bytes = max_bytes;
        self.quota_refused = None;
        let config = self.config.clone();
        let peers = self.dial_targets(ctx.me);
        let polled = self.record_read();
        self.emit(Effect::Persist(Write::Config(config)));
        if polled {
            self.request(Out::RecordRead(RecordRead::Now));
        }
        for peer in peers {
            self.request(Out::Pull(peer));
        }
        self.request(Out::Pump);
        let message = match max_bytes {
            Some(bytes) => format!("{repo_id} may hold up to {bytes} bytes"),
            None => format!("{repo_id} follows the node's quotas"),
        };
        self.reply(reply, Reply::Ok(Payload::Done { message }));
    }
}
