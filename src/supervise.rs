//! The node's long-lived tasks, named, and the rule that one of them ending
//! on its own stops the node.
//!
//! A task that panics or returns while the node is not shutting down leaves
//! the node unable to do its job (a dead repository actor answers nothing);
//! [`Supervised::watch`] reports it so the process can exit non-zero and its
//! service manager restart it. Nothing here survives a restart.

use std::{collections::HashMap, future::Future};

use tokio::task::{Id, JoinSet};
use tokio_util::sync::CancellationToken;

/// Named tasks of a node.
#[derive(Default)]
pub struct Supervised {
    tasks: JoinSet<()>,
    names: HashMap<Id, &'static str>,
}

impl Supervised {
    /// Start `task` under `name`.
    pub fn spawn(&mut self, name: &'static str, task: impl Future<Output = ()> + Send + 'static) {
        let handle = self.tasks.spawn(task);
        self.names.insert(handle.id(), name);
    }

    /// Wait until `shutdown` fires (`None`) or a task ends while `shutdown`
    /// has not fired (`Some`, saying which task and how).
    pub async fn watch(&mut self, shutdown: &CancellationToken) -> Option<String> {
        let ended = tokio::select! {
            biased;
            _ = shutdown.cancelled() => return None,
            ended = self.tasks.join_next_with_id() => ended,
        }?;
        if shutdown.is_cancelled() {
            return None; // stopping as asked
        }
        Some(match ended {
            Ok((id, ())) => format!("the {} stopped unexpectedly", self.name(id)),
            Err(e) => {
                let name = self.name(e.id());
                match e.try_into_panic() {
                    Ok(panic) => format!("the {name} panicked: {}", panic_text(&*panic)),
                    Err(e) => format!("the {name} failed: {e}"),
                }
            }
        })
    }

    fn name(&self, id: Id) -> &'static str {
        self.names.get(&id).copied().unwrap_or("core task")
    }

    /// Wait for every task to end; returns the panics seen.
    pub async fn join_all(&mut self) -> Vec<String> {
        let mut panics = Vec::new();
        while let Some(res) = self.tasks.join_next().await {
            if let Err(e) = res
                && e.is_panic()
            {
                panics.push(format!("the {} panicked", self.name(e.id())));
            }
        }
        panics
    }
}

fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_task_that_dies_is_named_with_its_reason() {
        let shutdown = CancellationToken::new();
        let mut tasks = Supervised::default();
        let stop = shutdown.clone();
        tasks.spawn("idle task", async move { stop.cancelled().await });
        tasks.spawn("repository actor", async { panic!("index out of bounds") });
        let reason = tasks.watch(&shutdown).await.expect("a task died");
        assert!(reason.contains("repository actor panicked"), "{reason}");
        assert!(reason.contains("index out of bounds"), "{reason}");

        tasks.spawn("poller", async {});
        let reason = tasks.watch(&shutdown).await.expect("a task returned");
        assert_eq!(reason, "the poller stopped unexpectedly");
    }

    #[tokio::test]
    async fn tasks_ending_on_shutdown_are_not_a_failure() {
        let shutdown = CancellationToken::new();
        let mut tasks = Supervised::default();
        let stop = shutdown.clone();
        tasks.spawn("admin socket server", async move { stop.cancelled().await });
        shutdown.cancel();
        assert_eq!(tasks.watch(&shutdown).await, None);
        assert!(tasks.join_all().await.is_empty());
    }
}
