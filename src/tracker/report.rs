//! The client side of `imap-tracker who`: asking the tracker over its
//! control socket, and the table printed from the answer. Apart from the
//! daemon's side ([`super::who`]) because it runs in another process.

use std::path::Path;

use crate::link::{Link, LinkError};
use crate::proto::native::{Activity, Message, Role, WhoRow};

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
