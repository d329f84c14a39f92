//! An async runtime whose thread lives in another network namespace: every
//! socket a task on it opens (the delaying forwarders, the HTTP calls to the
//! PDS) belongs to that namespace, while the harness itself stays in the
//! host's. Nothing here survives the test.

use std::{path::PathBuf, time::Duration};

use tokio::{runtime::Handle, sync::oneshot};

/// A current-thread runtime on a thread moved into a network namespace.
pub struct NsRuntime {
    handle: Handle,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl NsRuntime {
    /// Start the thread inside namespace `ns` (a name under /run/netns).
    pub fn spawn(ns: &str) -> NsRuntime {
        let path = PathBuf::from("/run/netns").join(ns);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop, stop_rx) = oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let started = crate::netns::runtime_in_namespace(&path);
            match started {
                Ok(runtime) => {
                    let _ = ready_tx.send(Ok(runtime.handle().clone()));
                    runtime.block_on(async move {
                        let _ = stop_rx.await;
                    });
                    runtime.shutdown_timeout(Duration::from_secs(2));
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                }
            }
        });
        let handle = ready_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the namespace thread answers")
            .unwrap_or_else(|e| panic!("cannot run a thread in namespace {ns}: {e}"));
        NsRuntime {
            handle,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// The runtime's handle: tasks spawned on it open their sockets in the namespace.
    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    /// Run `future` on the namespace's thread and wait for its output.
    pub async fn run<F>(&self, future: F) -> F::Output
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.handle
            .spawn(future)
            .await
            .expect("a task in the namespace panicked")
    }
}

impl Drop for NsRuntime {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
