//! `imap-tracker who`: the tracker asks the mail processes concerned and
//! imap-idle what each connection is doing, and answers with one table.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::{Duration, Instant};

use log::warn;

use super::daemon::{parked_of, Tracker};
use super::routing::Place;
use crate::link::{Link, LinkError};
use crate::proto::native::{chunks, Activity, ConnInfo, Message, Role, WhoRow};
use crate::sys::{Peer, SeqPacket};

/// How long the peers have to answer.
const ANSWER_WITHIN: Duration = Duration::from_secs(2);

pub struct WhoQuery {
    id: u64,
    admin: usize,
    user: Option<String>,
    /// Peers that have not finished answering.
    waiting: HashSet<usize>,
    /// Mail processes' answers by our connection id.
    mail: HashMap<u64, ConnInfo>,
    /// imap-idle's answers by its own id.
    idle: HashMap<u64, ConnInfo>,
    idle_pid: u32,
    missing: Vec<String>,
    pub deadline: Instant,
}

impl Tracker {
    pub(super) fn start_who(&mut self, admin: usize, user: Option<String>) {
        let id = self.next_query;
        self.next_query += 1;
        let mut q = WhoQuery {
            id,
            admin,
            user: user.clone(),
            waiting: HashSet::new(),
            mail: HashMap::new(),
            idle: HashMap::new(),
            idle_pid: 0,
            missing: Vec::new(),
            deadline: Instant::now() + ANSWER_WITHIN,
        };
        let ask: Vec<usize> = self
            .routing
            .procs
            .iter()
            .filter(|(_, p)| user.as_deref().is_none_or(|u| p.serves(u)))
            .map(|(&k, _)| k)
            .collect();
        let describe = Message::Describe {
            query: id,
            user: user.clone(),
        };
        for key in ask {
            if self.send(key, &describe) {
                q.waiting.insert(key);
            }
        }
        if parked_of(&self.routing, user.as_deref()).next().is_some() {
            match self.connect_idle(id) {
                Ok(key) => {
                    q.waiting.insert(key);
                }
                Err(e) => q.missing.push(format!(
                    "imap-idle ({}): {e}",
                    self.cfg.idle_socket.display()
                )),
            }
        }
        let done = q.waiting.is_empty();
        self.queries.push(q);
        if done {
            self.finish_who(id);
        }
    }

    fn connect_idle(&mut self, query: u64) -> Result<usize, String> {
        let sock = SeqPacket::connect(&self.cfg.idle_socket, true).map_err(|e| e.to_string())?;
        let hello = Message::Hello {
            role: Role::Admin,
            pid: std::process::id(),
        };
        crate::proto::native::send(&sock, &hello, None).map_err(|e| e.to_string())?;
        let cred = Peer {
            pid: 0,
            uid: 0,
            gid: 0,
        };
        self.add_peer(sock, cred, false, Some(query))
            .ok_or_else(|| "cannot register the connection".to_owned())
    }

    /// imap-idle said hello on a query connection: ask it.
    pub(super) fn ask_idle(&mut self, key: usize) -> bool {
        let Some(query) = self.peers.get(key).and_then(|p| p.query) else {
            return false;
        };
        let user = self
            .queries
            .iter()
            .find(|q| q.id == query)
            .and_then(|q| q.user.clone());
        self.send(key, &Message::Describe { query, user })
    }

    pub(super) fn described(&mut self, key: usize, query: u64, conns: Vec<ConnInfo>, last: bool) {
        let Some(peer) = self.peers.get(key) else {
            return;
        };
        let from_idle = peer.query.is_some();
        let pid = peer.pid;
        let Some(q) = self.queries.iter_mut().find(|q| q.id == query) else {
            // Too late: the query was answered without this peer.
            if from_idle {
                self.close_peer(key);
            }
            return;
        };
        if !q.waiting.contains(&key) {
            return;
        }
        for c in conns {
            if from_idle {
                q.idle.insert(c.id, c);
            } else {
                q.mail.insert(c.id, c);
            }
        }
        if from_idle {
            q.idle_pid = pid;
        }
        if last {
            q.waiting.remove(&key);
            let done = q.waiting.is_empty();
            if from_idle {
                self.close_peer(key);
            }
            if done {
                self.finish_who(query);
            }
        }
    }

    /// A peer closed: queries stop waiting for it; its own query goes.
    pub(super) fn who_peer_gone(&mut self, key: usize) {
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
        for id in done {
            self.finish_who(id);
        }
    }

    pub(super) fn expire_queries(&mut self, now: Instant) {
        let late: Vec<u64> = self
            .queries
            .iter()
            .filter(|q| q.deadline <= now)
            .map(|q| q.id)
            .collect();
        for id in late {
            let Some(q) = self.queries.iter_mut().find(|q| q.id == id) else {
                continue;
            };
            let waiting: Vec<usize> = q.waiting.drain().collect();
            for key in &waiting {
                let name = match self.peers.get(*key) {
                    Some(p) if p.query.is_some() => "imap-idle".to_owned(),
                    Some(p) => format!("mail process pid={}", p.pid),
                    None => format!("peer #{key}"),
                };
                warn!("who: {name} did not answer within {ANSWER_WITHIN:?}");
                q.missing.push(format!("{name}: no answer in time"));
            }
            for key in waiting {
                if self.peers.get(key).is_some_and(|p| p.query.is_some()) {
                    self.close_peer(key);
                }
            }
            self.finish_who(id);
        }
    }

    fn finish_who(&mut self, id: u64) {
        let Some(i) = self.queries.iter().position(|q| q.id == id) else {
            return;
        };
        let q = self.queries.swap_remove(i);
        let now = Instant::now();
        let mut rows = Vec::new();
        for (&conn, c) in &self.routing.conns {
            if q.user.as_deref().is_some_and(|u| u != c.user) {
                continue;
            }
            let since = now.saturating_duration_since(c.since).as_secs() as u32;
            let row = match &c.place {
                Place::Mail(key) => {
                    let pid = self.routing.procs.get(key).map_or(0, |p| p.pid);
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
                Place::Parked { idle_id, mailbox } => {
                    let info = q.idle.get(idle_id);
                    WhoRow {
                        user: c.user.clone(),
                        conn,
                        pid: q.idle_pid,
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
            };
            if !self.send(q.admin, &msg) {
                return;
            }
        }
    }
}

/// The client side: ask the tracker at `control` and collect every row.
pub fn ask(control: &Path, user: Option<String>) -> Result<(Vec<WhoRow>, Vec<String>), LinkError> {
    let mut link = Link::connect(control, Role::Admin)?;
    let mut rows = Vec::new();
    let mut missing = Vec::new();
    let mut msg = link.request(&Message::WhoRequest { user }, None)?;
    loop {
        match msg {
            Message::Who {
                rows: r,
                missing: m,
                last,
            } => {
                rows.extend(r);
                missing.extend(m);
                if last {
                    return Ok((rows, missing));
                }
            }
            _ => return Err(LinkError::Unexpected("expected Who")),
        }
        msg = link.next_message()?;
    }
}

fn activity(a: Activity) -> &'static str {
    match a {
        Activity::Active => "active",
        Activity::Idle => "idle",
        Activity::Parked => "parked",
        Activity::Returning => "returning",
    }
}

fn duration(secs: u32) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{:02}s", s / 60, s % 60),
        s => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
    }
}

/// The table `imap-tracker who` prints.
pub fn table(rows: &[WhoRow], missing: &[String]) -> String {
    let head = [
        "USER", "CONN", "PROCESS", "STATE", "MAILBOX", "FOR", "CLIENT",
    ];
    let mut lines: Vec<[String; 7]> = vec![head.map(String::from)];
    for r in rows {
        let process = match r.activity {
            Activity::Parked | Activity::Returning => format!("imap-idle {}", r.pid),
            _ => format!("mail {}", r.pid),
        };
        lines.push([
            r.user.clone(),
            r.conn.to_string(),
            process,
            activity(r.activity).to_owned(),
            r.mailbox.clone(),
            duration(r.secs),
            r.remote.clone(),
        ]);
    }
    let mut widths = [0; 7];
    for l in &lines {
        for (w, cell) in widths.iter_mut().zip(l) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for l in &lines {
        let cells: Vec<String> = l
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    let mut users: Vec<&str> = rows.iter().map(|r| r.user.as_str()).collect();
    users.dedup();
    let count = |a: Activity| rows.iter().filter(|r| r.activity == a).count();
    out.push_str(&format!(
        "{} users, {} connections: {} active, {} idle, {} parked, {} returning\n",
        users.len(),
        rows.len(),
        count(Activity::Active),
        count(Activity::Idle),
        count(Activity::Parked),
        count(Activity::Returning)
    ));
    for m in missing {
        out.push_str(&format!("not answered: {m}\n"));
    }
    out
}
