//! imap-tracker on its own: who may connect, and bad input.

mod util;

use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use imap_idle::proto::native::{self, Message, Role, MAX_PACKET};
use imap_idle::sys::SeqPacket;
use util::wait_for;

struct Tracker {
    child: Child,
    dir: tempfile::TempDir,
}

impl Tracker {
    fn start(extra: &[&str]) -> Tracker {
        let dir = tempfile::tempdir().unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_imap-tracker"))
            .arg("--runtime-dir")
            .arg(dir.path())
            .args(extra)
            .env_remove("RUST_LOG")
            .stderr(std::fs::File::create(dir.path().join("log")).unwrap())
            .spawn()
            .unwrap();
        let t = Tracker { child, dir };
        wait_for(
            || t.dir.path().join("tracker-control").exists(),
            "tracker to listen",
        );
        t
    }

    fn socket(&self) -> std::path::PathBuf {
        self.dir.path().join("tracker")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }

    /// A mail process running as `uid`.
    fn mail_as(&self, uid: u32) -> Child {
        std::fs::set_permissions(
            self.dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        Command::new(env!("CARGO_BIN_EXE_imap-idle-lab"))
            .args([
                "serve",
                "mail",
                "--maildir",
                "/nonexistent/%u",
                "--tracker-socket",
            ])
            .arg(self.socket())
            .uid(uid)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }
}

impl Drop for Tracker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const NOBODY: u32 = 65534;

#[test]
fn mail_uid_admits_only_the_listed_uids() {
    if !util::root_for("mail_uid_admits_only_the_listed_uids") {
        return;
    }
    let t = Tracker::start(&["--mail-uid", "4242", "--socket-mode", "0666"]);
    let refused = t.mail_as(NOBODY).wait_with_output().unwrap();
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        err.contains("uid 65534 may not take the MailProcess role (--mail-uid)"),
        "{err}"
    );
    drop(t);

    let t = Tracker::start(&[
        "--mail-uid",
        &format!("4242,{NOBODY}"),
        "--socket-mode",
        "0666",
    ]);
    let mut ok = t.mail_as(NOBODY);
    wait_for(
        || t.log().contains(&format!("uid={NOBODY} registered")),
        "nobody's mail process to register",
    );
    let _ = ok.kill();
    let _ = ok.wait();
}

#[test]
fn allow_uid_is_gone_and_says_what_replaces_it() {
    let out = Command::new(env!("CARGO_BIN_EXE_imap-tracker"))
        .args(["--allow-uid", "4242"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--login-uid") && err.contains("--mail-uid") && err.contains("--idle-uid"),
        "{err}"
    );
}

#[test]
fn a_registration_that_makes_no_sense_is_refused() {
    let t = Tracker::start(&[]);
    let mut buf = vec![0; MAX_PACKET + 1];
    // Our own uid: the only one a process not run as root may claim.
    let me = nix::unistd::getuid().as_raw();
    let register = |capacity| {
        let link = SeqPacket::connect(&t.socket(), false).unwrap();
        let hello = Message::Hello {
            role: Role::MailProcess,
            pid: 1,
        };
        native::send(&link, &hello, None).unwrap();
        native::send(&link, &Message::Register { uid: me, capacity }, None).unwrap();
        link
    };
    let link = register(0);
    native::recv(&link, &mut buf).unwrap();
    let answer = native::recv(&link, &mut buf).unwrap().msg;
    assert!(matches!(answer, Message::Error { reason } if reason.contains("capacity 0")));
    let link = register(3);
    native::recv(&link, &mut buf).unwrap();
    assert_eq!(
        native::recv(&link, &mut buf).unwrap().msg,
        Message::Registered
    );
    native::send(
        &link,
        &Message::Register {
            uid: me,
            capacity: 3,
        },
        None,
    )
    .unwrap();
    let answer = native::recv(&link, &mut buf).unwrap().msg;
    assert!(matches!(answer, Message::Error { reason } if reason.contains("twice")));
}

#[test]
fn garbage_closes_that_connection_only() {
    let t = Tracker::start(&[]);
    let mut buf = vec![0; MAX_PACKET + 1];
    for bad in [&[9u8, 9, 9][..], &[1, 200, 200], &[]] {
        let link = SeqPacket::connect(&t.socket(), false).unwrap();
        link.send(bad, &[]).unwrap();
        match native::recv(&link, &mut buf) {
            Ok(i) => assert!(matches!(i.msg, Message::Error { .. }), "{:?}", i.msg),
            Err(native::RecvError::Closed) => {}
            Err(e) => panic!("{e}"),
        }
    }
    // A Login before Hello, and an admin request on the main socket.
    let link = SeqPacket::connect(&t.socket(), false).unwrap();
    native::send(&link, &Message::WhoRequest { user: None }, None).unwrap();
    assert!(matches!(
        native::recv(&link, &mut buf).unwrap().msg,
        Message::Error { reason } if reason.contains("Hello")
    ));
    let link = SeqPacket::connect(&t.socket(), false).unwrap();
    let hello = Message::Hello {
        role: Role::Admin,
        pid: 1,
    };
    native::send(&link, &hello, None).unwrap();
    assert!(matches!(
        native::recv(&link, &mut buf).unwrap().msg,
        Message::Error { .. }
    ));
    // Still serving.
    std::thread::sleep(Duration::from_millis(50));
    let who = Command::new(env!("CARGO_BIN_EXE_imap-tracker"))
        .args(["who", "--runtime-dir"])
        .arg(t.dir.path())
        .output()
        .unwrap();
    assert!(who.status.success());
    assert!(String::from_utf8_lossy(&who.stdout).contains("0 users, 0 connections"));
}
