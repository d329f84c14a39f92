//! `knotd admin mirror` and the printing of mirror rows.

use anyhow::Result;
use clap::Args;
use knotd::{
    admin::{Command, MirrorView},
    repo_id::RepoId,
};

/// Arguments of `knotd admin mirror`.
#[derive(Args)]
pub struct MirrorArgs {
    /// The git URL: https://, http:// or git:// (a local path when the
    /// node's config sets mirror.allow_local).
    source: String,
    /// The repository id to publish it under, `<did>/<name>`; a Tangled
    /// knot's URL names it already.
    #[arg(long)]
    repo_id: Option<String>,
}

impl MirrorArgs {
    /// The admin command.
    pub fn command(self) -> Result<Command> {
        Ok(Command::Mirror {
            source: self.source,
            repo_id: self.repo_id.as_deref().map(RepoId::parse).transpose()?,
        })
    }
}

/// One paragraph per mirror.
pub fn print(mirrors: &[MirrorView]) {
    if mirrors.is_empty() {
        println!("no mirrors");
    }
    for m in mirrors {
        println!("{}  <-  {}", m.repo_id, m.source);
        let state = match (&m.manifest, m.fetching) {
            (_, true) => "fetching now".to_owned(),
            (Some(manifest), false) => format!(
                "holds {}; next fetch in {} s",
                &manifest[..manifest.len().min(12)],
                m.next_fetch_secs
            ),
            (None, false) => format!("nothing yet; next fetch in {} s", m.next_fetch_secs),
        };
        println!("    {state}");
        if let Some(e) = &m.error {
            let class = match e.status {
                Some(status) => format!("{} {status}", e.class),
                None => e.class.clone(),
            };
            println!(
                "    failing ({} in a row), {class}: {}",
                m.failures, e.message
            );
            println!("    {}", e.hint);
        }
        if let Some(last) = m.rewrites.last() {
            let more = match last.more {
                0 => String::new(),
                n => format!(" and {n} more"),
            };
            println!(
                "    the upstream last deleted or rewrote refs {} s ago ({}{more}; state {}); {} such states kept",
                knotd::clock::unix_millis().saturating_sub(last.at) / 1000,
                last.refs.join(", "),
                &last.manifest[..last.manifest.len().min(12)],
                m.rewrites.len()
            );
        }
    }
}
