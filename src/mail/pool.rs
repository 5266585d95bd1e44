//! Several imap-idle daemons for one mail process: one [`IdleLink`] each,
//! parks spread over them by user (each user has a home daemon, the same
//! in every mail process, so that a user's connections share one user
//! entry and one set of watches there), and a daemon that refuses for want of
//! room (full, out of inotify watches, shutting down) or cannot be reached
//! passes the client on to the next. Only when every daemon said no does
//! the mail process keep the client. One process's open-file limit caps a
//! daemon at about that many clients; several daemons lift the cap.

use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::park::{IdleLink, Kept, NotParked};
use crate::proto::native::{Park, RefuseKind};

/// A daemon that refused for want of room is tried after the others for
/// this long: asking it first again would cost a round trip for nothing.
pub const FULL_BACKOFF: Duration = Duration::from_secs(1);

/// Where a client went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParkedIn {
    /// The daemon's id for the client (`Parked`).
    pub idle_id: u64,
    /// The daemon's pid from its Hello (`Release::Parked` names it).
    pub idle_pid: u32,
    /// Which of the pool's sockets, in the order given.
    pub daemon: usize,
    /// Daemons that refused or could not be reached before this one.
    pub passed_over: usize,
}

struct Daemon {
    path: PathBuf,
    link: Option<IdleLink>,
    /// Refused for want of room lately: asked last until then.
    full_until: Option<Instant>,
}

pub struct IdlePool {
    daemons: Vec<Daemon>,
}

/// The daemon `user`'s clients are offered to first (FNV-1a of the name):
/// stable across mail processes and restarts, and spread evenly.
fn home(user: &str, daemons: usize) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in user.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    (h % daemons.max(1) as u64) as usize
}

/// Whether another daemon may take what this one refused: yes when the
/// refusal is about this daemon's room, no when it is about the park
/// itself (any daemon would refuse it the same).
fn another_may_take(kind: Option<RefuseKind>) -> bool {
    match kind {
        // Could not be asked at all.
        None => true,
        Some(RefuseKind::Full | RefuseKind::WatchLimit | RefuseKind::ShuttingDown) => true,
        Some(RefuseKind::BadWatch | RefuseKind::BadFd | RefuseKind::Invalid) => false,
    }
}

impl IdlePool {
    /// The daemons' park sockets; connected on first use.
    pub fn new(paths: Vec<PathBuf>) -> IdlePool {
        IdlePool {
            daemons: paths
                .into_iter()
                .map(|path| Daemon {
                    path,
                    link: None,
                    full_until: None,
                })
                .collect(),
        }
    }

    pub fn len(&self) -> usize {
        self.daemons.len()
    }

    pub fn is_empty(&self) -> bool {
        self.daemons.is_empty()
    }

    /// The order to ask in: from the user's home daemon on, the daemons
    /// that refused for room lately last.
    fn order(&self, user: &str, now: Instant) -> Vec<usize> {
        let n = self.daemons.len();
        let start = home(user, n);
        let mut order: Vec<usize> = (0..n).map(|k| (start + k) % n).collect();
        order.sort_by_key(|&i| self.daemons[i].full_until.is_some_and(|t| t > now));
        order
    }

    /// Park `client` in the first daemon that takes it. `Kept` gives it
    /// back when none did (the reason names each refusal), or when the
    /// park itself was refused; `Lost` as for [`IdleLink::park`].
    pub fn park(&mut self, client: OwnedFd, park: &Park) -> Result<ParkedIn, NotParked> {
        let now = Instant::now();
        let mut client = client;
        let mut kind = None;
        let mut refusals = Vec::new();
        for (tried, i) in self.order(&park.user, now).into_iter().enumerate() {
            let d = &mut self.daemons[i];
            if !d.link.as_ref().is_some_and(IdleLink::is_open) {
                match IdleLink::connect(&d.path) {
                    Ok(l) => d.link = Some(l),
                    Err(e) => {
                        d.link = None;
                        refusals.push(format!("{}: {e}", d.path.display()));
                        continue;
                    }
                }
            }
            let Some(link) = d.link.as_mut() else {
                continue;
            };
            let pid = link.daemon_pid();
            match link.park(client, park) {
                Ok(idle_id) => {
                    d.full_until = None;
                    return Ok(ParkedIn {
                        idle_id,
                        idle_pid: pid,
                        daemon: i,
                        passed_over: tried,
                    });
                }
                Err(NotParked::Kept(kept)) => {
                    if !link.is_open() {
                        d.link = None;
                    }
                    if !another_may_take(kept.kind) {
                        return Err(NotParked::Kept(kept));
                    }
                    if kept.kind.is_some() {
                        d.full_until = Some(now + FULL_BACKOFF);
                    }
                    refusals.push(format!("{} (pid {pid}): {}", d.path.display(), kept.reason));
                    kind = kept.kind.or(kind);
                    client = kept.client;
                }
                Err(lost) => {
                    d.link = None;
                    return Err(lost);
                }
            }
        }
        let reason = if refusals.is_empty() {
            "no imap-idle configured".to_owned()
        } else {
            refusals.join("; ")
        };
        Err(NotParked::Kept(Kept {
            client,
            kind,
            reason,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::native::{self, Message, Role, MAX_PACKET};
    use crate::sys::SeqPacket;
    use std::path::Path;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    /// A stand-in imap-idle with pid `pid` that takes `room` parks, then
    /// refuses with `Full`; counts the parks it was asked for.
    fn daemon(path: &Path, pid: u32, room: u64) -> Arc<AtomicU64> {
        let listener = SeqPacket::listen(path, 0o600).unwrap();
        listener.set_nonblocking(false).unwrap();
        let asked = Arc::new(AtomicU64::new(0));
        let count = asked.clone();
        std::thread::spawn(move || {
            let mut buf = vec![0; MAX_PACKET + 1];
            while let Ok(sock) = listener.accept() {
                let _ = sock.set_nonblocking(false);
                loop {
                    let Ok(inc) = native::recv(&sock, &mut buf) else {
                        break;
                    };
                    let answer = match inc.msg {
                        Message::Hello { .. } => Message::Hello {
                            role: Role::Idle,
                            pid,
                        },
                        Message::Park { req, .. } => {
                            let n = count.fetch_add(1, Ordering::SeqCst);
                            if n < room {
                                Message::Parked { req, id: n + 1 }
                            } else {
                                Message::Refused {
                                    req,
                                    kind: RefuseKind::Full,
                                    reason: "full".into(),
                                }
                            }
                        }
                        _ => break,
                    };
                    if native::send(&sock, &answer, None).is_err() {
                        break;
                    }
                }
            }
        });
        asked
    }

    fn client() -> OwnedFd {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        a.into()
    }

    fn park() -> Park {
        Park {
            user: "alice".into(),
            cookie: [1; 16],
            tag: "a1".into(),
            in_idle: true,
            keepalive_secs: 0,
            watch: Vec::new(),
            state: Vec::new(),
        }
    }

    fn park_for(user: &str) -> Park {
        Park {
            user: user.into(),
            ..park()
        }
    }

    #[test]
    fn a_user_goes_home_and_a_full_daemon_passes_clients_on() {
        let t = tempfile::tempdir().unwrap();
        let paths: Vec<PathBuf> = (0..3).map(|i| t.path().join(format!("park{i}"))).collect();
        let asked: Vec<_> = [(101, 1), (102, 100), (103, 100)]
            .iter()
            .zip(&paths)
            .map(|(&(pid, room), p)| daemon(p, pid, room))
            .collect();
        let mut pool = IdlePool::new(paths);
        // Users spread over the daemons; each user's clients stay together.
        let users: Vec<String> = (0..30).map(|i| format!("u{i}")).collect();
        let homes: Vec<usize> = users.iter().map(|u| home(u, 3)).collect();
        assert!((0..3).all(|d| homes.contains(&d)), "{homes:?}");
        for u in users.iter().filter(|u| home(u, 3) != 0) {
            let got: Vec<_> = (0..3)
                .map(|_| pool.park(client(), &park_for(u)).unwrap())
                .collect();
            assert!(
                got.iter()
                    .all(|p| p.daemon == home(u, 3) && p.passed_over == 0),
                "{got:?}"
            );
        }
        // Daemon 0 has room for one: the next client of a user at home
        // there passes on, and for a while daemon 0 is asked last.
        let u0 = users.iter().find(|u| home(u, 3) == 0).unwrap();
        let first = pool.park(client(), &park_for(u0)).unwrap();
        assert_eq!((first.idle_pid, first.passed_over), (101, 0));
        let second = pool.park(client(), &park_for(u0)).unwrap();
        assert_ne!(second.idle_pid, 101);
        assert_eq!(second.passed_over, 1);
        let third = pool.park(client(), &park_for(u0)).unwrap();
        assert_eq!(
            third.passed_over, 0,
            "the full daemon was asked first again"
        );
        assert_eq!(asked[0].load(Ordering::SeqCst), 2);
    }

    #[test]
    fn when_every_daemon_refuses_the_client_is_kept_with_every_reason() {
        let t = tempfile::tempdir().unwrap();
        let paths = vec![t.path().join("a"), t.path().join("missing")];
        daemon(&paths[0], 7, 0);
        let mut pool = IdlePool::new(paths);
        match pool.park(client(), &park()) {
            Err(NotParked::Kept(k)) => {
                assert_eq!(k.kind, Some(RefuseKind::Full));
                assert!(k.reason.contains("(pid 7): full"), "{}", k.reason);
                assert!(k.reason.contains("missing"), "{}", k.reason);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn only_refusals_about_room_are_passed_on() {
        for kind in [
            RefuseKind::Full,
            RefuseKind::WatchLimit,
            RefuseKind::ShuttingDown,
        ] {
            assert!(another_may_take(Some(kind)));
        }
        for kind in [RefuseKind::BadWatch, RefuseKind::BadFd, RefuseKind::Invalid] {
            assert!(!another_may_take(Some(kind)));
        }
        assert!(another_may_take(None));
    }
}
