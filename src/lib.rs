//! knotd library.

pub mod git;
