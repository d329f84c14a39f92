//! knotd library.

pub mod git;
pub mod manifest;
pub mod materialize;
