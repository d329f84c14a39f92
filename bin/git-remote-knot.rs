//! `git-remote-knot`: the git remote helper for `knot://<did>/<name>` URLs.
//!
//! git runs it as `git-remote-knot <remote> <url>` inside the repository and
//! talks to it over stdin/stdout; the protocol and the work live in
//! [`knotd::remote_helper`]. The node's admin socket is found through
//! `KNOT_SOCKET`, else `git config knot.socket`, else `KNOTD_CONFIG` /
//! `KNOTD_DATA_DIR`, else the user's own node, else the system service.

use std::{io::IsTerminal, process::ExitCode};

use knotd::remote_helper::{Session, locate};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!(
            "usage: git-remote-knot <remote> <url>\n\
             git runs this helper for knot://<did>/<name> URLs, e.g.\n  \
             git clone knot://did:plc:abc123/website"
        );
        return ExitCode::from(129);
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("fatal: knot: cannot start the tokio runtime: {e}");
            return ExitCode::from(128);
        }
    };
    let result = runtime.block_on(async {
        let (socket, source) = locate().map_err(|e| e.to_string())?;
        let mut session = Session::new(&args[2], socket, source, std::io::stderr().is_terminal())
            .map_err(|e| e.to_string())?;
        let input = tokio::io::BufReader::new(tokio::io::stdin());
        session
            .run(input, tokio::io::stdout())
            .await
            .map_err(|e| e.to_string())
    });
    // Reading stdin blocks a thread that may still wait for git.
    runtime.shutdown_background();
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("fatal: knot: {e}");
            ExitCode::from(128)
        }
    }
}
