//! Property tests of the core: random interleavings of park, input,
//! mailbox changes, hang-ups, failed writes, the return path accepting,
//! rejecting and losing its link, timers and shutdown, over a few hundred
//! connections, with a model that checks after every step:
//!
//! 1. every connection ends exactly once (returned, gone, given up, or an
//!    unconfirmed park), never two of these, and none is left after
//!    shutdown;
//! 2. every descriptor is closed exactly once, and only once its
//!    connection ended;
//! 3. the watch table's live counts match the parked connections, and the
//!    kernel watches held are exactly the ones the table knows;
//! 4. a returned connection carries the state, tag (the last restarted
//!    one) and input it was parked with.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::os::fd::{AsRawFd, RawFd};
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::{Action, Arrival, ConnId, Core, Phase, Presence, Tuning};
use crate::proto::native::{GoneReason, WakeReason};

/// A stand-in descriptor that records when it is closed.
#[derive(Debug)]
struct FakeFd {
    n: RawFd,
    closed: Rc<RefCell<Vec<RawFd>>>,
}

impl AsRawFd for FakeFd {
    fn as_raw_fd(&self) -> RawFd {
        self.n
    }
}

impl Drop for FakeFd {
    fn drop(&mut self) {
        self.closed.borrow_mut().push(self.n);
    }
}

const PATHS: u32 = 6;
const CHUNKS: [&[u8]; 7] = [
    b"DONE\r\n",
    b"DONE\r\nB7 IDLE\r\n",
    b"DON",
    b"E\r\n",
    b"x NOOP\r\n",
    b"DONE\r\nA1 NOOP\r\n",
    &[b'a'; 200],
];

#[derive(Debug, Clone)]
enum Step {
    Park {
        user: u8,
        paths: Vec<u32>,
        in_idle: bool,
        keepalive: u32,
        confirmed: bool,
    },
    Input(usize, usize),
    HangUp(usize),
    Change(u32),
    WatchGone(u32),
    Overflow,
    Advance {
        ms: u64,
        fail_writes: bool,
    },
    Pump(usize),
    Accept(usize),
    Reject(usize),
    StaleAnswer(u64),
    LinkLost,
    GiveUp(usize),
    Shutdown,
    Retire,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        12 => (
            0u8..20,
            proptest::collection::vec(0..PATHS, 0..3),
            any::<bool>(),
            prop_oneof![Just(0u32), Just(1), Just(60)],
            prop::bool::weighted(0.95),
        )
            .prop_map(|(user, paths, in_idle, keepalive, confirmed)| Step::Park {
                user,
                paths,
                in_idle,
                keepalive,
                confirmed,
            }),
        4 => (any::<usize>(), 0..CHUNKS.len()).prop_map(|(c, k)| Step::Input(c, k)),
        1 => any::<usize>().prop_map(Step::HangUp),
        2 => (0..PATHS).prop_map(Step::Change),
        1 => (0..PATHS).prop_map(Step::WatchGone),
        1 => Just(Step::Overflow),
        2 => (prop_oneof![Just(10u64), Just(1_000), Just(15_000), Just(70_000)],
              prop::bool::weighted(0.1))
            .prop_map(|(ms, fail_writes)| Step::Advance { ms, fail_writes }),
        3 => (1usize..80).prop_map(Step::Pump),
        3 => any::<usize>().prop_map(Step::Accept),
        1 => any::<usize>().prop_map(Step::Reject),
        1 => any::<u64>().prop_map(Step::StaleAnswer),
        1 => Just(Step::LinkLost),
        1 => any::<usize>().prop_map(Step::GiveUp),
        1 => Just(Step::Shutdown),
        1 => Just(Step::Retire),
    ]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Returned,
    Gone,
    GaveUp,
    Unconfirmed,
}

struct Expect {
    fds: Vec<RawFd>,
    state: Vec<u8>,
    tag: String,
    in_idle: bool,
    /// Bytes the client sent since it was parked or last restarted IDLE.
    sent: Vec<u8>,
    paths: Vec<PathBuf>,
}

struct Model {
    core: Core<FakeFd, u32>,
    closed: Rc<RefCell<Vec<RawFd>>>,
    next_fd: RawFd,
    now: Instant,
    live: BTreeMap<ConnId, Expect>,
    ended: HashMap<ConnId, (End, Vec<RawFd>)>,
    /// Kernel watches our stand-in inotify holds.
    kernel: HashSet<u32>,
    /// Returns the stand-in tracker holds, unanswered.
    tracker: Vec<ConnId>,
    parks: usize,
    /// Descriptors of refused arrivals, handed back (and so closed here).
    refused: HashSet<RawFd>,
}

fn path(p: u32) -> PathBuf {
    PathBuf::from(format!("/mail/m{p}/new"))
}

impl Model {
    fn new() -> Model {
        let now = Instant::now();
        Model {
            core: Core::new(400, true, now, 0x5eed, Tuning::default()),
            closed: Rc::new(RefCell::new(Vec::new())),
            next_fd: 100,
            now,
            live: BTreeMap::new(),
            ended: HashMap::new(),
            kernel: HashSet::new(),
            tracker: Vec::new(),
            parks: 0,
            refused: HashSet::new(),
        }
    }

    fn fd(&mut self) -> FakeFd {
        self.next_fd += 1;
        FakeFd {
            n: self.next_fd,
            closed: self.closed.clone(),
        }
    }

    fn pick(&self, i: usize) -> Option<ConnId> {
        let n = self.live.len();
        (n > 0).then(|| *self.live.keys().nth(i % n).unwrap())
    }

    fn end(&mut self, id: ConnId, how: End) {
        let e = self.live.remove(&id).unwrap_or_else(|| {
            panic!(
                "{id:#x} ended as {how:?} but is not live (ended before as {:?})",
                self.ended.get(&id).map(|e| e.0)
            )
        });
        assert!(self.ended.insert(id, (how, e.fds)).is_none());
        self.tracker.retain(|&t| t != id);
    }

    /// Carry out the core's actions as the event loop would.
    fn drain(&mut self, fail_writes: bool) {
        while let Some(a) = self.core.next_action() {
            match a {
                Action::Unpoll { .. } | Action::Capacity => {}
                Action::Write { id, bytes, what } => {
                    assert!(self.core.holds(id), "write to a connection we left");
                    if bytes.ends_with(b"+ idling\r\n") {
                        let e = self.live.get_mut(&id).expect("restart of a live conn");
                        let tag = e.tag.clone();
                        assert!(bytes.starts_with(format!("{tag} OK").as_bytes()));
                        e.tag = "B7".into();
                        e.sent.clear();
                    }
                    if fail_writes {
                        self.core.write_failed(id, true, what, "full");
                    }
                }
                Action::Close(fd) | Action::Bye { fd, .. } => {
                    let n = fd.n;
                    assert!(
                        self.ended.values().any(|(_, fds)| fds.contains(&n)),
                        "fd {n} closed while its connection is live"
                    );
                }
                Action::Unwatch(wd) => {
                    assert!(self.kernel.remove(&wd), "watch {wd} removed twice");
                }
                Action::Gone(g) => {
                    let how = if g.reason == GoneReason::GaveUp {
                        End::GaveUp
                    } else {
                        End::Gone
                    };
                    self.end(g.id, how);
                }
                Action::Abandon(id) => assert!(!self.core.holds(id)),
                Action::Joined(_) | Action::Left(_) => panic!("presence is not announced here"),
            }
        }
    }

    fn park(&mut self, user: u8, paths: &[u32], in_idle: bool, keepalive: u32) {
        let fd = self.fd();
        let fds: Vec<RawFd> = vec![fd.n];
        let mut paths: Vec<u32> = paths.to_vec();
        paths.dedup();
        for &p in &paths {
            self.kernel.insert(p);
        }
        let pbufs: Vec<PathBuf> = paths.iter().map(|&p| path(p)).collect();
        let watches = paths
            .iter()
            .zip(&pbufs)
            .map(|(&p, b)| (p, b.as_path()))
            .collect();
        self.parks += 1;
        let state = format!("state-{}", self.parks).into_bytes();
        let tag = format!("T{}", self.parks);
        let arrival = Arrival {
            fd,
            user: &format!("user{user}"),
            cookie: [user; 16],
            tag: &tag,
            in_idle,
            multiplex: false,
            keepalive_secs: keepalive,
            watches,
            state: &state,
            from_pid: 1,
            carried: Default::default(),
        };
        match self.core.adopt(arrival, self.now) {
            Ok(id) => {
                let e = Expect {
                    fds,
                    state,
                    tag,
                    in_idle,
                    sent: Vec::new(),
                    paths: pbufs,
                };
                assert!(self.live.insert(id, e).is_none(), "id {id:#x} reused");
            }
            Err(r) => {
                assert!(self.core.draining() || self.core.len() >= 400);
                self.refused.extend(fds);
                drop(r);
            }
        }
    }

    fn input(&mut self, id: ConnId, chunk: &[u8]) {
        let Some(budget) = self.core.read_budget(id) else {
            return;
        };
        let chunk = &chunk[..chunk.len().min(budget)];
        if chunk.is_empty() {
            return;
        }
        if let Some(e) = self.live.get_mut(&id) {
            e.sent.extend_from_slice(chunk);
        }
        self.core.input(id, chunk, self.now);
    }

    /// The stand-in tracker takes up to `n` returns.
    fn pump(&mut self, n: usize) {
        for _ in 0..n {
            if self.core.in_flight() >= 64 {
                return;
            }
            let Some(id) = self.core.pop_return() else {
                return;
            };
            let r = self.core.returning(id).expect("a popped return is there");
            let e = &self.live[&id];
            let msg = r.message(id, 0);
            assert_eq!(msg.park.state, e.state, "state of {id:#x}");
            assert_eq!(msg.park.tag, e.tag, "tag of {id:#x}");
            assert_eq!(msg.park.watch, e.paths, "paths of {id:#x}");
            let sent = &e.sent;
            let want: &[u8] = match msg.reason {
                WakeReason::Done => &sent[6..],
                _ => sent,
            };
            assert_eq!(msg.input, want, "input of {id:#x} ({:?})", msg.reason);
            if matches!(msg.reason, WakeReason::Changed | WakeReason::Shutdown) {
                assert_eq!(msg.idle_running, e.in_idle);
            } else {
                assert!(!msg.idle_running);
            }
            self.core.sending(id);
            self.core.sent(id, self.now);
            self.tracker.push(id);
        }
    }

    fn apply(&mut self, s: &Step) {
        let now = self.now;
        let mut fail_writes = false;
        match *s {
            Step::Park {
                user,
                ref paths,
                in_idle,
                keepalive,
                confirmed,
            } => {
                self.park(user, paths, in_idle, keepalive);
                if !confirmed {
                    if let Some((&id, _)) = self.live.iter().next_back() {
                        if self.core.get(id).is_some_and(|c| c.phase == Phase::Parked) {
                            self.core.unconfirmed(id);
                            self.end(id, End::Unconfirmed);
                        }
                    }
                }
            }
            Step::Input(c, k) => {
                if let Some(id) = self.pick(c) {
                    self.input(id, CHUNKS[k]);
                }
            }
            Step::HangUp(c) => {
                if let Some(id) = self.pick(c) {
                    if self.core.read_budget(id).is_some() {
                        self.core.hung_up(id, "test");
                    }
                }
            }
            Step::Change(p) => self.core.watch_fired(&p, false, now),
            Step::WatchGone(p) => {
                if self.core.watches.knows(&p) {
                    self.kernel.remove(&p);
                }
                self.core.watch_fired(&p, true, now);
            }
            Step::Overflow => self.core.overflowed(now),
            Step::Advance { ms, fail_writes: f } => {
                self.now += Duration::from_millis(ms);
                fail_writes = f;
                self.core.expire(self.now);
            }
            Step::Pump(n) => self.pump(n),
            Step::Accept(i) => {
                if !self.tracker.is_empty() {
                    let id = self.tracker.remove(i % self.tracker.len());
                    assert!(self.core.accepted(id, "test"));
                    self.end(id, End::Returned);
                }
            }
            Step::Reject(i) => {
                if !self.tracker.is_empty() {
                    let id = self.tracker.remove(i % self.tracker.len());
                    assert!(self.core.rejected(id, "test", now));
                }
            }
            Step::StaleAnswer(id) => {
                let in_flight = self.tracker.contains(&id);
                assert_eq!(self.core.accepted(id, "test"), in_flight);
                if in_flight {
                    self.end(id, End::Returned);
                }
            }
            Step::LinkLost => {
                self.core.link_lost();
                self.tracker.clear();
            }
            Step::GiveUp(c) => {
                if let Some(id) = self.pick(c) {
                    self.core.give_up(id, "test");
                }
            }
            Step::Shutdown => self.core.shutdown("test", now),
            Step::Retire => self.core.retire("test"),
        }
        self.drain(fail_writes);
        self.check();
    }

    fn check(&self) {
        // 1 and 2: the core holds exactly the live ones; every fd closed
        // once, and only fds of ended connections.
        assert_eq!(self.core.len(), self.live.len());
        for id in self.live.keys() {
            assert!(self.core.holds(*id), "{id:#x} live but not held");
        }
        let closed = self.closed.borrow();
        let mut seen = HashSet::new();
        for n in closed.iter() {
            assert!(seen.insert(*n), "fd {n} closed twice");
        }
        let ended_fds: HashSet<RawFd> = self
            .ended
            .values()
            .flat_map(|(_, fds)| fds.iter().copied())
            .chain(self.refused.iter().copied())
            .collect();
        assert_eq!(seen, ended_fds, "closed fds are exactly the ended ones");
        // 3: live counts match the parked connections' watches.
        let mut refs: HashMap<u32, u32> = HashMap::new();
        for (_, c) in self.core.conns.iter() {
            if c.phase == Phase::Parked {
                for i in c.watches() {
                    *refs.entry(i).or_default() += 1;
                }
            } else {
                assert!(c.watches().is_empty(), "a woken conn still watches");
            }
        }
        let table: HashMap<u32, u32> = self.core.watches.live_counts().collect();
        assert_eq!(refs, table, "watch refcounts");
        assert_eq!(self.kernel.len(), self.core.watches.count());
        for wd in &self.kernel {
            assert!(self.core.watches.knows(wd), "kernel watch {wd} unknown");
        }
        // In-flight count matches the connections in flight.
        let in_flight = self
            .core
            .conns
            .iter()
            .filter(|(_, c)| c.phase == Phase::InFlight)
            .count();
        assert_eq!(self.core.in_flight(), in_flight);
        assert_eq!(self.tracker.len(), in_flight);
    }

    /// Shut down and let the return path finish: everyone must end.
    fn finish(&mut self) {
        self.apply(&Step::Shutdown);
        for _ in 0..4 {
            self.apply(&Step::Pump(64));
            while !self.tracker.is_empty() {
                self.apply(&Step::Accept(0));
            }
        }
        // The rest waits for its give-up deadline, or the second signal.
        self.apply(&Step::Advance {
            ms: 31_000,
            fail_writes: false,
        });
        self.apply(&Step::Shutdown);
        assert!(self.live.is_empty(), "{} never ended", self.live.len());
        assert!(self.core.done());
        assert!(self.kernel.is_empty(), "kernel watches left");
        self.check();
    }
}

/// Cases and the connections they park, printed with `--nocapture`.
#[test]
fn every_connection_ends_exactly_once() {
    use proptest::test_runner::{Config, TestRunner};
    let mut runner = TestRunner::new(Config {
        cases: 200,
        ..Config::default()
    });
    let parks = RefCell::new(Vec::new());
    let steps = RefCell::new(0usize);
    let result = runner.run(&proptest::collection::vec(step(), 200..1200), |case| {
        let mut m = Model::new();
        for s in &case {
            m.apply(s);
        }
        m.finish();
        parks.borrow_mut().push(m.parks);
        *steps.borrow_mut() += case.len();
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    let mut p = parks.into_inner();
    p.sort_unstable();
    eprintln!(
        "{} cases, {} events; connections parked per case: min {}, median {}, max {}",
        p.len(),
        steps.into_inner(),
        p[0],
        p[p.len() / 2],
        p[p.len() - 1]
    );
}

#[test]
fn a_streaming_client_is_read_one_budget_at_a_time() {
    let mut m = Model::new();
    m.park(1, &[0], true, 0);
    let id = *m.live.keys().next().unwrap();
    // Restart IDLE over and over: each input answers once, and the tag
    // the client gets back is the one it set last.
    for _ in 0..1000 {
        m.input(id, b"DONE\r\nB7 IDLE\r\n");
        m.drain(false);
    }
    assert_eq!(m.core.stats().idle_restarted, 1000);
    assert!(m.core.read_budget(id).unwrap() <= super::idle_input::MAX_IDLE_INPUT);
    m.finish();
}

#[test]
fn returns_lost_with_the_link_go_again_in_wake_order() {
    let mut m = Model::new();
    for user in 0..5 {
        m.park(user, &[], true, 0);
    }
    let ids: Vec<ConnId> = m.live.keys().copied().collect();
    // Wake them in an order unrelated to their ids.
    let order = [ids[3], ids[0], ids[4], ids[1], ids[2]];
    for &id in &order {
        m.input(id, b"DONE\r\n");
    }
    m.drain(false);
    m.pump(64);
    assert_eq!(m.tracker, order);
    m.apply(&Step::LinkLost);
    let mut again = Vec::new();
    while let Some(id) = m.core.pop_return() {
        again.push(id);
    }
    assert_eq!(again, order);
}

#[test]
fn a_watch_taken_again_in_the_same_event_is_not_removed() {
    let mut m = Model::new();
    m.park(1, &[3], true, 0);
    let a = *m.live.keys().next().unwrap();
    // A leaves: the last watcher of watch 3, so its removal is queued...
    m.core.hung_up(a, "test");
    // ...and before the loop carries that out, B names the same file and
    // the kernel gives the same watch back.
    m.park(2, &[3], true, 0);
    while let Some(action) = m.core.next_action() {
        match action {
            Action::Unwatch(wd) => panic!("watch {wd} removed while B watches it"),
            Action::Gone(g) => m.end(g.id, End::Gone),
            _ => {}
        }
    }
    assert_eq!(m.core.watches.count(), 1);
}

#[test]
fn shutdown_gives_connections_woken_before_it_the_shutdown_deadline() {
    let mut m = Model::new();
    m.park(1, &[2], true, 0);
    let id = *m.live.keys().next().unwrap();
    // Woken by a change: five minutes to be taken back, and nobody takes it.
    m.apply(&Step::Change(2));
    m.apply(&Step::Shutdown);
    m.apply(&Step::Advance {
        ms: 31_000,
        fail_writes: false,
    });
    assert_eq!(m.ended.get(&id).map(|e| e.0), Some(End::GaveUp));
    assert!(m.core.done());
}

#[test]
fn a_retired_core_wakes_nobody_and_is_done_when_the_last_one_leaves() {
    let mut m = Model::new();
    m.park(1, &[2], true, 0);
    m.park(2, &[3], true, 0);
    m.apply(&Step::Retire);
    m.apply(&Step::Advance {
        ms: 70_000,
        fail_writes: false,
    });
    assert_eq!(m.live.len(), 2, "both still parked");
    assert!(m.ended.is_empty());
    assert!(!m.core.done());
    // Each leaves in its own time: a change wakes one, the other hangs up.
    m.apply(&Step::Change(2));
    m.apply(&Step::Pump(10));
    m.apply(&Step::Accept(0));
    m.apply(&Step::HangUp(0));
    assert!(m.live.is_empty(), "{:?}", m.ended);
    assert!(m.core.done());
}

/// Dovecot mode with anvil: every connection is announced once when it
/// joins and once when it leaves, whichever way it leaves (returned, hung
/// up, given up, kicked), with the user and cookie it came with; a kick
/// spares connections whose return is in flight.
#[test]
fn presence_is_announced_once_each_way() {
    let mut m = Model::new();
    m.core = Core::new(400, false, m.now, 0x5eed, Tuning::default());
    m.core.announce_presence();
    for user in [1, 1, 2, 3, 3] {
        m.park(user, &[], true, 0);
    }
    type Seen = HashMap<ConnId, Presence>;
    let (mut joined, mut left, mut kicked) = (Seen::new(), Seen::new(), 0);
    fn drain(core: &mut Core<FakeFd, u32>, joined: &mut Seen, left: &mut Seen, kicked: &mut u32) {
        while let Some(a) = core.next_action() {
            match a {
                Action::Joined(p) => assert!(joined.insert(p.id, p).is_none()),
                Action::Left(p) => assert!(left.insert(p.id, p).is_none()),
                Action::Bye { bye, .. } if bye.starts_with(b"* BYE Server shutting down.") => {
                    *kicked += 1
                }
                _ => {}
            }
        }
    }
    drain(&mut m.core, &mut joined, &mut left, &mut kicked);
    assert_eq!(joined.len(), 5);
    let ids: Vec<ConnId> = m.live.keys().copied().collect();
    let user = |id: &ConnId| joined[id].user.clone();
    // user1's first connection is returned, the second hangs up.
    let u1: Vec<ConnId> = ids.iter().copied().filter(|i| user(i) == "user1").collect();
    m.core.input(u1[0], b"DONE\r\n", m.now);
    let back = m.core.pop_return().unwrap();
    m.core.sending(back);
    m.core.sent(back, m.now);
    m.core.accepted(back, "imap-master");
    m.core.hung_up(u1[1], "test");
    // user2 is given up; user3's first is in flight when user3 is kicked.
    let u2 = ids.iter().copied().find(|i| user(i) == "user2").unwrap();
    m.core.give_up(u2, "test");
    let u3: Vec<ConnId> = ids.iter().copied().filter(|i| user(i) == "user3").collect();
    m.core.input(u3[0], b"DONE\r\n", m.now);
    let flying = m.core.pop_return().unwrap();
    m.core.sending(flying);
    m.core.sent(flying, m.now);
    assert_eq!(m.core.kick("user3", None), 1);
    assert_eq!(
        m.core.kick("user3", Some(flying)),
        0,
        "in flight: not kicked"
    );
    drain(&mut m.core, &mut joined, &mut left, &mut kicked);
    assert_eq!(kicked, 1);
    assert_eq!(left.len(), 4);
    assert!(!left.contains_key(&flying));
    for (id, p) in &left {
        assert_eq!(p, &joined[id], "left as it joined");
        assert_eq!(p.cookie[0], p.user.as_bytes()[4] - b'0');
    }
    m.core.accepted(flying, "imap-master");
    drain(&mut m.core, &mut joined, &mut left, &mut kicked);
    assert_eq!(left.len(), 5);
}

/// A descriptor stand-in for the other modules' unit tests, which count
/// no closes (`FakeFd` above does).
pub(super) struct TestFd(pub RawFd);

impl AsRawFd for TestFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}
