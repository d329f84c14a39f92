//! Admin socket request lines: `admin::parse_command`.
//!
//! Any accepted command must re-serialize to a line that parses back to an
//! equal command, carry a valid repository id wherever it names one, keep
//! every duration and count within its limit (the seeds hold the extreme
//! values of every numeric field), and have a bounded wait unless it
//! streams.

#![no_main]

use std::time::{Duration, Instant};

use knotd::admin::{
    Command, LONG_TIMEOUT, MAX_REPLICAS_COUNT, MAX_REPLICAS_TIMEOUT_SECS, QUICK_TIMEOUT,
    parse_command,
};
use knotd::repo_id::RepoId;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let command = match parse_command(data) {
        Ok(command) => command,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    if let Some(repo_id) = command.repo_id() {
        assert_eq!(RepoId::parse(repo_id.as_str()).as_ref(), Ok(repo_id));
    }
    assert!(
        command.check_limits().is_ok(),
        "{command:?} passed unchecked"
    );
    if let Command::Replicas {
        count,
        timeout_secs,
        ..
    } = &command
    {
        assert!(*count <= MAX_REPLICAS_COUNT, "{command:?}");
        assert!(*timeout_secs <= MAX_REPLICAS_TIMEOUT_SECS, "{command:?}");
        // What the node does with it: a deadline that neither overflows
        // the clock nor goes past what a timer queue holds.
        let wait = Duration::from_secs(*timeout_secs);
        assert!(wait <= knotd::core::MAX_TIMER_WAIT, "{command:?}");
        assert!(Instant::now().checked_add(wait).is_some(), "{command:?}");
    }
    let longest = LONG_TIMEOUT.max(Duration::from_secs(MAX_REPLICAS_TIMEOUT_SECS) + QUICK_TIMEOUT);
    match command.timeout() {
        None => assert!(
            command.streamed_events().is_some(),
            "{command:?} waits forever"
        ),
        Some(wait) => assert!(wait <= longest, "{command:?} waits {wait:?}"),
    }
    if let Command::Publish { refs, .. } = &command {
        let _ = refs.validate();
    }

    let mut line = serde_json::to_vec(&command).expect("command serializes");
    let again = parse_command(&line).expect("serialized command is rejected");
    assert_eq!(again, command, "command changed in a round trip");
    line.push(b'\n');
    let again = parse_command(&line).expect("serialized command with newline is rejected");
    assert_eq!(again, command);
});
