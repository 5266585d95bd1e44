//! Valid inputs built with the real encoders, as seeds and as fresh
//! blood during a run: random native messages and session states, and
//! Dovecot lines shaped like the captured ones. Now and then a field
//! steps just past its limit, so both sides of each check are reached.

use std::path::PathBuf;

use super::rng::Rng;
use crate::proto::dovecot::{self, MASTER_SERVICE};
use crate::proto::native::*;
use crate::proto::state::{SessionState, UidSet};

/// Text for a field: usually short and plain, sometimes with the bytes
/// the checks look for, sometimes just over `limit`.
fn text(rng: &mut Rng, limit: usize) -> String {
    const PLAIN: &[u8] = b"abcXYZ019.-_@";
    const ODD: &[char] = &[
        ' ', '\t', '\r', '\n', '\0', '\x01', '\x7f', '(', '"', 'é', '✓',
    ];
    if rng.one_in(16) {
        return "a".repeat(limit + rng.below(2));
    }
    let n = rng.below(12);
    (0..n)
        .map(|_| {
            if rng.one_in(10) {
                *rng.pick(ODD)
            } else {
                *rng.pick(PLAIN) as char
            }
        })
        .collect()
}

fn number(rng: &mut Rng) -> u64 {
    match rng.below(4) {
        0 => rng.below(3) as u64,
        1 => rng.below(1000) as u64,
        2 => rng.u64() >> rng.below(64),
        _ => u64::MAX - rng.below(2) as u64,
    }
}

fn cookie(rng: &mut Rng) -> Cookie {
    let mut c = [0; 16];
    c.iter_mut().for_each(|b| *b = rng.byte());
    c
}

fn paths(rng: &mut Rng) -> Vec<PathBuf> {
    let n = rng.below(MAX_WATCH + 2);
    (0..n)
        .map(|i| match rng.below(8) {
            0 => PathBuf::from(format!("rel/{i}")),
            1 => PathBuf::new(),
            _ => PathBuf::from(format!("/srv/mail/u{i}/Maildir/new")),
        })
        .collect()
}

fn park(rng: &mut Rng) -> Park {
    Park {
        user: text(rng, MAX_USER),
        cookie: cookie(rng),
        tag: text(rng, MAX_TAG),
        in_idle: rng.one_in(2),
        keepalive_secs: number(rng) as u32,
        watch: paths(rng),
        state: rng.bytes(64),
    }
}

fn ret(rng: &mut Rng) -> Return {
    Return {
        id: number(rng),
        park: park(rng),
        reason: *rng.pick(&[
            WakeReason::Done,
            WakeReason::BadDone,
            WakeReason::Input,
            WakeReason::Changed,
            WakeReason::Shutdown,
        ]),
        input: rng.bytes(32),
        idle_running: rng.one_in(2),
        parked_secs: number(rng) as u32,
    }
}

fn activity(rng: &mut Rng) -> Activity {
    *rng.pick(&[
        Activity::Active,
        Activity::Idle,
        Activity::Parked,
        Activity::Returning,
    ])
}

fn user(rng: &mut Rng) -> Option<String> {
    rng.one_in(2).then(|| text(rng, MAX_USER))
}

/// One message of every kind, picked at random, encoded.
pub fn native(rng: &mut Rng) -> Vec<u8> {
    let msg = match rng.below(24) {
        0 => Message::Hello {
            role: *rng.pick(&[
                Role::MailProcess,
                Role::Idle,
                Role::Tracker,
                Role::Admin,
                Role::Login,
            ]),
            pid: number(rng) as u32,
        },
        1 => Message::Error {
            reason: text(rng, MAX_TEXT),
        },
        2 => Message::Park {
            req: number(rng),
            park: park(rng),
        },
        3 => Message::Parked {
            req: number(rng),
            id: number(rng),
        },
        4 => Message::Refused {
            req: number(rng),
            kind: *rng.pick(&[
                RefuseKind::Full,
                RefuseKind::WatchLimit,
                RefuseKind::BadWatch,
                RefuseKind::BadFd,
                RefuseKind::ShuttingDown,
                RefuseKind::Invalid,
            ]),
            reason: text(rng, MAX_TEXT),
        },
        5 => Message::Return(ret(rng)),
        6 => Message::Accepted { id: number(rng) },
        7 => Message::Rejected {
            id: number(rng),
            reason: text(rng, MAX_TEXT),
        },
        8 => Message::Gone(Gone {
            id: number(rng),
            user: text(rng, MAX_USER),
            cookie: cookie(rng),
            reason: *rng.pick(&[
                GoneReason::HungUp,
                GoneReason::OutputFull,
                GoneReason::GaveUp,
            ]),
            detail: text(rng, MAX_TEXT),
        }),
        9 => Message::StatsRequest,
        10 => Message::Stats(Stats {
            parked: number(rng),
            returned: number(rng),
            wake_us: (0..rng.below(8)).map(|_| number(rng) as u32).collect(),
            ..Stats::default()
        }),
        11 => Message::Register {
            uid: number(rng) as u32,
            capacity: number(rng) as u32,
        },
        12 => Message::Registered,
        13 => Message::Login(Login {
            seq: number(rng),
            user: text(rng, MAX_USER),
            uid: number(rng) as u32,
            tag: text(rng, MAX_TAG),
            local: text(rng, MAX_TEXT),
            remote: text(rng, MAX_TEXT),
            input: rng.bytes(32),
        }),
        14 => Message::LoginAccepted {
            seq: number(rng),
            conn: number(rng),
            pid: number(rng) as u32,
        },
        15 => Message::LoginRefused {
            seq: number(rng),
            reason: text(rng, MAX_TEXT),
        },
        16 => Message::Assign(Assign {
            conn: number(rng),
            user: text(rng, MAX_USER),
            uid: number(rng) as u32,
            cookie: cookie(rng),
            remote: text(rng, MAX_TEXT),
            how: if rng.one_in(2) {
                Assignment::Login {
                    tag: text(rng, MAX_TAG),
                    input: rng.bytes(16),
                }
            } else {
                Assignment::Restore(ret(rng))
            },
        }),
        17 => Message::Released {
            conn: number(rng),
            how: if rng.one_in(2) {
                Release::Closed
            } else {
                Release::Parked {
                    idle_id: number(rng),
                    idle_pid: number(rng) as u32,
                    mailbox: text(rng, MAX_TEXT),
                }
            },
        },
        18 => Message::WhoRequest { user: user(rng) },
        19 => Message::Describe {
            query: number(rng),
            user: user(rng),
        },
        20 => Message::Described {
            query: number(rng),
            conns: (0..rng.below(4))
                .map(|_| ConnInfo {
                    id: number(rng),
                    user: text(rng, MAX_USER),
                    mailbox: text(rng, MAX_TEXT),
                    activity: activity(rng),
                    secs: number(rng) as u32,
                })
                .collect(),
            last: rng.one_in(2),
        },
        22 => {
            let held = few(rng, |rng| Held {
                id: number(rng),
                user: text(rng, MAX_USER),
                cookie: cookie(rng),
            });
            let last = rng.one_in(2);
            Message::Holding { held, last }
        }
        23 => {
            let conns = few(rng, |rng| Served {
                conn: number(rng),
                user: text(rng, MAX_USER),
                uid: number(rng) as u32,
                cookie: cookie(rng),
            });
            let last = rng.one_in(2);
            Message::Serving { conns, last }
        }
        _ => Message::Who {
            rows: (0..rng.below(4))
                .map(|_| WhoRow {
                    user: text(rng, MAX_USER),
                    conn: number(rng),
                    pid: number(rng) as u32,
                    mailbox: text(rng, 16),
                    activity: activity(rng),
                    secs: number(rng) as u32,
                    remote: text(rng, 16),
                })
                .collect(),
            missing: (0..rng.below(3)).map(|_| text(rng, 16)).collect(),
            last: rng.one_in(2),
            stale: number(rng),
        },
    };
    msg.encode()
}

/// Up to three items made by `item`.
fn few<T>(rng: &mut Rng, mut item: impl FnMut(&mut Rng) -> T) -> Vec<T> {
    (0..rng.below(4)).map(|_| item(rng)).collect()
}

/// Sorted, disjoint UID ranges, now and then out of order or with 0,
/// now and then reaching the top of the UID space.
pub fn uid_set(rng: &mut Rng) -> UidSet {
    let mut set = Vec::new();
    let mut next = rng.below(3) as u32;
    for _ in 0..rng.below(5) {
        let lo = next.saturating_add(rng.below(10) as u32);
        let hi = if rng.one_in(8) {
            u32::MAX
        } else {
            lo.saturating_add(rng.below(10) as u32)
        };
        set.push((lo, hi));
        next = hi.saturating_add(1 + rng.below(3) as u32);
    }
    if rng.one_in(8) {
        set.reverse();
    }
    set
}

pub fn session_state(rng: &mut Rng) -> SessionState {
    SessionState {
        user: text(rng, MAX_USER),
        mailbox: text(rng, 32),
        mailbox_guid: cookie(rng),
        uidvalidity: number(rng) as u32,
        examined: rng.one_in(2),
        highest_modseq: number(rng),
        recent_uids: uid_set(rng),
        searchres: rng.one_in(2).then(|| uid_set(rng)),
        keywords_md5: cookie(rng),
        watch: paths(rng),
        tag: text(rng, MAX_TAG),
        keepalive_secs: number(rng) as u32,
    }
}

pub fn state(rng: &mut Rng) -> Vec<u8> {
    let s = session_state(rng);
    if rng.one_in(4) {
        s.park_blob()
    } else {
        s.encode()
    }
}

pub fn state_text(rng: &mut Rng) -> Vec<u8> {
    session_state(rng).to_text().into_bytes()
}

/// A hand-off line like imap's, fields in random order and number.
pub fn hibernate(rng: &mut Rng) -> Vec<u8> {
    let state = session_state(rng).encode();
    let fields: Vec<Vec<u8>> = vec![
        b"idle_notify_interval=120".to_vec(),
        format!("peer_dev_major={}", rng.below(300)).into_bytes(),
        b"peer_dev_minor=9".to_vec(),
        format!("peer_ino={}", number(rng)).into_bytes(),
        b"session=0OFp0tpg8sF/AAAB".to_vec(),
        b"session_created=1795342809".to_vec(),
        rng.pick(&["lip=127.0.0.1", "lip=::1", "lip=fe80::1%eth0", "lip=1.2.3"])
            .as_bytes()
            .to_vec(),
        format!("lport={}", number(rng) % 70_000).into_bytes(),
        b"rip=127.0.0.1".to_vec(),
        b"rport=49650".to_vec(),
        b"userdb_fields=uid=999\tgid=995\thome=/var/vmail/alice".to_vec(),
        b"uid=999".to_vec(),
        b"gid=995".to_vec(),
        format!("mailbox={}", text(rng, 16)).into_bytes(),
        format!("tag={}", text(rng, 8)).into_bytes(),
        b"stats=in=24 out=744".to_vec(),
        b"idle-cmd".to_vec(),
        b"notify_fd".to_vec(),
        format!("state={}", crate::proto::base64::encode(&state)).into_bytes(),
    ];
    let mut out = Vec::new();
    dovecot::escape(text(rng, 8).as_bytes(), &mut out);
    out.extend_from_slice(b"\t%s(%u)<%{pid}><%{session}>: ");
    for f in fields {
        // The tag is what most often decides; keep it more often.
        if rng.below(4) > 0 || (f.starts_with(b"tag=") && rng.below(8) > 0) {
            out.push(b'\t');
            dovecot::escape(&f, &mut out);
        }
    }
    out
}

pub fn master_answer(rng: &mut Rng) -> Vec<u8> {
    match rng.below(4) {
        0 => b"+".to_vec(),
        1 => format!("-{}", text(rng, 16)).into_bytes(),
        2 => {
            let mut v = dovecot::version_line(MASTER_SERVICE);
            v.pop();
            v
        }
        _ => format!(
            "VERSION\t{MASTER_SERVICE}\t{}\t{}",
            rng.below(3),
            number(rng)
        )
        .into_bytes(),
    }
}

const DONES: [&[u8]; 4] = [b"DONE", b"done", b"DoNe", b"DON"];
const ENDS: [&[u8]; 4] = [b"\r\n", b"\n", b"\r", b""];
const NEXT: [&[u8]; 4] = [b" IDLE\r\n", b" idle\n", b" IDLE", b" NOOP\r\n"];

pub fn idle_input(rng: &mut Rng) -> Vec<u8> {
    let mut out = rng.pick(&DONES).to_vec();
    out.extend_from_slice(ENDS[rng.below(ENDS.len())]);
    if rng.one_in(2) {
        out.extend_from_slice(text(rng, 128).as_bytes());
        out.extend_from_slice(NEXT[rng.below(NEXT.len())]);
    }
    out
}
