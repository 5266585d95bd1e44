//! `imap-idle-lab load` against the reference stack: it counts what it
//! promises, and reports failures with their reasons.

mod util;

use std::process::Command;

use util::stack::{Options, Stack, PASSWORD};

fn load(s: &Stack, extra: &[&str]) -> (bool, String, String) {
    let json = s.dir.as_path().join("load.json");
    let out = Command::new(env!("CARGO_BIN_EXE_imap-idle-lab"))
        .args([
            "load",
            "--quiet",
            "--port",
            &s.port.to_string(),
            "--timeout",
            "20",
        ])
        .arg("--json")
        .arg(&json)
        .args(extra)
        .output()
        .expect("run load");
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    let json = std::fs::read_to_string(&json).unwrap_or_default();
    (out.status.success(), table, json)
}

#[test]
fn fifty_clients_idle_parked_and_woken() {
    let users: Vec<(String, u32)> = (1..=5).map(|i| (format!("user{i}"), 0)).collect();
    let accounts: Vec<(&str, u32)> = users.iter().map(|(u, i)| (u.as_str(), *i)).collect();
    let s = Stack::start(Options {
        users: &accounts,
        ..Options::default()
    });
    let maildir = format!("{}/%u/Maildir", s.mail_root.display());
    let (ok, table, json) = load(
        &s,
        &[
            "--clients",
            "50",
            "--user-pattern",
            "user%d",
            "--user-count",
            "5",
            "--password",
            PASSWORD,
            "--hold",
            "3",
            "--deliver-maildir",
            &maildir,
            "--deliveries",
            "5",
            "--deliver-rate",
            "20",
        ],
    );
    assert!(ok, "{table}");
    assert!(
        table.contains("connected and idle      50 of 50"),
        "{table}"
    );
    assert!(
        table.contains("EXISTS received         50 of 50 expected"),
        "{table}"
    );
    assert!(json.contains("\"latency_ms\":{\"samples\":50"), "{json}");
    assert!(json.contains("\"done_ms\":{\"samples\":50"), "{json}");
    // They were parked while idle: the daemon parked each at least once.
    let stats = imap_idle::link::stats(&s.park_socket()).unwrap();
    assert!(stats.parks >= 50, "{stats:?}");
    assert!(stats.wake_changed >= 50, "{stats:?}");
}

#[test]
fn a_refused_login_is_reported_with_its_reason() {
    let s = Stack::start(Options::default());
    let users = s.dir.as_path().join("users");
    std::fs::write(&users, format!("alice:{PASSWORD}\nbob:wrong\n")).unwrap();
    let (ok, table, json) = load(&s, &["--clients", "4", "--users", users.to_str().unwrap()]);
    assert!(!ok, "exit code says incomplete: {table}");
    assert!(table.contains("connected and idle      2 of 4"), "{table}");
    assert!(
        table.contains("2  LOGIN failed: NO [AUTHENTICATIONFAILED] Authentication failed."),
        "{table}"
    );
    assert!(json.contains("\"failed\":2"), "{json}");
    assert!(table.contains("INCOMPLETE"), "{table}");
}

#[test]
fn deliveries_by_command_are_timed_too() {
    let s = Stack::start(Options::default());
    let cmd = format!(
        "printf 'Subject: x\\r\\n\\r\\nx\\r\\n' > {}/%u/Maildir/new/$(date +%s%N).cmd",
        s.mail_root.display()
    );
    let users = s.dir.as_path().join("users");
    std::fs::write(&users, format!("alice:{PASSWORD}\nbob:{PASSWORD}\n")).unwrap();
    let (ok, table, _) = load(
        &s,
        &[
            "--clients",
            "6",
            "--users",
            users.to_str().unwrap(),
            "--deliver-cmd",
            &cmd,
            "--deliveries",
            "2",
            "--hold",
            "2",
        ],
    );
    assert!(ok, "{table}");
    assert!(
        table.contains("EXISTS received         6 of 6 expected"),
        "{table}"
    );
}

#[test]
fn clients_come_from_the_source_addresses_asked_for() {
    let s = Stack::start(Options::default());
    let users = s.dir.as_path().join("users");
    std::fs::write(&users, format!("alice:{PASSWORD}\n")).unwrap();
    let (ok, table, _) = load(
        &s,
        &[
            "--clients",
            "9",
            "--users",
            users.to_str().unwrap(),
            "--source-addrs",
            "3",
        ],
    );
    assert!(ok, "{table}");
    let log = s.tracker_log();
    for last in 2..=4 {
        let from = format!("login from 127.0.0.{last}:");
        assert_eq!(log.matches(&from).count(), 3, "{from}\n{log}");
    }
    assert!(!log.contains("login from 127.0.0.1:"), "{log}");
}
