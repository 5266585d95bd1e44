//! `imap-tracker who`: the tracker asks the mail processes concerned and
//! every imap-idle it is configured with (`--idle-socket`, repeatable)
//! what each connection is doing, and answers with one table. A parked
//! connection is matched to a daemon's answer by that daemon's pid (from
//! the Hello on our query connection) and its id, as the mail process
//! named both when it parked the client.
//! `Who` owns the queries in flight; the connections it talks over and
//! the routing tables it reports on are lent to it by the daemon, which
//! also undoes what a peer closed here leaves behind.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::{Duration, Instant};

use log::warn;
use mio::Registry;

use super::parking::IdleRef;
use super::peers::Peers;
use super::routing::{Place, Routing};
use crate::proto::native::{self, chunks, Activity, ConnInfo, Message, Role, WhoRow};
use crate::sys::{Peer, SeqPacket};

pub use super::report::{ask, table, Answer as WhoAnswer};

/// How long the peers have to answer.
const ANSWER_WITHIN: Duration = Duration::from_secs(2);

struct WhoQuery {
    id: u64,
    admin: usize,
    user: Option<String>,
    /// Peers that have not finished answering.
    waiting: HashSet<usize>,
    /// Mail processes' answers by our connection id.
    mail: HashMap<u64, ConnInfo>,
    /// The imap-idle daemons' answers by their pid and own id.
    idle: HashMap<IdleRef, ConnInfo>,
    missing: Vec<String>,
    deadline: Instant,
}

/// What the daemon does after an answer: close our connection to
/// imap-idle, and answer the admin.
pub(super) struct Answer {
    pub close: bool,
    pub done: bool,
}

pub(super) struct Who {
    queries: Vec<WhoQuery>,
    next_query: u64,
}

impl Default for Who {
    fn default() -> Who {
        Who {
            queries: Vec::new(),
            next_query: 1,
        }
    }
}

impl Who {
    pub fn next_deadline(&self) -> Option<Instant> {
        self.queries.iter().map(|q| q.deadline).min()
    }

    fn query(&mut self, id: u64) -> Option<&mut WhoQuery> {
        self.queries.iter_mut().find(|q| q.id == id)
    }

    /// Open a query for `admin`; returns its id and the mail processes to
    /// [`Who::ask`], then the caller tries [`Who::connect_idle`] for each
    /// imap-idle.
    pub fn open(
        &mut self,
        admin: usize,
        user: Option<String>,
        routing: &Routing,
    ) -> (u64, Vec<usize>) {
        let id = self.next_query;
        self.next_query += 1;
        let ask: Vec<usize> = routing
            .procs
            .iter()
            .filter(|(_, p)| user.as_deref().is_none_or(|u| p.serves(u)))
            .map(|(&k, _)| k)
            .collect();
        self.queries.push(WhoQuery {
            id,
            admin,
            user,
            waiting: HashSet::new(),
            mail: HashMap::new(),
            idle: HashMap::new(),
            missing: Vec::new(),
            deadline: Instant::now() + ANSWER_WITHIN,
        });
        (id, ask)
    }

    /// Ask mail process `key` for query `id`.
    pub fn ask(
        &mut self,
        id: u64,
        key: usize,
        peers: &mut Peers,
        routing: &Routing,
        registry: &Registry,
    ) {
        let Some(q) = self.query(id) else {
            return;
        };
        let describe = Message::Describe {
            query: id,
            user: q.user.clone(),
        };
        if peers.send(registry, key, &describe, routing.blocked(key)) {
            q.waiting.insert(key);
        }
    }

    /// If query `id` concerns parked connections, connect to the imap-idle
    /// at `idle_socket` for it; returns the new peer, which the caller
    /// reads once.
    pub fn connect_idle(
        &mut self,
        id: u64,
        idle_socket: &Path,
        peers: &mut Peers,
        routing: &Routing,
        registry: &Registry,
    ) -> Option<usize> {
        let q = self.query(id)?;
        routing.parked_of(q.user.as_deref()).next()?;
        match connect_idle(id, idle_socket, peers, registry) {
            Ok(key) => {
                q.waiting.insert(key);
                Some(key)
            }
            Err(e) => {
                q.missing
                    .push(format!("imap-idle ({}): {e}", idle_socket.display()));
                None
            }
        }
    }

    /// Has every peer asked for query `id` answered (or failed)?
    pub fn answered(&self, id: u64) -> bool {
        self.queries
            .iter()
            .any(|q| q.id == id && q.waiting.is_empty())
    }

    /// imap-idle said hello on query connection `key`: ask it.
    pub fn ask_idle(
        &self,
        key: usize,
        peers: &mut Peers,
        routing: &Routing,
        registry: &Registry,
    ) -> bool {
        let Some(query) = peers.get(key).and_then(|p| p.query()) else {
            return false;
        };
        let user = self
            .queries
            .iter()
            .find(|q| q.id == query)
            .and_then(|q| q.user.clone());
        peers.send(
            registry,
            key,
            &Message::Describe { query, user },
            routing.blocked(key),
        )
    }

    /// Peer `key` answered query `query`.
    pub fn described(
        &mut self,
        key: usize,
        query: u64,
        conns: Vec<ConnInfo>,
        last: bool,
        peers: &Peers,
    ) -> Answer {
        let mut answer = Answer {
            close: false,
            done: false,
        };
        let Some(peer) = peers.get(key) else {
            return answer;
        };
        let from_idle = peer.query().is_some();
        let pid = peer.pid();
        let Some(q) = self.query(query) else {
            // Too late: the query was answered without this peer.
            answer.close = from_idle;
            return answer;
        };
        if !q.waiting.contains(&key) {
            return answer;
        }
        for c in conns {
            if from_idle {
                q.idle.insert(IdleRef { pid, id: c.id }, c);
            } else {
                q.mail.insert(c.id, c);
            }
        }
        if last {
            q.waiting.remove(&key);
            answer.close = from_idle;
            answer.done = q.waiting.is_empty();
        }
        answer
    }

    /// Peer `key` closed: queries stop waiting for it; its own query goes.
    /// Returns the queries now complete, for [`Who::finish`].
    pub fn peer_gone(&mut self, key: usize) -> Vec<u64> {
        self.queries.retain(|q| q.admin != key);
        let mut done = Vec::new();
        for q in &mut self.queries {
            if q.waiting.remove(&key) {
                q.missing
                    .push(format!("peer #{key} closed before answering"));
                if q.waiting.is_empty() {
                    done.push(q.id);
                }
            }
        }
        done
    }

    /// The queries out of time at `now`, for [`Who::expire`].
    pub fn late(&self, now: Instant) -> Vec<u64> {
        self.queries
            .iter()
            .filter(|q| q.deadline <= now)
            .map(|q| q.id)
            .collect()
    }

    /// Stop waiting for query `id`: the peers that did not answer are noted
    /// and returned (the caller closes those that are our connections to
    /// imap-idle, then finishes the query).
    pub fn expire(&mut self, id: u64, peers: &Peers) -> Vec<usize> {
        let Some(q) = self.query(id) else {
            return Vec::new();
        };
        let waiting: Vec<usize> = q.waiting.drain().collect();
        for key in &waiting {
            let name = match peers.get(*key) {
                Some(p) if p.query().is_some() => format!("imap-idle pid={}", p.pid()),
                Some(p) => format!("mail process pid={}", p.pid()),
                None => format!("peer #{key}"),
            };
            warn!("who: {name} did not answer within {ANSWER_WITHIN:?}");
            q.missing.push(format!("{name}: no answer in time"));
        }
        waiting
    }

    /// Answer query `id`'s admin with the table, and forget the query.
    pub fn finish(&mut self, id: u64, peers: &mut Peers, routing: &Routing, registry: &Registry) {
        let Some(i) = self.queries.iter().position(|q| q.id == id) else {
            return;
        };
        let q = self.queries.swap_remove(i);
        let now = Instant::now();
        let mut rows = Vec::new();
        for (&conn, c) in &routing.conns {
            if q.user.as_deref().is_some_and(|u| u != c.user) {
                continue;
            }
            let since = now.saturating_duration_since(c.since).as_secs() as u32;
            let row = match &c.place {
                Place::Mail(key) => {
                    let pid = routing.procs.get(key).map_or(0, |p| p.pid);
                    let info = q.mail.get(&conn);
                    WhoRow {
                        user: c.user.clone(),
                        conn,
                        pid,
                        mailbox: info.map_or("?".into(), |i| i.mailbox.clone()),
                        activity: info.map_or(Activity::Active, |i| i.activity),
                        secs: info.map_or(since, |i| i.secs),
                        remote: c.remote.clone(),
                    }
                }
                Place::Parked { idle, mailbox } => {
                    let info = q.idle.get(idle);
                    WhoRow {
                        user: c.user.clone(),
                        conn,
                        pid: idle.pid,
                        mailbox: mailbox.clone(),
                        activity: info.map_or(Activity::Parked, |i| i.activity),
                        secs: info.map_or(since, |i| i.secs),
                        remote: c.remote.clone(),
                    }
                }
            };
            rows.push(row);
        }
        rows.sort_by(|a, b| (&a.user, a.conn).cmp(&(&b.user, b.conn)));
        let pieces = chunks(rows);
        let n = pieces.len();
        for (i, rows) in pieces.into_iter().enumerate() {
            let msg = Message::Who {
                rows,
                missing: if i == 0 {
                    q.missing.clone()
                } else {
                    Vec::new()
                },
                last: i + 1 == n,
                stale: routing.rejoin.stale,
            };
            if !peers.send(registry, q.admin, &msg, routing.blocked(q.admin)) {
                return;
            }
        }
    }
}

fn connect_idle(
    query: u64,
    idle_socket: &Path,
    peers: &mut Peers,
    registry: &Registry,
) -> Result<usize, String> {
    let sock = SeqPacket::connect(idle_socket, true).map_err(|e| e.to_string())?;
    let hello = Message::Hello {
        role: Role::Admin,
        pid: std::process::id(),
    };
    native::send(&sock, &hello, None).map_err(|e| e.to_string())?;
    let cred = Peer {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    peers
        .insert(registry, sock, cred, false, Some(query))
        .ok_or_else(|| "cannot register the connection".to_owned())
}
