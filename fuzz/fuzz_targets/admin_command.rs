//! Admin socket request lines: `admin::parse_command`.
//!
//! Any accepted command must re-serialize to a line that parses back to an
//! equal command, carry a valid repository id wherever it names one, and
//! have a bounded wait unless it streams.

#![no_main]

use knotd::admin::{LONG_TIMEOUT, parse_command};
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
    match command.timeout() {
        None => assert!(command.streamed_events().is_some(), "{command:?} waits forever"),
        Some(wait) => assert!(
            wait <= LONG_TIMEOUT || matches!(command, knotd::admin::Command::Replicas { .. }),
            "{command:?} waits {wait:?}"
        ),
    }
    if let knotd::admin::Command::Publish { refs, .. } = &command {
        let _ = refs.validate();
    }

    let mut line = serde_json::to_vec(&command).expect("command serializes");
    let again = parse_command(&line).expect("serialized command is rejected");
    assert_eq!(again, command, "command changed in a round trip");
    line.push(b'\n');
    let again = parse_command(&line).expect("serialized command with newline is rejected");
    assert_eq!(again, command);
});
