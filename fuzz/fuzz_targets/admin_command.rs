//! Admin socket request lines: `admin::parse_command`.
//!
//! Any accepted command must re-serialize to a line that parses back to an
//! equal command, and carry a valid repository id wherever it names one.

#![no_main]

use knotd::admin::{Command, LONG_TIMEOUT, QUICK_TIMEOUT, parse_command};
use knotd::repo_id::RepoId;
use libfuzzer_sys::fuzz_target;

fn repo_of(command: &Command) -> Option<&RepoId> {
    match command {
        Command::AddRepo { repo_id, .. }
        | Command::RemoveRepo { repo_id }
        | Command::RemovePeer { repo_id, .. }
        | Command::Peers { repo_id }
        | Command::Publish { repo_id, .. }
        | Command::Sync { repo_id } => Some(repo_id),
        Command::List | Command::Status | Command::Ticket => None,
    }
}

fuzz_target!(|data: &[u8]| {
    let command = match parse_command(data) {
        Ok(command) => command,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    if let Some(repo_id) = repo_of(&command) {
        assert_eq!(RepoId::parse(repo_id.as_str()).as_ref(), Ok(repo_id));
    }
    let timeout = command.timeout();
    assert!(timeout == QUICK_TIMEOUT || timeout == LONG_TIMEOUT);

    let mut line = serde_json::to_vec(&command).expect("command serializes");
    let again = parse_command(&line).expect("serialized command is rejected");
    assert_eq!(again, command, "command changed in a round trip");
    line.push(b'\n');
    let again = parse_command(&line).expect("serialized command with newline is rejected");
    assert_eq!(again, command);
});
