//! Who may take a role: the peer's SO_PEERCRED credentials against the
//! uids and group the operator configured. Root and the daemon's own uid
//! are always allowed: they could replace the daemon anyway.

use nix::unistd::{Gid, Group, Uid, User};

use crate::sys::Peer;

#[derive(Debug, Clone, Default)]
pub struct Allowed {
    uids: Vec<u32>,
    group: Option<(Gid, Vec<String>)>,
}

impl Allowed {
    /// Root and our own uid only.
    pub fn owner_only() -> Allowed {
        Allowed::default()
    }

    pub fn with_uids(mut self, uids: &[u32]) -> Allowed {
        self.uids.extend_from_slice(uids);
        self
    }

    /// Members of `name` too (primary or listed in the group file).
    pub fn with_group(mut self, name: &str) -> Result<Allowed, String> {
        match Group::from_name(name) {
            Ok(Some(g)) => {
                self.group = Some((g.gid, g.mem));
                Ok(self)
            }
            Ok(None) => Err(format!("group {name:?} does not exist")),
            Err(e) => Err(format!("looking up group {name:?}: {e}")),
        }
    }

    pub fn admits(&self, peer: &Peer) -> bool {
        if peer.uid == 0 || peer.uid == Uid::current().as_raw() || self.uids.contains(&peer.uid) {
            return true;
        }
        let Some((gid, members)) = &self.group else {
            return false;
        };
        if peer.gid == gid.as_raw() {
            return true;
        }
        match User::from_uid(Uid::from_raw(peer.uid)) {
            Ok(Some(u)) => members.contains(&u.name),
            _ => false,
        }
    }
}

/// `UID[,UID...]`, each a number or a user name.
pub fn parse_uids(list: &str) -> Result<Vec<u32>, String> {
    list.split(',')
        .filter(|s| !s.is_empty())
        .map(|s| match s.parse::<u32>() {
            Ok(n) => Ok(n),
            Err(_) => match User::from_name(s) {
                Ok(Some(u)) => Ok(u.uid.as_raw()),
                _ => Err(format!("{s:?} is neither a uid nor a user")),
            },
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(uid: u32, gid: u32) -> Peer {
        Peer { pid: 1, uid, gid }
    }

    #[test]
    fn root_and_our_uid_always_others_only_when_listed() {
        let me = Uid::current().as_raw();
        let a = Allowed::owner_only();
        assert!(a.admits(&peer(0, 0)));
        assert!(a.admits(&peer(me, 0)));
        let stranger = if me == 4242 { 4243 } else { 4242 };
        assert!(!a.admits(&peer(stranger, 4242)));
        assert!(a.clone().with_uids(&[stranger]).admits(&peer(stranger, 1)));
    }

    #[test]
    fn uid_lists_take_numbers_and_names() {
        assert_eq!(parse_uids("0,65534").unwrap(), vec![0, 65534]);
        assert_eq!(parse_uids("root").unwrap(), vec![0]);
        assert!(parse_uids("no-such-user-here").is_err());
    }
}
