//! Pipelined parks (`IdleLink::send_park` / `next_answer`): answers are
//! matched by request id whatever their order, a refusal gives the client
//! back, and a link that dies or answers a request not in flight leaves
//! every park in flight `Lost`. A stand-in daemon plays each case; the
//! real one takes a large window without either side blocking the other.

mod util;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::thread::JoinHandle;

use imap_idle::mail::{Answer, IdleLink, NotParked};
use imap_idle::proto::native::{self, Message, RecvError, RefuseKind, Role, MAX_PACKET};
use imap_idle::sys::SeqPacket;
use util::*;

/// A stand-in imap-idle on a real socket: says Hello, reads `parks` park
/// requests, then plays `script` with their request ids (in arrival
/// order) and the descriptors that came with them. Returns what the
/// script returns.
fn stand_in<T: Send + 'static>(
    parks: usize,
    script: impl FnOnce(&SeqPacket, Vec<(u64, OwnedFd)>) -> T + Send + 'static,
) -> (tempfile::TempDir, PathBuf, JoinHandle<T>) {
    let dir = tempfile::tempdir().unwrap();
    let (path, listener) = stand_in_listener(dir.path());
    let fake = std::thread::spawn(move || {
        let sock = accept_as_idle(&listener);
        let mut buf = vec![0; MAX_PACKET + 1];
        let mut got = Vec::new();
        for _ in 0..parks {
            let incoming = native::recv(&sock, &mut buf).unwrap();
            let Message::Park { req, .. } = incoming.msg else {
                panic!("expected a park, got {:?}", incoming.msg);
            };
            got.push((req, incoming.fd.unwrap()));
        }
        script(&sock, got)
    });
    (dir, path, fake)
}

/// Send `n` parks, each of a fresh socket pair; returns the client ends
/// by request id.
fn send_parks(link: &mut IdleLink, n: usize) -> HashMap<u64, UnixStream> {
    let mut clients = HashMap::new();
    for _ in 0..n {
        let (client, server) = UnixStream::pair().unwrap();
        let req = link
            .send_park(OwnedFd::from(server), &idle_park("alice", vec![]))
            .unwrap_or_else(|k| panic!("not sent: {}", k.reason));
        client.set_read_timeout(Some(WAIT)).unwrap();
        clients.insert(req, client);
    }
    clients
}

fn all_answers(link: &mut IdleLink) -> HashMap<u64, Result<u64, NotParked>> {
    let answers: Vec<Answer> = link.answers().collect();
    let n = answers.len();
    let by_req: HashMap<_, _> = answers.into_iter().collect();
    assert_eq!(by_req.len(), n, "one outcome per request");
    by_req
}

/// Whether the far end of `client` was closed (every copy of it).
fn closed(client: &mut UnixStream) -> bool {
    let mut b = [0u8; 1];
    matches!(client.read(&mut b), Ok(0))
}

#[test]
fn answers_out_of_order_are_matched_by_request_id_and_a_refusal_gives_the_client_back() {
    let (_dir, path, fake) = stand_in(3, |sock, got| {
        let reqs: Vec<u64> = got.iter().map(|(r, _)| *r).collect();
        // Last first, then a refusal of the first, then the middle one.
        let answers = [
            Message::Parked {
                req: reqs[2],
                id: 300,
            },
            Message::Refused {
                req: reqs[0],
                kind: RefuseKind::Full,
                reason: "full".into(),
            },
            Message::Parked {
                req: reqs[1],
                id: 200,
            },
        ];
        for a in &answers {
            native::send(sock, a, None).unwrap();
        }
        // Keep the parked ones' descriptors until the test is done.
        let mut buf = vec![0; MAX_PACKET + 1];
        let end = native::recv(sock, &mut buf);
        (reqs, got, end.is_err())
    });
    let mut link = IdleLink::connect(&path).unwrap();
    let mut clients = send_parks(&mut link, 3);
    assert_eq!(link.in_flight(), 3);
    let mut order = Vec::new();
    let mut outcomes = HashMap::new();
    while let Some((req, outcome)) = link.next_answer() {
        order.push(req);
        outcomes.insert(req, outcome);
    }
    assert_eq!(link.in_flight(), 0);
    assert!(link.is_open(), "matching answers keep the link");
    let mut reqs: Vec<u64> = clients.keys().copied().collect();
    reqs.sort_unstable();
    assert_eq!(order, [reqs[2], reqs[0], reqs[1]], "as the daemon answered");
    assert!(matches!(outcomes[&reqs[2]], Ok(300)));
    assert!(matches!(outcomes[&reqs[1]], Ok(200)));
    let Some(Err(NotParked::Kept(kept))) = outcomes.remove(&reqs[0]) else {
        panic!("the first park was refused: {:?}", outcomes.get(&reqs[0]));
    };
    assert_eq!(kept.kind, Some(RefuseKind::Full));
    assert_eq!(kept.reason, "full");
    // The descriptor given back is the refused client's own: what we write
    // through it reaches that client.
    let mut server = UnixStream::from(kept.client);
    server.write_all(b"* OK kept\r\n").unwrap();
    let mut got = [0u8; 11];
    clients
        .get_mut(&reqs[0])
        .unwrap()
        .read_exact(&mut got)
        .unwrap();
    assert_eq!(&got, b"* OK kept\r\n");
    drop(link);
    let (_, held, saw_close) = fake.join().unwrap();
    assert!(saw_close);
    drop(held);
}

#[test]
fn a_link_that_dies_leaves_every_park_in_flight_lost() {
    // All read first: a socket closed with packets unread makes ours report
    // a reset before the answers queued for us.
    let (_dir, path, fake) = stand_in(3, |sock, got| {
        let first = got[0].0;
        native::send(sock, &Message::Parked { req: first, id: 1 }, None).unwrap();
        // Then the daemon dies: the socket and every descriptor it held
        // close.
        first
    });
    let mut link = IdleLink::connect(&path).unwrap();
    let mut clients = send_parks(&mut link, 3);
    let first = fake.join().unwrap();
    let answers = all_answers(&mut link);
    assert_eq!(answers.len(), 3);
    for (req, outcome) in &answers {
        if *req == first {
            assert!(matches!(outcome, Ok(1)), "{outcome:?}");
        } else {
            assert!(
                matches!(outcome, Err(NotParked::Lost { .. })),
                "{req}: {outcome:?}"
            );
        }
    }
    assert!(!link.is_open());
    // Our copies are closed: with the stand-in's gone too, each client
    // sees the end.
    for client in clients.values_mut() {
        assert!(closed(client));
    }
    // The link is closed: the next park never goes out.
    let (_c, server) = UnixStream::pair().unwrap();
    let kept = link
        .send_park(OwnedFd::from(server), &idle_park("alice", vec![]))
        .unwrap_err();
    assert!(kept.reason.contains("closed"), "{}", kept.reason);
    assert!(link.next_answer().is_none());
}

#[test]
fn an_answer_for_no_request_in_flight_closes_the_link_and_loses_them_all() {
    let (_dir, path, fake) = stand_in(2, |sock, got| {
        let unknown = got.iter().map(|(r, _)| r).max().unwrap() + 1000;
        native::send(
            sock,
            &Message::Parked {
                req: unknown,
                id: 9,
            },
            None,
        )
        .unwrap();
        // A correct answer after it must not be taken (the library may
        // have closed already).
        let _ = native::send(
            sock,
            &Message::Parked {
                req: got[0].0,
                id: 10,
            },
            None,
        );
        // The library closes with the correct answer unread: a reset.
        let mut buf = vec![0; MAX_PACKET + 1];
        let closed = match native::recv(sock, &mut buf) {
            Err(RecvError::Closed) => true,
            Err(RecvError::Io(e)) => e.kind() == std::io::ErrorKind::ConnectionReset,
            Ok(_) | Err(_) => false,
        };
        (closed, got)
    });
    let mut link = IdleLink::connect(&path).unwrap();
    let mut clients = send_parks(&mut link, 2);
    let answers = all_answers(&mut link);
    assert_eq!(answers.len(), 2);
    for outcome in answers.values() {
        match outcome {
            Err(NotParked::Lost { reason }) => {
                assert!(reason.contains("not in flight"), "{reason}")
            }
            other => panic!("expected Lost, got {other:?}"),
        }
    }
    assert!(!link.is_open());
    let (saw_close, held) = fake.join().unwrap();
    assert!(saw_close, "the library closed the link");
    drop(held);
    for client in clients.values_mut() {
        assert!(closed(client));
    }
}

#[test]
fn an_error_from_the_daemon_gives_back_what_it_did_not_answer() {
    // imap-idle answers every park it read before it sends Error and
    // closes: what is still unanswered then was never taken. (The stand-in
    // reads them all, as a socket closed with packets unread would make
    // ours report a reset instead of the Error.)
    let (_dir, path, fake) = stand_in(3, |sock, got| {
        native::send(
            sock,
            &Message::Parked {
                req: got[0].0,
                id: 5,
            },
            None,
        )
        .unwrap();
        let error = Message::Error {
            reason: "bad packet".into(),
        };
        native::send(sock, &error, None).unwrap();
        got
    });
    let mut link = IdleLink::connect(&path).unwrap();
    let mut clients = send_parks(&mut link, 3);
    let held = fake.join().unwrap();
    let first = held[0].0;
    let answers = all_answers(&mut link);
    assert!(matches!(answers[&first], Ok(5)));
    for (req, outcome) in answers {
        if req == first {
            continue;
        }
        let Err(NotParked::Kept(kept)) = outcome else {
            panic!("{req}: {outcome:?}");
        };
        assert!(kept.reason.contains("bad packet"), "{}", kept.reason);
        UnixStream::from(kept.client).write_all(b"x").unwrap();
        let mut b = [0u8; 1];
        clients.get_mut(&req).unwrap().read_exact(&mut b).unwrap();
    }
}

#[test]
fn the_one_at_a_time_park_waits_for_no_pipelined_answer() {
    let (_dir, path, fake) = stand_in(1, |_sock, got| got);
    let mut link = IdleLink::connect(&path).unwrap();
    let _clients = send_parks(&mut link, 1);
    let (_c, server) = UnixStream::pair().unwrap();
    match link.park(OwnedFd::from(server), &idle_park("alice", vec![])) {
        Err(NotParked::Kept(k)) => assert!(k.reason.contains("in flight"), "{}", k.reason),
        other => panic!("expected Kept, got {other:?}"),
    }
    drop(fake.join().unwrap());
}

#[test]
fn a_wide_window_into_the_real_daemon_parks_everyone_and_refuses_by_request() {
    raise_fd_limit();
    let d = Daemon::start(&[]);
    let watched = d.dir.path().join("new");
    std::fs::create_dir(&watched).unwrap();
    let mut link = IdleLink::connect(&d.park).unwrap();
    // Wider than the sockets' buffers: sending must read answers when the
    // daemon has no room, or both sides would wait on each other.
    let n = 3000;
    let window = imap_idle::mail::MAX_WINDOW;
    let mut clients = HashMap::new();
    let mut outcomes = HashMap::new();
    let mut bad = Vec::new();
    for i in 0..n {
        while link.in_flight() >= window {
            let (req, outcome) = link.next_answer().unwrap();
            outcomes.insert(req, outcome);
        }
        // Every 100th watches a path that does not exist.
        let path = if i % 100 == 0 {
            d.dir.path().join("missing")
        } else {
            watched.clone()
        };
        let (client, server) = UnixStream::pair().unwrap();
        let park = idle_park(&format!("user{}", i % 50), vec![path]);
        let req = link.send_park(OwnedFd::from(server), &park).unwrap();
        if i % 100 == 0 {
            bad.push(req);
        }
        clients.insert(req, client);
    }
    outcomes.extend(link.answers());
    assert_eq!(outcomes.len(), n);
    let mut parked = 0;
    for (req, outcome) in outcomes {
        match outcome {
            Ok(_) => parked += 1,
            Err(NotParked::Kept(k)) => {
                assert!(bad.contains(&req), "{req} refused: {}", k.reason);
                assert_eq!(k.kind, Some(RefuseKind::BadWatch));
            }
            Err(lost) => panic!("{req}: {lost}"),
        }
    }
    assert_eq!(parked, n - bad.len());
    assert_eq!(d.stats().parked, parked as u64);
    drop(clients);
    wait_for(|| d.stats().parked == 0, "every hang-up");
}

#[test]
fn the_daemon_answers_what_it_read_before_its_error() {
    let d = Daemon::start(&[]);
    // Everything at once, before the daemon has even accepted: it reads
    // the lot in one turn, so the answers to the parks are still queued
    // when the bad packet comes.
    let sock = SeqPacket::connect(&d.park, false).unwrap();
    let hello = Message::Hello {
        role: Role::MailProcess,
        pid: 1,
    };
    native::send(&sock, &hello, None).unwrap();
    let pairs: Vec<_> = (0..3).map(|_| UnixStream::pair().unwrap()).collect();
    for (req, (_, server)) in (1..).zip(&pairs) {
        let park = Message::Park {
            req,
            park: idle_park("alice", vec![]),
        };
        native::send(&sock, &park, Some(std::os::fd::AsFd::as_fd(server))).unwrap();
    }
    // A park without its descriptor.
    let bare = Message::Park {
        req: 4,
        park: idle_park("alice", vec![]),
    };
    sock.send(&bare.encode(), &[]).unwrap();
    let mut buf = vec![0; MAX_PACKET + 1];
    assert!(matches!(
        native::recv(&sock, &mut buf).unwrap().msg,
        Message::Hello { .. }
    ));
    for want in 1..=3 {
        match native::recv(&sock, &mut buf).unwrap().msg {
            Message::Parked { req, .. } => assert_eq!(req, want),
            other => panic!("expected Parked {want}, got {other:?}"),
        }
    }
    match native::recv(&sock, &mut buf).unwrap().msg {
        Message::Error { reason } => assert!(reason.contains("fds"), "{reason}"),
        other => panic!("expected Error, got {other:?}"),
    }
    assert!(matches!(
        native::recv(&sock, &mut buf),
        Err(RecvError::Closed)
    ));
    assert_eq!(d.stats().parked, 3);
}
