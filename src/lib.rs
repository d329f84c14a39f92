//! knotd library.

pub mod git;
pub mod manifest;
