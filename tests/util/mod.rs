//! Shared test harness: a real imap-idle process, a fake tracker on a real
//! socket, and a fake mail process that parks one end of a socket pair
//! (the test keeps the other end and plays the IMAP client).
#![allow(dead_code)]

pub mod dovecot;
pub mod fake_imap;
pub mod imap;
pub mod stack;

use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use imap_idle::link;
use imap_idle::mail::{IdleLink, Kept, NotParked};
use imap_idle::proto::native::{
    self, Gone, Message, Park, RecvError, Return, Role, Stats, MAX_PACKET,
};
use imap_idle::sys::SeqPacket;

pub const WAIT: Duration = Duration::from_secs(5);

pub fn raise_fd_limit() {
    imap_idle::sys::limits::raise_nofile().expect("raise RLIMIT_NOFILE");
}

pub struct Daemon {
    child: Child,
    pub dir: tempfile::TempDir,
    pub park: PathBuf,
    pub tracker: PathBuf,
    log: PathBuf,
}

impl Daemon {
    pub fn start(extra: &[&str]) -> Daemon {
        Daemon::start_in(Command::new(env!("CARGO_BIN_EXE_imap-idle")), extra)
    }

    /// Start with both open-file limits set to `nofile`.
    pub fn start_with_fd_limit(nofile: u32, extra: &[&str]) -> Daemon {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", &format!("ulimit -n {nofile} && exec \"$0\" \"$@\"")])
            .arg(env!("CARGO_BIN_EXE_imap-idle"));
        Daemon::start_in(cmd, extra)
    }

    fn start_in(mut cmd: Command, extra: &[&str]) -> Daemon {
        let dir = tempfile::tempdir().expect("tempdir");
        let run = dir.path().join("run");
        let log = dir.path().join("imap-idle.log");
        let child = cmd
            .arg("--runtime-dir")
            .arg(&run)
            .args(["--log-level", "debug"])
            .args(extra)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("spawn imap-idle");
        let d = Daemon {
            child,
            park: run.join("park"),
            tracker: run.join("tracker"),
            dir,
            log,
        };
        wait_for(|| link::stats(&d.park).is_ok(), "daemon to listen");
        d
    }

    /// Let other users reach the park socket (with --park-socket-mode
    /// and --runtime-dir-mode wide enough).
    pub fn open_to_everyone(&self) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(self.dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .expect("read daemon fds")
            .count()
    }

    /// CPU time the daemon has used, user + system.
    pub fn cpu_time(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).expect("stat");
        // Fields after the command name, which is in parentheses.
        let rest = &stat[stat.rfind(')').expect("comm") + 2..];
        let f: Vec<&str> = rest.split(' ').collect();
        let ticks: u64 =
            f[11].parse::<u64>().expect("utime") + f[12].parse::<u64>().expect("stime");
        Duration::from_millis(ticks * 10)
    }

    pub fn stats(&self) -> Stats {
        link::stats(&self.park).expect("stats")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid() as i32), sig).expect("signal");
    }

    /// Its exit status, if it has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("try_wait")
    }

    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let log = self.log.clone();
        wait_exit(&mut self.child, timeout, &log)
    }

    /// The fd count once it has stopped moving (a stats connection of the
    /// harness may still be closing).
    pub fn settled_fds(&self) -> usize {
        let mut last = self.fds();
        loop {
            thread::sleep(Duration::from_millis(150));
            let now = self.fds();
            if now == last {
                return now;
            }
            last = now;
        }
    }

    /// Wait until the daemon's fd count is `n` (closing is asynchronous
    /// from the test's point of view).
    pub fn expect_fds(&self, n: usize) {
        let end = Instant::now() + WAIT;
        while self.fds() != n {
            assert!(
                Instant::now() < end,
                "daemon holds {} fds, expected {n}; log:\n{}",
                self.fds(),
                self.log()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if thread::panicking() {
            eprintln!("--- imap-idle log ---\n{}", self.log());
        }
    }
}

/// Wait for `child` to exit; past `timeout`, fail with its log.
pub fn wait_exit(child: &mut Child, timeout: Duration, log: &Path) -> ExitStatus {
    let end = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        assert!(
            Instant::now() < end,
            "daemon did not exit; log:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        thread::sleep(Duration::from_millis(20));
    }
}

pub fn wait_for(mut cond: impl FnMut() -> bool, what: &str) {
    let end = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(10));
    }
}

/// A park request for a client inside IDLE with tag `A1`.
pub fn idle_park(user: &str, watch: Vec<PathBuf>) -> Park {
    Park {
        user: user.into(),
        cookie: [0x5a; 16],
        tag: "A1".into(),
        in_idle: true,
        keepalive_secs: 0,
        watch,
        state: (0..=200u8).collect(),
    }
}

/// A stand-in imap-idle's listener at `dir`/park, which blocks until the
/// library connects (played by a test thread).
pub fn stand_in_listener(dir: &Path) -> (PathBuf, SeqPacket) {
    let path = dir.join("park");
    let listener = SeqPacket::listen(&path, 0o600).expect("listen");
    listener.set_nonblocking(false).expect("blocking");
    (path, listener)
}

/// Accept the library's connection and exchange hellos as imap-idle.
pub fn accept_as_idle(listener: &SeqPacket) -> SeqPacket {
    let sock = listener.accept().expect("accept");
    sock.set_nonblocking(false).expect("blocking");
    let mut buf = vec![0; MAX_PACKET + 1];
    native::recv(&sock, &mut buf).expect("Hello");
    let hello = Message::Hello {
        role: Role::Idle,
        pid: 1,
    };
    native::send(&sock, &hello, None).expect("send Hello");
    sock
}

/// The fake mail process: parks one end of a fresh socket pair and gives
/// back the client end.
pub struct Mail {
    link: IdleLink,
}

impl Mail {
    pub fn connect(d: &Daemon) -> Mail {
        Mail {
            link: IdleLink::connect(&d.park).expect("connect to park socket"),
        }
    }

    pub fn park(&mut self, park: &Park) -> Result<(UnixStream, u64), (UnixStream, Kept)> {
        let (client, server) = UnixStream::pair().expect("socketpair");
        match self.link.park(OwnedFd::from(server), park) {
            Ok(id) => {
                client.set_read_timeout(Some(WAIT)).expect("timeout");
                Ok((client, id))
            }
            Err(NotParked::Kept(kept)) => Err((client, kept)),
            Err(lost) => panic!("park {lost}"),
        }
    }

    /// Park an existing server end (the caller plays the client).
    pub fn park_server_end(&mut self, server: UnixStream) -> Result<u64, Kept> {
        self.park_server_end_with(server, &idle_park("alice", vec![]))
    }

    pub fn park_server_end_with(&mut self, server: UnixStream, park: &Park) -> Result<u64, Kept> {
        match self.link.park(OwnedFd::from(server), park) {
            Ok(id) => Ok(id),
            Err(NotParked::Kept(kept)) => Err(kept),
            Err(lost) => panic!("park {lost}"),
        }
    }

    pub fn park_ok(&mut self, park: &Park) -> (UnixStream, u64) {
        match self.park(park) {
            Ok(x) => x,
            Err((_, kept)) => panic!("park refused: {:?} {}", kept.kind, kept.reason),
        }
    }
}

#[derive(Debug)]
pub enum Event {
    Returned(Box<Return>, OwnedFd),
    Gone(Gone),
}

/// How the fake tracker answers returns.
#[derive(Clone, Copy)]
pub enum Policy {
    Accept,
    /// Reject the first N returns, then accept.
    RejectFirst(usize),
    /// After N returns on a link, close it without answering the rest.
    DropLinkAfter(usize),
}

pub struct Tracker {
    pub events: Receiver<Event>,
    /// A copy of every link the daemon opened.
    links: Arc<Mutex<Vec<OwnedFd>>>,
}

impl Tracker {
    pub fn start(path: &Path, policy: Policy) -> Tracker {
        let listener = SeqPacket::listen(path, 0o600).expect("tracker listen");
        listener.set_nonblocking(false).expect("blocking");
        let (tx, rx) = mpsc::channel();
        let links = Arc::new(Mutex::new(Vec::new()));
        let counter = links.clone();
        let rejected = Arc::new(AtomicUsize::new(0));
        thread::spawn(move || {
            // A link each: two daemons (one taking over from the other)
            // return at the same time.
            while let Ok(sock) = listener.accept() {
                sock.set_nonblocking(false).expect("blocking");
                let copy = sock.as_fd().try_clone_to_owned().expect("dup link");
                counter.lock().unwrap().push(copy);
                let (tx, rejected) = (tx.clone(), rejected.clone());
                thread::spawn(move || serve_link(sock, policy, &tx, &rejected));
            }
        });
        Tracker { events: rx, links }
    }

    /// How many links the daemon has opened to us.
    pub fn links(&self) -> usize {
        self.links.lock().unwrap().len()
    }

    /// Hang up every link, as a tracker that restarts would.
    pub fn close_links(&self) {
        for l in self.links.lock().unwrap().iter() {
            let _ = nix::sys::socket::shutdown(
                std::os::fd::AsRawFd::as_raw_fd(l),
                nix::sys::socket::Shutdown::Both,
            );
        }
    }

    pub fn next(&self) -> Event {
        match self.events.recv_timeout(WAIT) {
            Ok(e) => e,
            Err(RecvTimeoutError::Timeout) => panic!("tracker received nothing in time"),
            Err(e) => panic!("tracker thread gone: {e}"),
        }
    }

    pub fn returned(&self) -> (Return, OwnedFd) {
        match self.next() {
            Event::Returned(r, fd) => (*r, fd),
            Event::Gone(g) => panic!("expected a return, got {g:?}"),
        }
    }

    pub fn gone(&self) -> Gone {
        match self.next() {
            Event::Gone(g) => g,
            Event::Returned(r, _) => panic!("expected gone, got {r:?}"),
        }
    }

    pub fn nothing_for(&self, d: Duration) {
        if let Ok(e) = self.events.recv_timeout(d) {
            panic!("tracker unexpectedly received {e:?}");
        }
    }
}

fn serve_link(sock: SeqPacket, policy: Policy, tx: &mpsc::Sender<Event>, rejected: &AtomicUsize) {
    let mut buf = vec![0u8; MAX_PACKET + 1];
    let mut on_this_link = 0;
    loop {
        let inc = match native::recv(&sock, &mut buf) {
            Ok(i) => i,
            // A daemon that dies resets its link.
            Err(RecvError::Closed | RecvError::Io(_)) => break,
            Err(e) => panic!("tracker got a bad packet: {e}"),
        };
        match inc.msg {
            Message::Hello { role, .. } => {
                assert_eq!(role, Role::Idle);
                let hello = Message::Hello {
                    role: Role::Tracker,
                    pid: 0,
                };
                native::send(&sock, &hello, None).expect("hello");
            }
            Message::Return(r) => {
                on_this_link += 1;
                if let Policy::DropLinkAfter(n) = policy {
                    if on_this_link > n {
                        // Our copy in `links` would keep it open.
                        let _ = nix::sys::socket::shutdown(
                            std::os::fd::AsRawFd::as_raw_fd(&sock),
                            nix::sys::socket::Shutdown::Both,
                        );
                        break;
                    }
                }
                let id = r.id;
                let answer = match policy {
                    Policy::RejectFirst(n) if rejected.fetch_add(1, Ordering::SeqCst) < n => {
                        Message::Rejected {
                            id,
                            reason: "busy".into(),
                        }
                    }
                    _ => {
                        let fd = inc.fd.expect("Return carries an fd");
                        let _ = tx.send(Event::Returned(Box::new(r), fd));
                        Message::Accepted { id }
                    }
                };
                native::send(&sock, &answer, None).expect("answer");
            }
            Message::Gone(g) => {
                let _ = tx.send(Event::Gone(g));
            }
            // The daemon's report of what it holds, on every link.
            Message::Holding { .. } => {}
            other => panic!("tracker got unexpected {other:?}"),
        }
    }
}

/// The returned descriptor is the very client socket: a line written
/// through it reaches the test's client end.
pub fn assert_same_socket(returned: &OwnedFd, client: &mut UnixStream) {
    let mut through = UnixStream::from(returned.as_fd().try_clone_to_owned().expect("dup"));
    through
        .write_all(b"* 1 EXISTS\r\n")
        .expect("write through returned fd");
    let mut got = [0u8; 12];
    client.read_exact(&mut got).expect("read at client");
    assert_eq!(&got, b"* 1 EXISTS\r\n");
}

pub fn read_exactly(client: &mut UnixStream, n: usize) -> String {
    let mut buf = vec![0u8; n];
    client.read_exact(&mut buf).expect("read from daemon");
    String::from_utf8_lossy(&buf).into_owned()
}

/// Whether root must be there: CI sets this, so a test that needs other
/// uids fails there instead of skipping.
pub const REQUIRE_ROOT_ENV: &str = "IMAP_IDLE_REQUIRE_ROOT";

/// `true` when we are root; panics when root is required; otherwise says
/// loudly what is skipped.
#[allow(dead_code)]
pub fn root_for(what: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    if std::env::var(REQUIRE_ROOT_ENV).as_deref() == Ok("1") {
        panic!("{what}: needs root ({REQUIRE_ROOT_ENV}=1)");
    }
    eprintln!("SKIPPED {what}: needs root to run processes as other uids; set {REQUIRE_ROOT_ENV}=1 to make this a failure");
    false
}
