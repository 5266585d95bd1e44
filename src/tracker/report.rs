//! The client side of `imap-tracker who`: asking the tracker over its
//! control socket, and the table printed from the answer. Apart from the
//! daemon's side ([`super::who`]) because it runs in another process.

use std::path::Path;

use crate::link::{Link, LinkError};
use crate::proto::native::{Activity, Message, Role, WhoRow};

/// What the tracker answered to `who`.
#[derive(Debug, Default)]
pub struct Answer {
    pub rows: Vec<WhoRow>,
    /// Peers that did not answer in time.
    pub missing: Vec<String>,
    /// Entries dropped since the tracker started because imap-idle no
    /// longer held them.
    pub stale: u64,
}

/// The client side: ask the tracker at `control` and collect every row.
pub fn ask(control: &Path, user: Option<String>) -> Result<Answer, LinkError> {
    let mut link = Link::connect(control, Role::Admin)?;
    let mut answer = Answer::default();
    let mut msg = link.request(&Message::WhoRequest { user }, None)?;
    loop {
        match msg {
            Message::Who {
                rows: r,
                missing: m,
                last,
                stale,
            } => {
                answer.rows.extend(r);
                answer.missing.extend(m);
                answer.stale = stale;
                if last {
                    return Ok(answer);
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
pub fn table(answer: &Answer) -> String {
    let (rows, missing) = (&answer.rows, &answer.missing);
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
    if answer.stale > 0 {
        out.push_str(&format!(
            "{} stale entries dropped since the tracker started (imap-idle no longer held them)\n",
            answer.stale
        ));
    }
    for m in missing {
        out.push_str(&format!("not answered: {m}\n"));
    }
    out
}
