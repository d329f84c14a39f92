//! A deadline for every git process knotd runs on its own repositories.
//!
//! A hung `index-pack` or `pack-objects` would otherwise keep a repository
//! busy forever. [`Deadline::arm`] starts a watchdog thread for one child
//! process: if the process is still running when the deadline passes, the
//! watchdog kills it (SIGKILL) and the caller reports
//! [`GitError::TimedOut`](super::GitError::TimedOut). Dropping the guard
//! disarms it. Owners of long-lived children ([`super::PackStream`],
//! [`super::Ancestry`]) also kill them when dropped.
//!
//! The limit is process-wide, set once at start from the config
//! (`git_timeout_secs`); nothing here survives a restart.

use std::{
    process::Child,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc::{self, RecvTimeoutError},
    },
    time::Duration,
};

use nix::{sys::signal::Signal, unistd::Pid};
use tracing::warn;

/// The default limit for one git process: an hour, far beyond any healthy
/// operation on a repository of many gigabytes.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3600);

static TIMEOUT_MS: AtomicU64 = AtomicU64::new(DEFAULT_TIMEOUT.as_millis() as u64);

/// Set the longest time one git process may run (from the config).
pub fn set_timeout(timeout: Duration) {
    let ms = u64::try_from(timeout.as_millis())
        .unwrap_or(u64::MAX)
        .max(1);
    TIMEOUT_MS.store(ms, Ordering::Relaxed);
}

/// The longest time one git process may run.
pub fn timeout() -> Duration {
    Duration::from_millis(TIMEOUT_MS.load(Ordering::Relaxed))
}

/// Kills its process when the deadline passes; disarmed when dropped.
#[derive(Debug)]
pub(crate) struct Deadline {
    _disarm: mpsc::Sender<()>,
    fired: Arc<AtomicBool>,
    limit: Duration,
}

impl Deadline {
    /// Watch `child` (running `git {label}`) for [`timeout()`].
    pub(crate) fn arm(child: &Child, label: &str) -> Deadline {
        Self::arm_for(child, label, timeout())
    }

    /// Watch `child` for `limit`.
    pub(crate) fn arm_for(child: &Child, label: &str, limit: Duration) -> Deadline {
        let (disarm, disarmed) = mpsc::channel::<()>();
        let fired = Arc::new(AtomicBool::new(false));
        let pid = Pid::from_raw(child.id() as i32);
        let label = label.to_owned();
        let flag = fired.clone();
        let watch = move || {
            if let Err(RecvTimeoutError::Timeout) = disarmed.recv_timeout(limit) {
                warn!(command = %label, ?limit, "git ran past its deadline; killing it");
                flag.store(true, Ordering::SeqCst);
                let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
            }
        };
        if let Err(e) = std::thread::Builder::new()
            .name("git-deadline".into())
            .spawn(watch)
        {
            warn!(error = %e, "cannot start a watchdog thread; this git process has no deadline");
        }
        Deadline {
            _disarm: disarm,
            fired,
            limit,
        }
    }

    /// Whether the watchdog killed the process.
    pub(crate) fn fired(&self) -> bool {
        self.fired.load(Ordering::SeqCst)
    }

    /// The limit it was armed with.
    pub(crate) fn limit(&self) -> Duration {
        self.limit
    }
}

#[cfg(test)]
mod tests {
    use std::{process::Command, time::Instant};

    use super::*;

    #[test]
    fn a_process_past_its_deadline_is_killed() {
        let mut child = Command::new("sleep").arg("30").spawn().unwrap();
        let started = Instant::now();
        let deadline = Deadline::arm_for(&child, "sleep", Duration::from_millis(100));
        let status = child.wait().unwrap();
        assert!(!status.success());
        assert!(deadline.fired());
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn a_process_that_finishes_in_time_is_left_alone() {
        let mut child = Command::new("true").spawn().unwrap();
        let deadline = Deadline::arm_for(&child, "true", Duration::from_secs(30));
        assert!(child.wait().unwrap().success());
        assert!(!deadline.fired());
    }
}
