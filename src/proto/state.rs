//! The session state a mail process built on this crate exports when it
//! parks a client, and restores from when the client comes back.
//!
//! Binary form: a version byte, then postcard. Text form: base64 of the
//! binary form, for an `X-STATE` style command. Decoding checks everything
//! and never panics.

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::base64;
use super::native::{MAX_STATE, MAX_TAG, MAX_WATCH};

pub const STATE_VERSION: u8 = 1;

/// A set of UIDs as sorted, non-overlapping inclusive ranges.
pub type UidSet = Vec<(u32, u32)>;

#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionState {
    /// Whose session this is: a state is only ever restored for its user.
    pub user: String,
    /// Selected mailbox name (UTF-8 form).
    pub mailbox: String,
    /// Mailbox GUID, to tell a recreated mailbox of the same name apart.
    pub mailbox_guid: [u8; 16],
    pub uidvalidity: u32,
    /// Opened with EXAMINE (read-only) rather than SELECT.
    pub examined: bool,
    /// Highest MODSEQ the client has been told about.
    pub highest_modseq: u64,
    /// UIDs that are `\Recent` in this session.
    pub recent_uids: UidSet,
    /// The saved SEARCHRES result (`$`), if any.
    pub searchres: Option<UidSet>,
    /// MD5 of the keyword list last sent in FLAGS / PERMANENTFLAGS.
    pub keywords_md5: [u8; 16],
    /// Paths whose change must wake the session.
    #[serde(with = "super::paths")]
    pub watch: Vec<PathBuf>,
    /// Tag of the running IDLE command.
    pub tag: String,
    /// Seconds between `* OK Still here` while idle; 0 disables them.
    pub keepalive_secs: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateError {
    Empty,
    Version(u8),
    Malformed(String),
    TooLong,
    Invalid(&'static str),
    Base64,
}

impl fmt::Display for StateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StateError::Empty => write!(f, "empty state"),
            StateError::Version(v) => write!(f, "unsupported state version {v}"),
            StateError::Malformed(e) => write!(f, "malformed state: {e}"),
            StateError::TooLong => write!(f, "state longer than {MAX_STATE} bytes"),
            StateError::Invalid(what) => write!(f, "invalid state: {what}"),
            StateError::Base64 => write!(f, "state is not valid base64"),
        }
    }
}

impl std::error::Error for StateError {}

impl SessionState {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![STATE_VERSION];
        out.extend(postcard::to_stdvec(self).unwrap_or_default());
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<SessionState, StateError> {
        let (&version, body) = bytes.split_first().ok_or(StateError::Empty)?;
        if version != STATE_VERSION {
            return Err(StateError::Version(version));
        }
        if bytes.len() > MAX_STATE {
            return Err(StateError::TooLong);
        }
        let (state, rest): (SessionState, _) =
            postcard::take_from_bytes(body).map_err(|e| StateError::Malformed(e.to_string()))?;
        if !rest.is_empty() {
            return Err(StateError::Malformed(format!(
                "{} trailing bytes",
                rest.len()
            )));
        }
        state.check()?;
        Ok(state)
    }

    pub fn to_text(&self) -> String {
        base64::encode(&self.encode())
    }

    pub fn from_text(text: &str) -> Result<SessionState, StateError> {
        if text.len() > MAX_STATE * 4 / 3 + 4 {
            return Err(StateError::TooLong);
        }
        SessionState::decode(&base64::decode(text).map_err(|_| StateError::Base64)?)
    }

    /// The blob to park with. User, tag, watch paths and keepalive travel in
    /// the park message itself and come back in the return (the tag may
    /// change while parked), so they are left out here instead of being
    /// stored twice.
    pub fn park_blob(&self) -> Vec<u8> {
        SessionState {
            user: String::new(),
            watch: Vec::new(),
            tag: String::new(),
            ..self.clone()
        }
        .encode()
    }

    /// Rebuild the state from a parked blob and the fields that travelled
    /// beside it.
    pub fn from_park_blob(
        blob: &[u8],
        user: &str,
        tag: &str,
        watch: &[PathBuf],
        keepalive_secs: u32,
    ) -> Result<SessionState, StateError> {
        let mut state = SessionState::decode(blob)?;
        state.user = user.to_owned();
        state.tag = tag.to_owned();
        state.watch = watch.to_vec();
        state.keepalive_secs = keepalive_secs;
        Ok(state)
    }

    fn check(&self) -> Result<(), StateError> {
        if self.tag.len() > MAX_TAG {
            return Err(StateError::Invalid("tag too long"));
        }
        if self.watch.len() > MAX_WATCH {
            return Err(StateError::Invalid("too many watch paths"));
        }
        for set in std::iter::once(&self.recent_uids).chain(self.searchres.as_ref()) {
            let mut prev: Option<u32> = None;
            for &(lo, hi) in set {
                if lo == 0 || lo > hi || prev.is_some_and(|p| lo <= p) {
                    return Err(StateError::Invalid("UID ranges not sorted and disjoint"));
                }
                prev = Some(hi);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> SessionState {
        SessionState {
            user: "alice".into(),
            mailbox: "INBOX".into(),
            mailbox_guid: *b"0123456789abcdef",
            uidvalidity: 1_700_000_000,
            examined: false,
            highest_modseq: 4711,
            recent_uids: vec![(5, 7), (9, 9)],
            searchres: Some(vec![(1, 3)]),
            keywords_md5: [0xaa; 16],
            watch: vec!["/srv/mail/alice/Maildir/new".into()],
            tag: "A0042".into(),
            keepalive_secs: 120,
        }
    }

    #[test]
    fn binary_and_text_round_trip() {
        let s = sample();
        assert_eq!(SessionState::decode(&s.encode()).unwrap(), s);
        assert_eq!(SessionState::from_text(&s.to_text()).unwrap(), s);
    }

    #[test]
    fn park_blob_leaves_out_the_envelope_and_comes_back_whole() {
        let s = sample();
        let blob = s.park_blob();
        assert!(blob.len() < s.encode().len());
        let back = SessionState::from_park_blob(&blob, &s.user, &s.tag, &s.watch, s.keepalive_secs);
        assert_eq!(back.unwrap(), s);
    }

    #[test]
    fn damaged_states_are_errors() {
        assert_eq!(SessionState::decode(&[]), Err(StateError::Empty));
        assert_eq!(
            SessionState::decode(&[9, 1, 2]),
            Err(StateError::Version(9))
        );
        assert_eq!(SessionState::from_text("!!!!"), Err(StateError::Base64));
        let mut bad = sample();
        bad.recent_uids = vec![(7, 5)];
        assert!(matches!(
            SessionState::decode(&bad.encode()),
            Err(StateError::Invalid(_))
        ));
        let good = sample().encode();
        for n in 0..good.len() {
            let _ = SessionState::decode(&good[..n]);
            let mut flipped = good.clone();
            flipped[n] ^= 0xff;
            let _ = SessionState::decode(&flipped);
        }
    }
}
