//! systemd integration, against systemd's own tools: Debian's
//! `systemd-socket-activate` passes imap-idle its park socket and
//! imap-tracker its two sockets (parks, hand-overs and `who` go through
//! them); a datagram socket in `NOTIFY_SOCKET` reads what both daemons
//! tell the service manager (READY=1, STATUS=, WATCHDOG=1, STOPPING=1);
//! and `systemd-analyze verify` checks every unit in `contrib/systemd/`.
//! Without the tools these tests print `SKIPPED`, and fail instead with
//! `IMAP_IDLE_REQUIRE_SYSTEMD=1` (CI sets it).

mod util;

use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use imap_idle::link;
use imap_idle::mail::{IdleLink, LoginLink};
use imap_idle::proto::native::{Login, WakeReason};
use nix::sys::signal::Signal;
use util::{assert_same_socket, idle_park, wait_for, Policy, Tracker};

const REQUIRE_ENV: &str = "IMAP_IDLE_REQUIRE_SYSTEMD";
const IDLE: &str = env!("CARGO_BIN_EXE_imap-idle");
const TRACKER: &str = env!("CARGO_BIN_EXE_imap-tracker");

/// The systemd tool `name`, or `None` after saying what is skipped
/// (a failure when systemd is required).
fn tool(name: &str, what: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = std::iter::once(PathBuf::from("/usr/bin"))
        .chain(std::env::split_paths(&path))
        .map(|d| d.join(name))
        .find(|p| p.is_file());
    if found.is_none() {
        if std::env::var(REQUIRE_ENV).as_deref() == Ok("1") {
            panic!("{what}: {name} is missing ({REQUIRE_ENV}=1; apt-get install systemd)");
        }
        eprintln!("SKIPPED {what}: {name} is missing; set {REQUIRE_ENV}=1 to make this a failure");
    }
    found
}

/// A process we started, killed if the test ends early.
struct Proc {
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn spawn(mut cmd: Command, log: PathBuf) -> Proc {
        let child = cmd
            .stdin(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("spawn");
        Proc { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn signal(&self, sig: Signal) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, sig).expect("signal");
    }

    fn wait_exit(&mut self) -> std::process::ExitStatus {
        util::wait_exit(&mut self.child, Duration::from_secs(10), &self.log)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The service manager's end of `NOTIFY_SOCKET`.
struct Notices {
    sock: UnixDatagram,
}

impl Notices {
    fn at_path(path: &Path) -> Notices {
        Notices::with(UnixDatagram::bind(path).expect("bind notify socket"))
    }

    fn abstract_named(name: &str) -> Notices {
        let addr = SocketAddr::from_abstract_name(name).expect("abstract name");
        Notices::with(UnixDatagram::bind_addr(&addr).expect("bind abstract notify socket"))
    }

    fn with(sock: UnixDatagram) -> Notices {
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .expect("timeout");
        Notices { sock }
    }

    /// Every notice that arrives within `d`.
    fn during(&self, d: Duration) -> Vec<String> {
        let end = Instant::now() + d;
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while Instant::now() < end {
            if let Ok(n) = self.sock.recv(&mut buf) {
                got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        }
        got
    }

    /// The first notice with a line for which `want` holds, within 10 s.
    fn until(&self, what: &str, want: impl Fn(&str) -> bool) -> String {
        let end = Instant::now() + Duration::from_secs(10);
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        while Instant::now() < end {
            if let Ok(n) = self.sock.recv(&mut buf) {
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                if msg.lines().any(&want) {
                    return msg;
                }
                seen.push(msg);
            }
        }
        panic!("no notice {what} in 10 s; got {seen:?}");
    }
}

fn pings(notices: &[String]) -> usize {
    notices
        .iter()
        .filter(|m| m.lines().any(|l| l == "WATCHDOG=1"))
        .count()
}

/// `systemd-socket-activate`, a temp dir, its `run` (the daemon's
/// runtime directory) and `passed` (where the tool binds) inside.
struct Activation {
    tool: PathBuf,
    dir: tempfile::TempDir,
    run: PathBuf,
    passed: PathBuf,
}

fn activation(what: &str) -> Option<Activation> {
    let tool = tool("systemd-socket-activate", what)?;
    let dir = tempfile::tempdir().expect("tempdir");
    let (run, passed) = (dir.path().join("run"), dir.path().join("passed"));
    std::fs::create_dir(&passed).expect("socket dir");
    Some(Activation {
        tool,
        dir,
        run,
        passed,
    })
}

#[test]
fn imap_idle_parks_through_a_socket_activated_park_socket() {
    let Some(Activation {
        tool: activate,
        dir,
        run,
        passed,
    }) = activation("socket-activated imap-idle")
    else {
        return;
    };
    std::fs::create_dir(&run).expect("run dir");
    let park_path = passed.join("park");
    let tracker = Tracker::start(&run.join("tracker"), Policy::Accept);
    let mut cmd = Command::new(activate);
    cmd.args(["--seqpacket", "--fdname=park", "-l"])
        .arg(&park_path)
        .arg("--")
        .arg(IDLE)
        .arg("--runtime-dir")
        .arg(&run)
        .args(["--log-level", "debug"]);
    let mut daemon = Proc::spawn(cmd, dir.path().join("log"));
    // The first connection makes the tool exec imap-idle with fd 3.
    wait_for(|| link::stats(&park_path).is_ok(), "imap-idle to answer");
    assert!(
        daemon.log().contains("passed by the service manager"),
        "log:\n{}",
        daemon.log()
    );
    assert!(
        !run.join("park").exists(),
        "imap-idle bound a park socket of its own"
    );

    let mut mail = IdleLink::connect(&park_path).expect("connect to the passed socket");
    let (mut client, server) = UnixStream::pair().expect("socketpair");
    let id = mail
        .park(OwnedFd::from(server), &idle_park("alice", vec![]))
        .unwrap_or_else(|e| panic!("park through the passed socket: {e}"));
    client.write_all(b"DONE\r\n").expect("client types");
    let (ret, fd) = tracker.returned();
    assert_eq!(ret.id, id);
    assert_eq!(ret.reason, WakeReason::Done);
    client.set_read_timeout(Some(util::WAIT)).expect("timeout");
    assert_same_socket(&fd, &mut client);

    daemon.signal(Signal::SIGTERM);
    daemon.wait_exit();
    // The socket is the service manager's: imap-idle leaves it in place.
    assert!(park_path.exists(), "imap-idle removed the passed socket");
}

/// A stream socket where the park socket should be: imap-idle refuses to
/// start, saying why, rather than serve on it.
#[test]
fn a_passed_socket_of_the_wrong_type_stops_imap_idle() {
    let Some(Activation {
        tool: activate,
        dir,
        run,
        passed,
    }) = activation("imap-idle with a wrong passed socket")
    else {
        return;
    };
    let park_path = passed.join("park");
    let mut cmd = Command::new(activate);
    cmd.args(["--fdname=park", "-l"])
        .arg(&park_path)
        .arg("--")
        .arg(IDLE)
        .arg("--runtime-dir")
        .arg(&run);
    let mut daemon = Proc::spawn(cmd, dir.path().join("log"));
    wait_for(|| park_path.exists(), "the tool to listen");
    let _knock = UnixStream::connect(&park_path).expect("connect");
    let end = Instant::now() + util::WAIT;
    let status = loop {
        if let Some(s) = daemon.child.try_wait().expect("try_wait") {
            break s;
        }
        assert!(
            Instant::now() < end,
            "still running; log:\n{}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(status.code(), Some(1), "log:\n{}", daemon.log());
    assert!(
        daemon.log().contains("not of type SeqPacket"),
        "log:\n{}",
        daemon.log()
    );
}

#[test]
fn imap_tracker_takes_both_sockets_and_its_children_inherit_nothing() {
    let Some(Activation {
        tool: activate,
        dir,
        run,
        passed,
    }) = activation("socket-activated imap-tracker")
    else {
        return;
    };
    let (sock, control) = (passed.join("tracker"), passed.join("tracker-control"));
    let env_file = dir.path().join("mail-env");
    let notices = Notices::at_path(&dir.path().join("notify"));
    let mut cmd = Command::new(activate);
    cmd.args(["--seqpacket", "--fdname=tracker:tracker-control", "-l"])
        .arg(&sock)
        .arg("-l")
        .arg(&control)
        .arg(format!(
            "--setenv=NOTIFY_SOCKET={}",
            dir.path().join("notify").display()
        ))
        .arg("--setenv=WATCHDOG_USEC=10000000")
        .arg("--")
        .arg(TRACKER)
        .arg("--runtime-dir")
        .arg(&run)
        .arg("--spawn")
        .arg(format!("env > {}", env_file.display()));
    let tracker = Proc::spawn(cmd, dir.path().join("log"));
    let mut login = None;
    let end = Instant::now() + util::WAIT;
    while login.is_none() {
        match LoginLink::connect(&sock) {
            Ok(l) => login = Some(l),
            Err(e) if Instant::now() > end => panic!("{e}; log:\n{}", tracker.log()),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    notices.until("READY=1", |l| l == "READY=1");
    let login = login.expect("login link");
    let (_client, server) = UnixStream::pair().expect("socketpair");
    let hand = Login {
        seq: 1,
        user: "alice".into(),
        uid: nix::unistd::getuid().as_raw(),
        tag: "a".into(),
        local: "127.0.0.1:143".into(),
        remote: "192.0.2.1:1".into(),
        input: Vec::new(),
    };
    login
        .hand_over(server.as_fd(), &hand)
        .expect("hand a client over");
    wait_for(
        || std::fs::metadata(&env_file).is_ok_and(|m| m.len() > 0),
        "the spawned mail process",
    );
    std::thread::sleep(Duration::from_millis(100));
    let env = std::fs::read_to_string(&env_file).expect("mail process env");
    // Mail processes connect where the tracker really listens.
    let at = format!("IMAP_TRACKER_SOCKET={}", sock.display());
    assert!(env.lines().any(|l| l == at), "{env}");
    for var in [
        "LISTEN_FDS",
        "LISTEN_PID",
        "LISTEN_FDNAMES",
        "NOTIFY_SOCKET",
        "WATCHDOG_USEC",
    ] {
        assert!(
            !env.lines().any(|l| l.starts_with(&format!("{var}="))),
            "the mail process inherited {var}:\n{env}"
        );
    }
    // `who` goes through the passed control socket.
    let who = Command::new(TRACKER)
        .arg("who")
        .arg("--control-socket")
        .arg(&control)
        .output()
        .expect("imap-tracker who");
    assert!(
        who.status.success(),
        "who: {}",
        String::from_utf8_lossy(&who.stderr)
    );
    assert!(
        !run.join("tracker").exists() && !run.join("tracker-control").exists(),
        "imap-tracker bound sockets of its own"
    );
}

/// A temp dir and the service manager's end of its `notify` socket.
fn notified() -> (tempfile::TempDir, PathBuf, Notices) {
    let dir = tempfile::tempdir().expect("tempdir");
    let notify = dir.path().join("notify");
    let notices = Notices::at_path(&notify);
    (dir, notify, notices)
}

/// imap-idle under a service manager that keeps a watchdog on it.
fn idle_with_notify(dir: &Path, notify: &Path, extra_env: &[(&str, &str)]) -> Proc {
    let run = dir.join("run");
    let mut cmd = Command::new(IDLE);
    cmd.arg("--runtime-dir")
        .arg(&run)
        .args(["--log-level", "debug"])
        .env("NOTIFY_SOCKET", notify)
        .env_remove("WATCHDOG_PID")
        .env_remove("LISTEN_FDS")
        .env_remove("RUST_LOG");
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    Proc::spawn(cmd, dir.join("idle.log"))
}

#[test]
fn a_hand_over_tells_reloading_then_the_successors_mainpid_and_ready() {
    let (dir, notify, notices) = notified();
    std::fs::create_dir(dir.path().join("run")).expect("run dir");
    let _tracker = Tracker::start(&dir.path().join("run/tracker"), Policy::Accept);
    let mut daemon = idle_with_notify(dir.path(), &notify, &[]);
    notices.until("READY=1", |l| l == "READY=1");
    let park = dir.path().join("run/park");
    let mut mail = IdleLink::connect(&park).expect("connect");
    let (_client, server) = UnixStream::pair().expect("socketpair");
    mail.park(OwnedFd::from(server), &idle_park("alice", vec![]))
        .unwrap_or_else(|e| panic!("park: {e}"));
    daemon.signal(Signal::SIGUSR2);
    notices.until("RELOADING=1", |l| l == "RELOADING=1");
    let main = notices.until("MAINPID=", |l| l.starts_with("MAINPID="));
    let pid: i32 = main
        .lines()
        .find_map(|l| l.strip_prefix("MAINPID="))
        .and_then(|p| p.parse().ok())
        .expect("a pid");
    assert_ne!(pid as u32, daemon.child.id(), "the successor's pid");
    notices.until("READY=1 from the successor", |l| l == "READY=1");
    // The old daemon handed its client over and exits.
    daemon.wait_exit();
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
}

#[test]
fn imap_idle_tells_ready_status_watchdog_and_stopping() {
    let (dir, notify, notices) = notified();
    std::fs::create_dir(dir.path().join("run")).expect("run dir");
    let tracker = Tracker::start(&dir.path().join("run/tracker"), Policy::Accept);
    let mut daemon = idle_with_notify(dir.path(), &notify, &[("WATCHDOG_USEC", "300000")]);
    let ready = notices.until("READY=1", |l| l == "READY=1");
    assert!(
        ready.lines().any(|l| l.starts_with("STATUS=0 parked")),
        "{ready}"
    );
    // Pings every 150 ms: about 6 a second.
    let pinged = pings(&notices.during(Duration::from_secs(1)));
    assert!((3..=9).contains(&pinged), "{pinged} pings in 1 s at 150 ms");

    let park = dir.path().join("run/park");
    let mut mail = IdleLink::connect(&park).expect("connect");
    let (client, server) = UnixStream::pair().expect("socketpair");
    mail.park(OwnedFd::from(server), &idle_park("alice", vec![]))
        .unwrap_or_else(|e| panic!("park: {e}"));
    notices.until("STATUS=1 parked", |l| l.starts_with("STATUS=1 parked"));

    // A stopped loop sends nothing; a running one pings again.
    daemon.signal(Signal::SIGSTOP);
    let stopped = notices.during(Duration::from_millis(600));
    daemon.signal(Signal::SIGCONT);
    assert_eq!(
        pings(&stopped),
        0,
        "pings from a stopped daemon: {stopped:?}"
    );
    notices.until("WATCHDOG=1 after SIGCONT", |l| l == "WATCHDOG=1");

    daemon.signal(Signal::SIGTERM);
    notices.until("STOPPING=1", |l| l == "STOPPING=1");
    // Shutdown hands the parked client back before the daemon exits.
    let (ret, _fd) = tracker.returned();
    assert_eq!(ret.reason, WakeReason::Shutdown);
    daemon.wait_exit();
    drop(client);
}

#[test]
fn a_watchdog_meant_for_another_process_is_not_pinged() {
    let (dir, notify, notices) = notified();
    let _daemon = idle_with_notify(
        dir.path(),
        &notify,
        &[("WATCHDOG_USEC", "200000"), ("WATCHDOG_PID", "1")],
    );
    let ready = notices.until("READY=1", |l| l == "READY=1");
    let later = notices.during(Duration::from_millis(700));
    assert_eq!(pings(&[ready]) + pings(&later), 0, "{later:?}");
}

/// Dovecot's master passes its own NOTIFY_SOCKET to its children
/// (`import_environment`); one of them is not the service systemd runs.
#[test]
fn under_dovecots_master_imap_idle_tells_systemd_nothing() {
    let (dir, notify, notices) = notified();
    let _daemon = idle_with_notify(
        dir.path(),
        &notify,
        &[("WATCHDOG_USEC", "200000"), ("DOVECOT_CHILD_PROCESS", "1")],
    );
    let park = dir.path().join("run/park");
    wait_for(|| link::stats(&park).is_ok(), "imap-idle to answer");
    let said = notices.during(Duration::from_millis(2500));
    assert!(said.is_empty(), "{said:?}");
}

#[test]
fn imap_tracker_tells_an_abstract_notify_socket() {
    let dir = tempfile::tempdir().expect("tempdir");
    let name = format!("imap-idle-test-notify-{}", std::process::id());
    let notices = Notices::abstract_named(&name);
    let mut cmd = Command::new(TRACKER);
    cmd.arg("--runtime-dir")
        .arg(dir.path().join("run"))
        .env("NOTIFY_SOCKET", format!("@{name}"))
        .env("WATCHDOG_USEC", "300000")
        .env_remove("WATCHDOG_PID")
        .env_remove("LISTEN_FDS")
        .env_remove("RUST_LOG");
    let mut tracker = Proc::spawn(cmd, dir.path().join("tracker.log"));
    let ready = notices.until("READY=1", |l| l == "READY=1");
    assert!(
        ready
            .lines()
            .any(|l| l.starts_with("STATUS=0 users, 0 connections")),
        "{ready}"
    );
    let pinged = pings(&notices.during(Duration::from_secs(1)));
    assert!((3..=9).contains(&pinged), "{pinged} pings in 1 s at 150 ms");
    tracker.signal(Signal::SIGTERM);
    notices.until("STOPPING=1", |l| l == "STOPPING=1");
    tracker.wait_exit();
}

/// The units as shipped, with ExecStart= pointing at the binaries just
/// built (verify wants them to exist); the original must name the path
/// we replace, so the rewrite cannot silently do nothing.
fn units_with_built_binaries(to: &Path) -> Vec<PathBuf> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/systemd");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&src).expect("contrib/systemd") {
        let path = entry.expect("entry").path();
        let text = std::fs::read_to_string(&path).expect("unit");
        let name = path.file_name().expect("name").to_owned();
        if path.extension().is_some_and(|e| e == "service") {
            let bin = if text.contains("/usr/local/bin/imap-idle ") {
                ("/usr/local/bin/imap-idle ", IDLE)
            } else {
                ("/usr/local/bin/imap-tracker ", TRACKER)
            };
            assert!(
                text.contains(bin.0),
                "{}: no ExecStart={}",
                path.display(),
                bin.0
            );
            let text = text.replace(bin.0, &format!("{} ", bin.1));
            std::fs::write(to.join(&name), text).expect("write unit");
        } else {
            std::fs::copy(&path, to.join(&name)).expect("copy unit");
        }
        out.push(to.join(name));
    }
    out.sort();
    out
}

#[test]
fn every_unit_passes_systemd_analyze_verify() {
    let what = "systemd-analyze verify";
    let Some(analyze) = tool("systemd-analyze", what) else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let units = units_with_built_binaries(dir.path());
    let names: Vec<String> = units
        .iter()
        .map(|u| u.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for want in [
        "imap-idle.service",
        "imap-idle.socket",
        "imap-tracker.service",
        "imap-tracker.socket",
    ] {
        assert!(names.iter().any(|n| n == want), "no {want} in {names:?}");
    }
    // Documentation= is checked against man/ below: a `man` lookup would
    // test the host's man installation instead.
    let out = Command::new(analyze)
        .args(["verify", "--man=no"])
        .args(&units)
        .env("SYSTEMD_LOG_LEVEL", "notice")
        .output()
        .expect("systemd-analyze");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // verify only warns about unknown keys and bad values: any word from
    // it is a failure here.
    assert!(out.status.success() && said.trim().is_empty(), "{said}");
    let man = Path::new(env!("CARGO_MANIFEST_DIR")).join("man");
    for unit in &units {
        let text = std::fs::read_to_string(unit).expect("unit");
        for page in text
            .lines()
            .filter_map(|l| l.strip_prefix("Documentation=man:"))
        {
            let (name, section) = page
                .trim_end_matches(')')
                .split_once('(')
                .expect("man:x(n)");
            let file = man.join(format!("{name}.{section}"));
            assert!(file.is_file(), "{}: no {}", unit.display(), file.display());
        }
    }
}

/// The flags in the services' ExecStart= lines are ones the daemons take.
#[test]
fn the_units_flags_parse() {
    let dir = tempfile::tempdir().expect("tempdir");
    for unit in units_with_built_binaries(dir.path()) {
        let text = std::fs::read_to_string(&unit).expect("unit");
        let Some(start) = text.find("\nExecStart=") else {
            continue;
        };
        let line = text[start + 11..]
            .split_inclusive('\n')
            .scan(true, |more, l| {
                let keep = *more;
                *more = l.trim_end().ends_with('\\');
                keep.then_some(l)
            })
            .collect::<String>()
            .replace("\\\n", " ");
        let mut words = line.split_whitespace();
        let bin = words.next().expect("binary");
        let out = Command::new(bin)
            .args(words)
            .arg("--help")
            .output()
            .expect("run the unit's binary");
        assert!(
            out.status.success(),
            "{}: {}",
            unit.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Every timing knob of `imap-idle --help` is shown in imap-idle.service.
#[test]
fn the_idle_unit_shows_every_timing_flag() {
    let help = Command::new(IDLE).arg("--help").output().expect("--help");
    let help = String::from_utf8_lossy(&help.stdout).into_owned();
    let timing = help.split("\nTiming").nth(1).expect("a Timing section");
    let timing = timing.split("\n\n").next().unwrap_or_default();
    let flags: Vec<&str> = timing
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("--"))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(flags.len() >= 8, "{flags:?}");
    let unit = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/systemd/imap-idle.service"),
    )
    .expect("unit");
    for flag in flags {
        assert!(
            unit.contains(&format!("--{flag}")),
            "imap-idle.service lacks --{flag}"
        );
    }
}
