//! The admin protocol's plain data: the replies, payloads and events a node
//! sends its operators. The repository core builds them; the admin socket
//! ([`crate::admin`]) carries them, together with the commands. Nothing
//! here does I/O or survives a restart.

mod events;
mod reply;

pub use events::*;
pub use reply::*;
