//! Wire encodings: the native protocol between our processes, the session
//! state a mail process exports, and the small codecs they need.

pub mod anvil;
pub mod base64;
pub mod dovecot;
#[cfg(test)]
mod dovecot_captures;
pub mod multiplex;
pub mod native;
mod paths;
pub mod state;
