//! The admin socket's executor when mirrors run: mirror commands go to the
//! mirror service, every other command to the repository actor. Removing a
//! mirrored repository with `remove-repo` is refused (the mirror would
//! publish it again); `unmirror` removes both.

use tokio::sync::broadcast;

use super::{MirrorError, MirrorHandle};
use crate::{
    admin::{Command, EventLine, Executor, PackBody, Payload, PublishRequest, Reply},
    gitserve::ServeTarget,
    knot::KnotHandle,
    repo_id::RepoId,
};

/// Admin executor for a node with a mirror service.
#[derive(Clone, Debug)]
pub struct WithMirrors {
    knot: KnotHandle,
    mirrors: MirrorHandle,
}

impl WithMirrors {
    /// Route mirror commands to `mirrors`, the rest to `knot`.
    pub fn new(knot: KnotHandle, mirrors: MirrorHandle) -> Self {
        WithMirrors { knot, mirrors }
    }
}

fn reply<T>(result: Result<T, MirrorError>, ok: impl FnOnce(T) -> Payload) -> Reply {
    match result {
        Ok(value) => Reply::Ok(ok(value)),
        Err(e) => Reply::Error(e.to_string()),
    }
}

impl Executor for WithMirrors {
    async fn execute(&self, command: Command) -> Reply {
        match command {
            Command::Mirror { source, repo_id } => {
                reply(self.mirrors.add(&source, repo_id).await, |view| {
                    Payload::Mirrors {
                        mirrors: vec![view],
                    }
                })
            }
            Command::Unmirror { repo_id } => {
                let done = format!("{repo_id} is no longer mirrored and was removed");
                reply(self.mirrors.remove(repo_id).await, |()| Payload::Done {
                    message: done,
                })
            }
            Command::Mirrors => reply(self.mirrors.list().await, |mirrors| Payload::Mirrors {
                mirrors,
            }),
            Command::MirrorSync { repo_id } => {
                reply(self.mirrors.sync(repo_id).await, |view| Payload::Mirrors {
                    mirrors: vec![view],
                })
            }
            Command::RemoveRepo { repo_id } if self.is_mirror(&repo_id).await => Reply::Error(
                format!("{repo_id} is a mirror; stop it with `knotd admin unmirror {repo_id}`"),
            ),
            other => self.knot.execute(other).await,
        }
    }

    async fn publish<'a>(&'a self, request: PublishRequest, pack: PackBody<'a>) -> Reply {
        if self.is_mirror(&request.repo_id).await {
            return Reply::Error(format!(
                "{} is a mirror: its states come from its upstream; push there",
                request.repo_id
            ));
        }
        self.knot.publish(request, pack).await
    }

    fn serve_target(
        &self,
        repo_id: RepoId,
    ) -> impl Future<Output = Result<ServeTarget, String>> + Send {
        self.knot.serve_target(repo_id)
    }

    fn events(&self) -> Option<broadcast::Receiver<EventLine>> {
        self.knot.events()
    }
}

impl WithMirrors {
    async fn is_mirror(&self, repo_id: &RepoId) -> bool {
        matches!(self.mirrors.source_of(repo_id).await, Ok(Some(_)))
    }
}
