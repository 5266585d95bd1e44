//! Which mail processes may serve whom: the operator's `--policy` and what
//! a process becomes bound to under it. Apart from the routing tables so
//! the flags can name a policy without pulling in the tables.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// A process serves one user only.
    User,
    /// A process serves one UNIX uid only.
    Uid,
    /// Prefer a process that already serves the user, else the least loaded.
    PreferUser,
}

impl Policy {
    pub fn parse(s: &str) -> Option<Policy> {
        match s {
            "user" => Some(Policy::User),
            "uid" => Some(Policy::Uid),
            "prefer-user" => Some(Policy::PreferUser),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Bound {
    User(String),
    Uid(u32),
}
