//! Who may take which role. Each role has credentials of its own, checked
//! against SO_PEERCRED when a peer claims the role in its Hello: login
//! processes (`--login-uid`), mail processes (`--mail-uid`), imap-idle
//! (`--idle-uid`), and admins on the control socket (root, the tracker's
//! own uid, or the `--admin-group`). Separate lists, because a uid trusted
//! as a mail process must not be able to hand over a client as a login
//! process and so pick whose mail process receives it. Root is admitted
//! to every role: it could take any of them anyway.

use nix::unistd::{Gid, Group, Uid, User};

use super::config::Config;
use crate::proto::native::Role;
use crate::sys::Peer;

pub struct Trust {
    login: Vec<u32>,
    mail: Vec<u32>,
    idle: Vec<u32>,
    admin_group: Option<String>,
    own: u32,
}

impl Trust {
    /// The lists from the flags; a role without its flag is the tracker's
    /// own uid's (and root's) only.
    pub fn new(cfg: &Config) -> Trust {
        let own = nix::unistd::geteuid().as_raw();
        let or_own = |l: &Option<Vec<u32>>| l.clone().unwrap_or_else(|| vec![own]);
        Trust {
            login: or_own(&cfg.login_uids),
            mail: or_own(&cfg.mail_uids),
            idle: or_own(&cfg.idle_uid.map(|u| vec![u])),
            admin_group: cfg.admin_group.clone(),
            own,
        }
    }

    /// For the start-up log line.
    pub fn describe(&self) -> String {
        let list = |l: &[u32]| {
            let mut v: Vec<String> = vec!["0".into()];
            v.extend(l.iter().filter(|u| **u != 0).map(u32::to_string));
            v.join(",")
        };
        format!(
            "login uids {}, mail uids {}, idle uids {}, admins uids {}{}",
            list(&self.login),
            list(&self.mail),
            list(&self.idle),
            list(&[self.own]),
            self.admin_group
                .as_ref()
                .map(|g| format!(" and group {g}"))
                .unwrap_or_default()
        )
    }

    /// Uids trusted both as login and as mail processes, which defeats the
    /// point of telling them apart (warned about at start).
    pub fn overlap(&self) -> Vec<u32> {
        self.login
            .iter()
            .filter(|u| **u != 0 && self.mail.contains(u))
            .copied()
            .collect()
    }

    /// May `cred`, connected on the control socket or not, take `role`?
    /// Err says why not.
    pub fn admit(&self, role: Role, cred: &Peer, control: bool) -> Result<(), String> {
        let here = match role {
            Role::Admin => control,
            Role::Login | Role::MailProcess | Role::Idle => !control,
            Role::Tracker | Role::Successor => false,
        };
        if !here {
            return Err(if control {
                format!("the control socket takes admin requests only, not {role:?}")
            } else {
                format!("role {role:?} is not taken here")
            });
        }
        let uid = cred.uid;
        if uid == 0 {
            return Ok(());
        }
        let (ok, flag) = match role {
            Role::Login => (self.login.contains(&uid), "--login-uid"),
            Role::MailProcess => (self.mail.contains(&uid), "--mail-uid"),
            Role::Idle => (self.idle.contains(&uid), "--idle-uid"),
            _ => (
                uid == self.own || self.in_admin_group(cred),
                "--admin-group",
            ),
        };
        if ok {
            Ok(())
        } else {
            Err(format!("uid {uid} may not take the {role:?} role ({flag})"))
        }
    }

    /// Is `cred` of the admin group: its gid, or its user among the
    /// group's members? Looked up each time, so a change to the group
    /// takes effect without a restart.
    fn in_admin_group(&self, cred: &Peer) -> bool {
        let Some(name) = &self.admin_group else {
            return false;
        };
        let Ok(Some(group)) = Group::from_name(name) else {
            return false;
        };
        if group.gid == Gid::from_raw(cred.gid) {
            return true;
        }
        match User::from_uid(Uid::from_raw(cred.uid)) {
            Ok(Some(user)) => group.mem.contains(&user.name),
            _ => false,
        }
    }
}

/// The gid of the admin group `name`, which must exist.
pub fn admin_gid(name: &str) -> Result<Gid, String> {
    match Group::from_name(name) {
        Ok(Some(g)) => Ok(g.gid),
        Ok(None) => Err(format!("--admin-group: no group {name:?}")),
        Err(e) => Err(format!("--admin-group: looking up {name:?}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trust(login: &[u32], mail: &[u32], idle: u32) -> Trust {
        Trust {
            login: login.to_vec(),
            mail: mail.to_vec(),
            idle: vec![idle],
            admin_group: None,
            own: 7,
        }
    }

    fn peer(uid: u32) -> Peer {
        Peer {
            pid: 1,
            uid,
            gid: 12345,
        }
    }

    #[test]
    fn each_role_has_its_own_uids() {
        let t = trust(&[10], &[20, 21], 30);
        assert!(t.admit(Role::Login, &peer(10), false).is_ok());
        let e = t.admit(Role::Login, &peer(20), false).unwrap_err();
        assert_eq!(e, "uid 20 may not take the Login role (--login-uid)");
        assert!(t.admit(Role::MailProcess, &peer(21), false).is_ok());
        assert!(t.admit(Role::MailProcess, &peer(10), false).is_err());
        assert!(t.admit(Role::Idle, &peer(30), false).is_ok());
        assert!(t.admit(Role::Idle, &peer(20), false).is_err());
        for role in [Role::Login, Role::MailProcess, Role::Idle] {
            assert!(t.admit(role, &peer(0), false).is_ok(), "root: {role:?}");
            assert!(t.admit(role, &peer(0), true).is_err(), "control: {role:?}");
        }
        assert!(t.admit(Role::Admin, &peer(7), true).is_ok());
        assert!(t.admit(Role::Admin, &peer(0), true).is_ok());
        assert!(t.admit(Role::Admin, &peer(10), true).is_err());
        assert!(t.admit(Role::Admin, &peer(0), false).is_err());
        assert!(t.admit(Role::Tracker, &peer(0), false).is_err());
        assert!(t.overlap().is_empty());
        assert_eq!(trust(&[10, 20], &[20], 30).overlap(), vec![20]);
    }
}
