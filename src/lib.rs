//! knotd library.
