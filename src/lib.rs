//! knotd: an always-on peer-to-peer seeding node for git repositories.
//!
//! A repository's identity and authoritative state live in an ATProto record
//! (`app.knot.repo`) on its owner's PDS; its bytes are a manifest blob plus git
//! pack blobs, served and fetched over iroh. The binaries in `bin/` are thin
//! wrappers around [`node::run`] and the admin client in [`admin`].

pub mod account;
pub mod admin;
pub mod announce;
pub mod api;
pub mod atproto;
pub mod clock;
pub mod config;
pub mod content;
pub mod core;
pub mod download;
pub mod git;
pub mod gitserve;
pub mod heads;
pub mod http;
pub mod keys;
pub mod knot;
pub mod limits;
pub mod manifest;
pub mod materialize;
pub mod metrics;
pub mod mirror;
pub mod node;
pub mod probe;
pub mod push;
pub mod reader;
pub mod record;
pub mod remote_helper;
pub mod repo_id;
pub mod served;
pub mod state;
pub mod store;
pub mod supervise;
pub mod web;
