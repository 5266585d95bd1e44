//! Native protocol v4: what our processes say to each other.
//!
//! Every packet on a UNIX `SOCK_SEQPACKET` socket is one message: a version
//! byte, then a postcard-encoded [`Message`]. A message that hands over a
//! client connection (`Park`, `Return`) carries exactly one descriptor with
//! SCM_RIGHTS on the same packet; every other message carries none. The
//! first message on each connection is `Hello`, naming the sender's role.
//! `man/imap-idle-protocol.7` is the reference for implementers.

use std::fmt;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::sys::SeqPacket;

/// 2: parks carry a request id that their answer echoes. 3: a parked
/// release names the daemon (its pid), since several may serve one tracker.
/// 4: a successor daemon takes every parked connection over; imap-idle
/// and mail processes re-report what they hold after a new link
/// (`Holding`, `Serving`), and `who` counts stale entries dropped.
pub const VERSION: u8 = 4;
/// Largest packet either side accepts; larger ones are an error.
pub const MAX_PACKET: usize = 64 * 1024;
pub const MAX_USER: usize = 256;
/// Dovecot's imap-hibernate allows 128 bytes of IDLE tag; so do we.
pub const MAX_TAG: usize = 128;
pub const MAX_STATE: usize = 16 * 1024;
pub const MAX_WATCH: usize = 8;
pub const MAX_PATH: usize = 4096;
pub const MAX_INPUT: usize = 4096;
pub const MAX_TEXT: usize = 1024;

/// A user's 128-bit cookie: only a return carrying it gets the connection back.
pub type Cookie = [u8; 16];

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// An IMAP server process that parks its idle clients.
    MailProcess,
    /// The parking daemon, returning clients to the tracker.
    Idle,
    /// The router that takes returned clients.
    Tracker,
    /// An operator's tool asking for statistics or who is doing what.
    Admin,
    /// A login process handing authenticated clients to the tracker.
    Login,
    /// A new imap-idle taking over everything the running one holds.
    Successor,
}

/// Everything a mail process hands over with the client descriptor. It
/// comes back unchanged in [`Return`], except `tag`, which the client may
/// have replaced by ending and restarting IDLE while parked.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Park {
    pub user: String,
    pub cookie: Cookie,
    /// The tag of the running IDLE command.
    pub tag: String,
    /// The client is inside IDLE (it may only send `DONE`).
    pub in_idle: bool,
    /// Seconds between `* OK Still here` lines; 0 disables them.
    pub keepalive_secs: u32,
    /// Paths whose change wakes the connection (index log, Maildir `new/`).
    #[serde(with = "super::paths")]
    pub watch: Vec<PathBuf>,
    /// The mail process's session state, opaque to the daemon.
    pub state: Vec<u8>,
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefuseKind {
    /// The daemon holds as many connections as it may.
    Full,
    /// The inotify watch limit is reached.
    WatchLimit,
    /// A path to watch cannot be watched (missing, no permission).
    BadWatch,
    /// The descriptor is not a connected stream socket.
    BadFd,
    /// The daemon is shutting down.
    ShuttingDown,
    /// A field breaks a protocol limit.
    Invalid,
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WakeReason {
    /// The client ended IDLE with `DONE`; `input` holds what followed it.
    Done,
    /// The client sent something other than `DONE` inside IDLE; `input` holds it.
    BadDone,
    /// The client, not in IDLE, sent input; `input` holds it.
    Input,
    /// A watched path changed; IDLE is still running if it was.
    Changed,
    /// The daemon is shutting down.
    Shutdown,
}

/// A woken connection on its way back (daemon -> tracker), with the client
/// descriptor attached.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Return {
    /// The id the daemon gave the connection in `Parked`.
    pub id: u64,
    pub park: Park,
    pub reason: WakeReason,
    /// Bytes read from the client and not consumed (never includes a
    /// consumed `DONE`).
    pub input: Vec<u8>,
    /// IDLE is still running: the mail process sends the changes and stays in IDLE.
    pub idle_running: bool,
    /// Seconds the connection spent parked.
    pub parked_secs: u32,
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum GoneReason {
    /// The client closed the connection or it failed.
    HungUp,
    /// A keepalive or answer could not be written without blocking.
    OutputFull,
    /// The tracker did not take the connection back in time; the client got `* BYE`.
    GaveUp,
}

/// A parked client is gone (daemon -> tracker), so the tracker can fix its counts.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Gone {
    pub id: u64,
    pub user: String,
    pub cookie: Cookie,
    pub reason: GoneReason,
    pub detail: String,
}

#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    pub parked: u64,
    /// Woken and waiting for the tracker to take them.
    pub returning: u64,
    /// inotify watches held (one per distinct watched file).
    pub watches: u64,
    pub parks: u64,
    pub refused: u64,
    pub wake_done: u64,
    pub wake_bad_done: u64,
    pub wake_input: u64,
    pub wake_changed: u64,
    pub wake_shutdown: u64,
    pub idle_restarted: u64,
    pub returned: u64,
    pub hung_up: u64,
    pub gave_up: u64,
    pub keepalives: u64,
    /// Wake latencies recorded since start (the samples below are the
    /// latest of them): a reader that asks before and after a burst takes
    /// the newest `after - before` samples as that burst's.
    pub wake_samples: u64,
    /// The latest wake latencies (at most 4096), in microseconds: from the
    /// daemon noticing a watched change to the client's descriptor being
    /// sent back (to the tracker, or to Dovecot's imap-master).
    pub wake_us: Vec<u32>,
    /// Dovecot mode: notify fds (the imap process's inotify instance)
    /// closed because one we keep for another client of the mailbox
    /// watches the same inodes; that one wakes them all.
    pub notify_shared: u64,
    /// Closed after reopening the inodes they watch by handle into our
    /// own inotify instance (needs CAP_DAC_READ_SEARCH).
    pub notify_reopened: u64,
    /// Kept open and polled, costing a descriptor and an inotify instance.
    pub notify_kept: u64,
    /// Parked connections handed to a successor daemon.
    pub handed_over: u64,
    /// Parked connections taken over from a predecessor daemon.
    pub taken_over: u64,
}

impl Stats {
    /// Fold in another daemon's counters: Dovecot's master may run several
    /// imap-idle processes, and an operator wants their sum.
    pub fn add(&mut self, other: &Stats) {
        self.parked += other.parked;
        self.returning += other.returning;
        self.watches += other.watches;
        self.parks += other.parks;
        self.refused += other.refused;
        self.wake_done += other.wake_done;
        self.wake_bad_done += other.wake_bad_done;
        self.wake_input += other.wake_input;
        self.wake_changed += other.wake_changed;
        self.wake_shutdown += other.wake_shutdown;
        self.idle_restarted += other.idle_restarted;
        self.returned += other.returned;
        self.hung_up += other.hung_up;
        self.gave_up += other.gave_up;
        self.keepalives += other.keepalives;
        self.wake_samples += other.wake_samples;
        self.wake_us.extend_from_slice(&other.wake_us);
        self.notify_shared += other.notify_shared;
        self.notify_reopened += other.notify_reopened;
        self.notify_kept += other.notify_kept;
        self.handed_over += other.handed_over;
        self.taken_over += other.taken_over;
    }
}

/// An authenticated client, login process -> tracker, with its descriptor.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Login {
    /// Chosen by the login process; the answer carries it back.
    pub seq: u64,
    pub user: String,
    /// The UNIX uid the user's mail belongs to.
    pub uid: u32,
    /// Tag of the client's LOGIN command: the mail process answers it.
    pub tag: String,
    /// Addresses, for logs and `who` ("ip:port").
    pub local: String,
    pub remote: String,
    /// Bytes the client sent after the LOGIN command (pipelining).
    pub input: Vec<u8>,
}

/// Why a mail process receives a client.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum Assignment {
    /// A fresh login: answer `tag OK` and serve `input`.
    Login { tag: String, input: Vec<u8> },
    /// A client coming back from imap-idle: restore the session from
    /// `park.state` and act on the wake reason.
    Restore(Return),
}

/// tracker -> mail process, with the client descriptor.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Assign {
    /// The tracker's id for this connection, used in `Released`.
    pub conn: u64,
    pub user: String,
    pub uid: u32,
    /// The user's cookie: the mail process parks the client with it.
    pub cookie: Cookie,
    pub remote: String,
    pub how: Assignment,
}

/// How a connection left a mail process.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum Release {
    /// Logged out, hung up, or disconnected by the server.
    Closed,
    /// Parked in imap-idle under the daemon's id `idle_id`. `idle_pid` is
    /// the pid that daemon gave in its Hello on the park socket: ids of
    /// different daemons may collide, so the tracker keys parked
    /// connections by both, and takes a return or gone notice for them
    /// only from the link whose Hello gave that pid.
    Parked {
        idle_id: u64,
        idle_pid: u32,
        mailbox: String,
    },
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activity {
    /// Running a command, or between commands.
    Active,
    /// Inside IDLE in a mail process.
    Idle,
    /// Parked in imap-idle.
    Parked,
    /// Woken, on its way back to a mail process.
    Returning,
}

/// One connection as its holder sees it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ConnInfo {
    /// Tracker connection id (mail processes) or daemon id (imap-idle).
    pub id: u64,
    pub user: String,
    /// Selected mailbox; empty when none or unknown.
    pub mailbox: String,
    pub activity: Activity,
    /// Seconds in this activity.
    pub secs: u32,
}

/// One line of `imap-tracker who`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct WhoRow {
    pub user: String,
    pub conn: u64,
    /// Pid of the mail process holding it, or of imap-idle when parked.
    pub pid: u32,
    pub mailbox: String,
    pub activity: Activity,
    pub secs: u32,
    pub remote: String,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// First message on every connection, both ways.
    Hello { role: Role, pid: u32 },
    /// The sender found a problem and closes the connection.
    Error { reason: String },
    /// mail process -> daemon, with the client fd. `req` is the sender's
    /// request id; the answer carries it back, so an answer can never be
    /// taken for another park's.
    Park { req: u64, park: Park },
    /// daemon -> mail process: the daemon owns the client now; close yours.
    Parked { req: u64, id: u64 },
    /// daemon -> mail process: keep the client.
    Refused {
        req: u64,
        kind: RefuseKind,
        reason: String,
    },
    /// daemon -> tracker, with the client fd.
    Return(Return),
    /// tracker -> daemon: the tracker owns the client now.
    Accepted { id: u64 },
    /// tracker -> daemon: not now; the daemon retries until its deadline.
    Rejected { id: u64, reason: String },
    /// daemon -> tracker: a parked client is gone.
    Gone(Gone),
    /// admin -> daemon.
    StatsRequest,
    /// daemon -> admin.
    Stats(Stats),
    /// mail process -> tracker, right after Hello: the uid it runs as and
    /// how many active connections it takes.
    Register { uid: u32, capacity: u32 },
    /// tracker -> mail process: registration accepted.
    Registered,
    /// login process -> tracker, with the client fd.
    Login(Login),
    /// tracker -> login process: a mail process has the client; close yours.
    LoginAccepted { seq: u64, conn: u64, pid: u32 },
    /// tracker -> login process: keep the client and tell it `reason`.
    LoginRefused { seq: u64, reason: String },
    /// tracker -> mail process, with the client fd.
    Assign(Assign),
    /// mail process -> tracker: a connection left this process.
    Released { conn: u64, how: Release },
    /// admin -> tracker: who is connected (all users, or one).
    WhoRequest { user: Option<String> },
    /// tracker -> mail process or imap-idle: list your connections.
    Describe { query: u64, user: Option<String> },
    /// mail process or imap-idle -> tracker; long lists span several
    /// messages, the last one with `last` set.
    Described {
        query: u64,
        conns: Vec<ConnInfo>,
        last: bool,
    },
    /// tracker -> admin, in as many messages as needed; `missing` names
    /// the processes that did not answer in time.
    Who {
        rows: Vec<WhoRow>,
        missing: Vec<String>,
        last: bool,
        /// Entries dropped since the tracker started because the imap-idle
        /// that held them no longer did (it restarted, or lost them).
        stale: u64,
    },
    /// daemon -> successor, right after Hello: its listening sockets,
    /// one descriptor each, in this order, and how long it has run (the
    /// successor keeps its clock, so keepalives keep their instants).
    Listeners {
        kinds: Vec<ListenerKind>,
        age_ms: u64,
    },
    /// daemon -> successor: parked connections, their descriptors in
    /// order (the client's, then its notify fd where it has one).
    Handing { batch: u64, conns: Vec<Handed> },
    /// successor -> daemon: the ids (the daemon's) of the connections of
    /// `batch` the successor holds now; the daemon keeps the rest.
    TookOver { batch: u64, ids: Vec<u64> },
    /// daemon -> successor: nothing more to hand. When the successor took
    /// every batch whole, the daemon exits once what it still holds
    /// (returns under way) is gone; otherwise both go on serving their own.
    HandedAll,
    /// daemon -> tracker, right after the Hellos on every link: the
    /// connections it holds (parked or returning), so that a restarted
    /// tracker knows them again and one that outlived a crash of the
    /// daemon drops what is gone. Long lists span several messages.
    Holding { held: Vec<Held>, last: bool },
    /// mail process -> tracker, after `Registered` on a new link: the
    /// connections it serves, so that a restarted tracker knows them again.
    Serving { conns: Vec<Served>, last: bool },
}

/// One of the listening sockets a daemon hands to its successor.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerKind {
    /// The park socket.
    Park,
    /// Dovecot mode: the imap-hibernate socket.
    HandOff,
}

/// A parked connection on its way to a successor: everything the daemon
/// keeps about it, so the successor carries on exactly where it was. New
/// per-connection state belongs here, so that it travels too.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Handed {
    /// The sender's id for it; [`Message::TookOver`] names it.
    pub id: u64,
    /// What it was parked with (Dovecot mode: `state` is the return tail).
    pub park: Park,
    /// Dovecot mode: a notify fd follows the client's.
    pub notify: bool,
    /// When its next keepalive is due: ms since the sender started (the
    /// successor keeps the sender's clock, see `Listeners`); 0: none.
    pub keepalive_at_ms: u64,
    /// Bytes of a `DONE` typed so far.
    pub partial: Vec<u8>,
    /// Seconds it has been parked.
    pub parked_secs: u32,
    /// Dovecot 2.4: 0 plain; 1 its output is multiplexed; 2 likewise, and
    /// it was switched to channel 0 already.
    pub multiplex: u8,
}

/// One connection imap-idle holds, as it re-reports it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Held {
    /// The daemon's id (as in `Parked`).
    pub id: u64,
    pub user: String,
    /// The cookie it was parked with: a re-report of a user only counts
    /// with that user's cookie.
    pub cookie: Cookie,
}

/// One connection a mail process serves, as it re-reports it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Served {
    /// The tracker's id (as in `Assign`).
    pub conn: u64,
    pub user: String,
    pub uid: u32,
    pub cookie: Cookie,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProtoError {
    Empty,
    Version(u8),
    TooLarge,
    Decode(String),
    TrailingBytes(usize),
    Limit(&'static str),
    FdCount { expected: usize, got: usize },
    FdsTruncated,
}

impl fmt::Display for ProtoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProtoError::Empty => write!(f, "empty packet"),
            ProtoError::Version(v) => {
                write!(
                    f,
                    "unsupported protocol version {v} (this side speaks {VERSION})"
                )
            }
            ProtoError::TooLarge => write!(f, "packet larger than {MAX_PACKET} bytes"),
            ProtoError::Decode(e) => write!(f, "malformed message: {e}"),
            ProtoError::TrailingBytes(n) => write!(f, "malformed message: {n} trailing bytes"),
            ProtoError::Limit(what) => write!(f, "limit exceeded: {what}"),
            ProtoError::FdCount { expected, got } => {
                write!(f, "message carries {got} fds, expected {expected}")
            }
            ProtoError::FdsTruncated => write!(f, "fds were truncated in transit"),
        }
    }
}

impl std::error::Error for ProtoError {}

impl Message {
    /// How many descriptors must travel with this message.
    pub fn fds_expected(&self) -> usize {
        match self {
            Message::Listeners { kinds, .. } => kinds.len(),
            Message::Handing { conns, .. } => conns.iter().map(|c| 1 + c.notify as usize).sum(),
            m => matches!(
                m,
                Message::Park { .. } | Message::Return(_) | Message::Login(_) | Message::Assign(_)
            ) as usize,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![VERSION];
        // Serializing into a Vec cannot fail for these types.
        out.extend(postcard::to_stdvec(self).unwrap_or_default());
        out
    }

    /// Decode and check limits. Never panics, whatever the bytes.
    pub fn decode(bytes: &[u8]) -> Result<Message, ProtoError> {
        let (&version, body) = bytes.split_first().ok_or(ProtoError::Empty)?;
        if version != VERSION {
            return Err(ProtoError::Version(version));
        }
        if bytes.len() > MAX_PACKET {
            return Err(ProtoError::TooLarge);
        }
        let (msg, rest): (Message, _) =
            postcard::take_from_bytes(body).map_err(|e| ProtoError::Decode(e.to_string()))?;
        if !rest.is_empty() {
            return Err(ProtoError::TrailingBytes(rest.len()));
        }
        msg.check_limits()?;
        Ok(msg)
    }

    fn check_limits(&self) -> Result<(), ProtoError> {
        fn text(s: &str, what: &'static str) -> Result<(), ProtoError> {
            if s.len() > MAX_TEXT {
                return Err(ProtoError::Limit(what));
            }
            Ok(())
        }
        match self {
            Message::Park { park, .. } => park.check_limits(),
            Message::Return(r) => {
                r.park.check_limits()?;
                input(&r.input)
            }
            Message::Gone(g) => {
                check_user(&g.user)?;
                text(&g.detail, "detail too long")
            }
            Message::Login(l) => {
                check_user(&l.user)?;
                check_tag(&l.tag)?;
                text(&l.local, "address too long")?;
                text(&l.remote, "address too long")?;
                input(&l.input)
            }
            Message::Assign(a) => {
                check_user(&a.user)?;
                text(&a.remote, "address too long")?;
                match &a.how {
                    Assignment::Login { tag, input: i } => {
                        check_tag(tag)?;
                        input(i)
                    }
                    Assignment::Restore(r) => {
                        r.park.check_limits()?;
                        input(&r.input)
                    }
                }
            }
            Message::Released {
                how: Release::Parked { mailbox, .. },
                ..
            } => text(mailbox, "mailbox name too long"),
            Message::WhoRequest { user: Some(u) } | Message::Describe { user: Some(u), .. } => {
                check_user(u)
            }
            Message::Handing { conns, .. } => conns.iter().try_for_each(|c| {
                c.park.check_limits()?;
                if c.partial.len() > MAX_TAG + 16 {
                    return Err(ProtoError::Limit("partial input too long"));
                }
                Ok(())
            }),
            Message::Holding { held, .. } => held.iter().try_for_each(|h| check_user(&h.user)),
            Message::Serving { conns, .. } => conns.iter().try_for_each(|c| check_user(&c.user)),
            Message::Error { reason }
            | Message::Refused { reason, .. }
            | Message::Rejected { reason, .. }
            | Message::LoginRefused { reason, .. } => text(reason, "reason too long"),
            _ => Ok(()),
        }
    }
}

fn input(bytes: &[u8]) -> Result<(), ProtoError> {
    if bytes.len() > MAX_INPUT {
        return Err(ProtoError::Limit("client input too long"));
    }
    Ok(())
}

fn check_tag(tag: &str) -> Result<(), ProtoError> {
    if tag.is_empty() || tag.len() > MAX_TAG {
        return Err(ProtoError::Limit("tag empty or too long"));
    }
    if tag.bytes().any(|b| b <= b' ' || b >= 0x7f) {
        return Err(ProtoError::Limit("tag has spaces or control characters"));
    }
    Ok(())
}

fn check_user(user: &str) -> Result<(), ProtoError> {
    if user.is_empty() || user.len() > MAX_USER {
        return Err(ProtoError::Limit("user name empty or too long"));
    }
    if user.bytes().any(|b| b.is_ascii_control()) {
        return Err(ProtoError::Limit("user name has control characters"));
    }
    Ok(())
}

impl Park {
    fn check_limits(&self) -> Result<(), ProtoError> {
        check_user(&self.user)?;
        check_tag(&self.tag)?;
        if self.state.len() > MAX_STATE {
            return Err(ProtoError::Limit("state too long"));
        }
        if self.watch.len() > MAX_WATCH {
            return Err(ProtoError::Limit("too many paths to watch"));
        }
        for p in &self.watch {
            let len = p.as_os_str().len();
            if len == 0 || len > MAX_PATH || !p.is_absolute() {
                return Err(ProtoError::Limit("watch path empty, relative or too long"));
            }
        }
        Ok(())
    }
}

/// Split a long list into pieces whose messages stay well under
/// `MAX_PACKET`, judged by each item's encoded size.
pub fn chunks<T: Serialize>(items: Vec<T>) -> Vec<Vec<T>> {
    const BUDGET: usize = MAX_PACKET / 2;
    let mut out = vec![Vec::new()];
    let mut used = 0;
    for item in items {
        let size = postcard::experimental::serialized_size(&item).unwrap_or(BUDGET);
        if used + size > BUDGET && !out.last().is_some_and(|c| c.is_empty()) {
            out.push(Vec::new());
            used = 0;
        }
        used += size;
        if let Some(last) = out.last_mut() {
            last.push(item);
        }
    }
    out
}

/// One received message with the descriptors that came with it.
#[derive(Debug)]
pub struct Incoming {
    pub msg: Message,
    /// Present exactly when `msg` is one that carries a single descriptor.
    pub fd: Option<OwnedFd>,
    /// The descriptors of a hand-over message (`Listeners`, `Handing`), in
    /// order; empty for every other message.
    pub fds: Vec<OwnedFd>,
}

#[derive(Debug)]
pub enum RecvError {
    /// The peer closed the connection.
    Closed,
    Io(std::io::Error),
    /// The packet was bad; whatever descriptors came with it are closed.
    Proto(ProtoError),
}

impl fmt::Display for RecvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecvError::Closed => write!(f, "connection closed"),
            RecvError::Io(e) => write!(f, "{e}"),
            RecvError::Proto(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for RecvError {}

/// Receive and check one message. `buf` must be at least `MAX_PACKET + 1`
/// bytes so an oversize packet is seen as such.
pub fn recv(sock: &SeqPacket, buf: &mut [u8]) -> Result<Incoming, RecvError> {
    let got = sock.recv(buf).map_err(RecvError::Io)?;
    // Any early return below drops `got.fds`, closing what came.
    if got.len == 0 && got.fds.is_empty() {
        return Err(RecvError::Closed);
    }
    if got.truncated || got.len > MAX_PACKET {
        return Err(RecvError::Proto(ProtoError::TooLarge));
    }
    if got.fds_truncated {
        return Err(RecvError::Proto(ProtoError::FdsTruncated));
    }
    let msg = Message::decode(&buf[..got.len]).map_err(RecvError::Proto)?;
    let expected = msg.fds_expected();
    if got.fds.len() != expected {
        return Err(RecvError::Proto(ProtoError::FdCount {
            expected,
            got: got.fds.len(),
        }));
    }
    let many = matches!(msg, Message::Listeners { .. } | Message::Handing { .. });
    let (fd, fds) = if many {
        (None, got.fds)
    } else {
        (got.fds.into_iter().next(), Vec::new())
    };
    Ok(Incoming { msg, fd, fds })
}

/// How long a peer that must not drop a message waits for a slow reader.
pub const PATIENCE: std::time::Duration = std::time::Duration::from_secs(5);

/// `send` that waits up to [`PATIENCE`] for room on a non-blocking socket.
pub fn send_patiently(
    sock: &SeqPacket,
    msg: &Message,
    fd: Option<BorrowedFd<'_>>,
) -> std::io::Result<()> {
    let fds: &[BorrowedFd<'_>] = match &fd {
        Some(fd) => std::slice::from_ref(fd),
        None => &[],
    };
    sock.send_patiently(&msg.encode(), fds, PATIENCE)
}

/// Send one message, with the client descriptor for `Park` and `Return`.
pub fn send(sock: &SeqPacket, msg: &Message, fd: Option<BorrowedFd<'_>>) -> std::io::Result<()> {
    let fds: &[BorrowedFd<'_>] = match &fd {
        Some(fd) => std::slice::from_ref(fd),
        None => &[],
    };
    sock.send(&msg.encode(), fds)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample_park() -> Park {
        Park {
            user: "alice".into(),
            cookie: [7; 16],
            tag: "a1".into(),
            in_idle: true,
            keepalive_secs: 120,
            watch: vec![PathBuf::from("/var/mail/alice/new")],
            state: vec![1, 2, 3],
        }
    }

    #[test]
    fn every_message_round_trips() {
        let msgs = vec![
            Message::Hello {
                role: Role::MailProcess,
                pid: 42,
            },
            Message::Error { reason: "x".into() },
            Message::Park {
                req: 7,
                park: sample_park(),
            },
            Message::Parked {
                req: 7,
                id: 1 << 40,
            },
            Message::Refused {
                req: 7,
                kind: RefuseKind::Full,
                reason: "full".into(),
            },
            Message::Return(Return {
                id: 9,
                park: sample_park(),
                reason: WakeReason::BadDone,
                input: b"a NOOP\r\n".to_vec(),
                idle_running: false,
                parked_secs: 3,
            }),
            Message::Accepted { id: 9 },
            Message::Rejected {
                id: 9,
                reason: "busy".into(),
            },
            Message::Gone(Gone {
                id: 9,
                user: "alice".into(),
                cookie: [0; 16],
                reason: GoneReason::HungUp,
                detail: "EOF".into(),
            }),
            Message::StatsRequest,
            Message::Stats(Stats {
                parked: 5,
                ..Stats::default()
            }),
            Message::Register {
                uid: 1000,
                capacity: 50,
            },
            Message::Registered,
            Message::Login(Login {
                seq: 3,
                user: "alice".into(),
                uid: 1000,
                tag: "a1".into(),
                local: "127.0.0.1:143".into(),
                remote: "127.0.0.1:5000".into(),
                input: b"b NOOP\r\n".to_vec(),
            }),
            Message::LoginAccepted {
                seq: 3,
                conn: 8,
                pid: 77,
            },
            Message::LoginRefused {
                seq: 3,
                reason: "busy".into(),
            },
            Message::Assign(Assign {
                conn: 8,
                user: "alice".into(),
                uid: 1000,
                cookie: [1; 16],
                remote: "127.0.0.1:5000".into(),
                how: Assignment::Login {
                    tag: "a1".into(),
                    input: Vec::new(),
                },
            }),
            Message::Released {
                conn: 8,
                how: Release::Parked {
                    idle_id: 5,
                    idle_pid: 4321,
                    mailbox: "INBOX".into(),
                },
            },
            Message::WhoRequest { user: None },
            Message::Describe {
                query: 1,
                user: Some("alice".into()),
            },
            Message::Described {
                query: 1,
                conns: vec![ConnInfo {
                    id: 8,
                    user: "alice".into(),
                    mailbox: "INBOX".into(),
                    activity: Activity::Idle,
                    secs: 4,
                }],
                last: true,
            },
            Message::Who {
                rows: Vec::new(),
                missing: vec!["x".into()],
                last: true,
                stale: 3,
            },
            Message::Holding {
                held: vec![Held {
                    id: 9,
                    user: "alice".into(),
                    cookie: [7; 16],
                }],
                last: false,
            },
            Message::Serving {
                conns: vec![Served {
                    conn: 1 << 40,
                    user: "bob".into(),
                    uid: 1000,
                    cookie: [1; 16],
                }],
                last: true,
            },
            Message::Listeners {
                kinds: vec![ListenerKind::Park, ListenerKind::HandOff],
                age_ms: 12345,
            },
            Message::Handing {
                batch: 2,
                conns: vec![handed(true)],
            },
            Message::TookOver {
                batch: 2,
                ids: vec![1 << 33],
            },
            Message::HandedAll,
        ];
        for m in msgs {
            assert_eq!(Message::decode(&m.encode()).unwrap(), m);
        }
    }

    fn handed(notify: bool) -> Handed {
        Handed {
            id: 1 << 33,
            park: sample_park(),
            notify,
            keepalive_at_ms: 900,
            partial: b"DO".to_vec(),
            parked_secs: 60,
            multiplex: 2,
        }
    }

    #[test]
    fn hand_over_messages_count_their_descriptors() {
        let batch = Message::Handing {
            batch: 1,
            conns: vec![handed(false), handed(true), handed(false)],
        };
        assert_eq!(batch.fds_expected(), 4, "one each, two with a notify fd");
        let listeners = Message::Listeners {
            kinds: vec![ListenerKind::Park],
            age_ms: 0,
        };
        assert_eq!(listeners.fds_expected(), 1);
        assert_eq!(Message::HandedAll.fds_expected(), 0);
        let mut long = handed(false);
        long.partial = vec![b'D'; MAX_TAG + 17];
        let bad = Message::Handing {
            batch: 1,
            conns: vec![long],
        };
        assert!(matches!(
            Message::decode(&bad.encode()),
            Err(ProtoError::Limit(_))
        ));
    }

    #[test]
    fn variant_indices_match_the_manual() {
        assert_eq!(Message::HandedAll.encode(), [VERSION, 25]);
        let hello = Message::Hello {
            role: Role::Successor,
            pid: 1,
        };
        assert_eq!(hello.encode(), [VERSION, 0, 5, 1]);
        assert_eq!(Message::Registered.encode(), [4, 12]);
        assert_eq!(Message::WhoRequest { user: None }.encode(), [4, 18, 0]);
        let holding = Message::Holding {
            held: Vec::new(),
            last: true,
        };
        assert_eq!(holding.encode(), [4, 26, 0, 1]);
        let serving = Message::Serving {
            conns: Vec::new(),
            last: false,
        };
        assert_eq!(serving.encode(), [4, 27, 0, 0]);
        let hello = Message::Hello {
            role: Role::Login,
            pid: 1,
        };
        assert_eq!(hello.encode(), [4, 0, 4, 1]);
        let long: Vec<u32> = (0..100_000).collect();
        let pieces = chunks(long);
        assert!(pieces.len() > 1);
        assert!(pieces
            .iter()
            .all(|p| postcard::to_stdvec(p).unwrap().len() < MAX_PACKET));
        assert_eq!(pieces.concat(), (0..100_000).collect::<Vec<u32>>());
        assert_eq!(chunks(Vec::<u32>::new()), vec![Vec::<u32>::new()]);
    }

    #[test]
    fn non_utf8_paths_survive() {
        use std::os::unix::ffi::OsStringExt;
        let mut p = sample_park();
        p.watch = vec![PathBuf::from(std::ffi::OsString::from_vec(
            b"/tmp/\xff".to_vec(),
        ))];
        let m = Message::Park { req: 1, park: p };
        assert_eq!(Message::decode(&m.encode()).unwrap(), m);
    }

    #[test]
    fn rejects_bad_packets_without_panicking() {
        assert_eq!(Message::decode(&[]), Err(ProtoError::Empty));
        assert_eq!(Message::decode(&[1, 0]), Err(ProtoError::Version(1)));
        assert_eq!(Message::decode(&[3, 12]), Err(ProtoError::Version(3)));
        assert!(matches!(Message::decode(&[4]), Err(ProtoError::Decode(_))));
        assert!(matches!(
            Message::decode(&[4, 200]),
            Err(ProtoError::Decode(_))
        ));
        let mut extra = Message::StatsRequest.encode();
        extra.push(0);
        assert_eq!(Message::decode(&extra), Err(ProtoError::TrailingBytes(1)));
        // Every prefix of a real message, and every single-byte corruption.
        let full = Message::Park {
            req: 1,
            park: sample_park(),
        }
        .encode();
        for n in 0..full.len() {
            let _ = Message::decode(&full[..n]);
            for v in [0u8, 0x7f, 0x80, 0xff] {
                let mut bad = full.clone();
                bad[n] = v;
                let _ = Message::decode(&bad);
            }
        }
    }

    #[test]
    fn enforces_limits() {
        let mut p = sample_park();
        p.tag = "a b".into();
        assert!(matches!(
            Message::decode(&Message::Park { req: 1, park: p }.encode()),
            Err(ProtoError::Limit(_))
        ));
        let mut p = sample_park();
        p.watch = vec![PathBuf::from("relative")];
        assert!(matches!(
            Message::decode(&Message::Park { req: 1, park: p }.encode()),
            Err(ProtoError::Limit(_))
        ));
        let mut p = sample_park();
        p.state = vec![0; MAX_STATE + 1];
        assert!(matches!(
            Message::decode(&Message::Park { req: 1, park: p }.encode()),
            Err(ProtoError::Limit(_))
        ));
    }

    #[test]
    fn recv_checks_fd_counts() {
        let (a, b) = SeqPacket::pair().unwrap();
        let mut buf = vec![0u8; MAX_PACKET + 1];
        // A Park without its fd.
        a.send(
            &Message::Park {
                req: 1,
                park: sample_park(),
            }
            .encode(),
            &[],
        )
        .unwrap();
        assert!(matches!(
            recv(&b, &mut buf),
            Err(RecvError::Proto(ProtoError::FdCount {
                expected: 1,
                got: 0
            }))
        ));
        // A StatsRequest with an fd it should not have.
        use std::os::fd::AsFd;
        let (x, _y) = std::os::unix::net::UnixStream::pair().unwrap();
        a.send(&Message::StatsRequest.encode(), &[x.as_fd()])
            .unwrap();
        assert!(matches!(
            recv(&b, &mut buf),
            Err(RecvError::Proto(ProtoError::FdCount {
                expected: 0,
                got: 1
            }))
        ));
        send(
            &a,
            &Message::Park {
                req: 1,
                park: sample_park(),
            },
            Some(x.as_fd()),
        )
        .unwrap();
        let inc = recv(&b, &mut buf).unwrap();
        assert!(inc.fd.is_some());
        drop(a);
        assert!(matches!(recv(&b, &mut buf), Err(RecvError::Closed)));
    }
}
