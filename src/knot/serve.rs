//! The handle's git services for admin clients: a published pack is
//! received and indexed in a temporary repository the node owns, then
//! published from there by the actor (which keeps that pack as the new
//! pack blob when it was indexed against the state still held,
//! [`crate::content::publish_received`]); `git upload-pack` runs on the
//! materialized repository of the state the node holds ([`crate::served`]),
//! or on an empty stand-in when it holds none. No client path is ever
//! opened. Nothing here survives a restart (the node empties its `tmp`
//! directory when it starts).

use tracing::info;

use super::{KnotError, KnotHandle, Request};
use crate::{
    admin::{PackBody, Payload, PublishRequest},
    content::Received,
    git::{self, ObjectFormat},
    gitserve::{self, ServeTarget},
    materialize,
    repo_id::RepoId,
};

impl KnotHandle {
    /// The materialized repository of the state the node holds of
    /// `repo_id`, when it holds one.
    fn materialized(&self, repo_id: &RepoId) -> Option<std::path::PathBuf> {
        self.served.get(repo_id).map(|served| served.dir)
    }

    /// Receive a publish's pack, index it, and publish the result.
    pub(super) async fn publish_received(
        &self,
        request: PublishRequest,
        pack: PackBody<'_>,
    ) -> Result<Payload, KnotError> {
        let failed = |e: String| KnotError::Failed(e);
        request
            .refs
            .validate()
            .map_err(|e| failed(format!("the published refs are invalid: {e}")))?;
        let base = self.materialized(&request.repo_id);
        let format = match request.refs.object_format() {
            Ok(Some(format)) => format,
            Ok(None) => ObjectFormat::Sha1,
            Err(e) => return Err(failed(e.to_string())),
        };
        let staging = gitserve::receive_pack(
            &self.tmp_dir,
            base.as_deref(),
            format,
            pack,
            self.max_receive_bytes,
        )
        .await
        .map_err(|e| failed(format!("receiving the pack failed: {e}")))?;
        let git_dir = staging.git_dir().to_path_buf();
        let received = Received {
            refs: request.refs.clone(),
            pack: staging.received().map(|p| p.name.clone()),
            connected: staging.received().is_some_and(|p| p.connected),
            thin: staging.thin(),
            base: base.as_deref().and_then(held_manifest),
        };
        tokio::task::spawn_blocking(move || {
            git::apply_refs_to_new(&git_dir, &received.refs).map_err(|e| {
                format!("the pack does not complete the published refs: {e}; publish again")
            })?;
            received
                .write(&git_dir)
                .map_err(|e| format!("cannot write {}: {e}", Received::FILE))
        })
        .await
        .map_err(|e| failed(e.to_string()))?
        .map_err(failed)?;
        info!(repo = %request.repo_id, "received a pack over the admin socket");
        let result = self
            .request(Request::PublishFrom {
                repo_id: request.repo_id,
                source: staging.git_dir().to_path_buf(),
                force: request.force,
                expected_manifest: request.expected_manifest,
            })
            .await;
        drop(staging);
        result
    }
}

/// The manifest the materialized repository at `dir` reflects (hex), none
/// while its refs are being moved.
fn held_manifest(dir: &std::path::Path) -> Option<String> {
    let marker = std::fs::read_to_string(dir.join(materialize::MANIFEST_MARKER)).ok()?;
    let hex = marker.trim();
    (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit())).then(|| hex.to_owned())
}

impl KnotHandle {
    /// What `git upload-pack` serves for `repo_id`: the materialized
    /// repository of the state held, or an empty one while none is held.
    pub(super) async fn locate_served(&self, repo_id: &RepoId) -> Result<ServeTarget, KnotError> {
        match self.materialized(repo_id) {
            Some(dir) => Ok(ServeTarget::existing(dir)),
            None => ServeTarget::empty(&self.tmp_dir, ObjectFormat::Sha1)
                .await
                .map_err(|e| KnotError::Failed(e.to_string())),
        }
    }
}
