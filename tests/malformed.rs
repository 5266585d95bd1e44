//! Bad peers: the daemon answers an error where it can, closes every fd
//! that came with the bad packet, drops that connection, and goes on
//! serving everyone else.

mod util;

use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use imap_idle::proto::native::{self, Message, RefuseKind, Role, MAX_PACKET};
use imap_idle::sys::SeqPacket;
use util::fake_imap::{dovecot_daemon, FakeImap};
use util::*;

/// Connect, say hello as a mail process (or not), then send `packet` with
/// `fds` attached; return what the daemon answered, if anything.
fn send_raw(
    d: &Daemon,
    hello: bool,
    packet: &[u8],
    fds: &[std::os::fd::BorrowedFd<'_>],
) -> Option<Message> {
    let sock = SeqPacket::connect(&d.park, false).expect("connect");
    sock.set_recv_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = vec![0u8; MAX_PACKET + 1];
    if hello {
        let h = Message::Hello {
            role: Role::MailProcess,
            pid: 1,
        };
        native::send(&sock, &h, None).unwrap();
        native::recv(&sock, &mut buf).expect("hello back");
    }
    // The daemon may close before we finish; that is its right.
    let _ = sock.send(packet, fds);
    let answer = native::recv(&sock, &mut buf).ok().map(|i| i.msg);
    // After an error the daemon must have closed the connection.
    if let Some(Message::Error { .. }) = answer {
        assert!(matches!(
            native::recv(&sock, &mut buf),
            Err(native::RecvError::Closed)
        ));
    }
    answer
}

fn error_mentions(answer: Option<Message>, text: &str) {
    match answer {
        Some(Message::Error { reason }) => {
            assert!(
                reason.contains(text),
                "error {reason:?} should mention {text:?}"
            )
        }
        other => panic!("expected an Error mentioning {text:?}, got {other:?}"),
    }
}

/// Everything still works and no fd leaked.
fn still_serving(d: &Daemon, baseline: usize) {
    let mut m = Mail::connect(d);
    let (client, _) = m.park_ok(&idle_park("alice", vec![]));
    drop(client);
    drop(m);
    wait_for(|| d.stats().parked == 0, "hang-up processed");
    // No tracker runs: the link that would report the hang-up is retrying
    // and holds no fd between attempts.
    d.expect_fds(baseline);
}

#[test]
fn garbage_bad_versions_and_truncated_messages() {
    let d = Daemon::start(&[]);
    let baseline = d.settled_fds();
    error_mentions(send_raw(&d, true, &[7, 1, 2, 3], &[]), "version 7");
    // The version before this one is refused as such.
    error_mentions(send_raw(&d, true, &[2, 12], &[]), "version 2");
    let garbage = [native::VERSION, 250, 250, 250];
    error_mentions(send_raw(&d, true, &garbage, &[]), "malformed");
    let park = Message::Park {
        req: 1,
        park: idle_park("alice", vec![]),
    }
    .encode();
    error_mentions(
        send_raw(&d, true, &park[..park.len() / 2], &[]),
        "malformed",
    );
    let mut trailing = Message::StatsRequest.encode();
    trailing.push(0);
    error_mentions(send_raw(&d, true, &trailing, &[]), "trailing");
    still_serving(&d, baseline);
}

#[test]
fn oversize_packets_are_refused_and_their_fds_closed() {
    let d = Daemon::start(&[]);
    let baseline = d.settled_fds();
    let (a, _b) = UnixStream::pair().unwrap();
    let mut big = Message::Park {
        req: 1,
        park: idle_park("alice", vec![]),
    }
    .encode();
    big.resize(MAX_PACKET + 5000, 0);
    error_mentions(send_raw(&d, true, &big, &[a.as_fd()]), "larger than");
    still_serving(&d, baseline);
}

#[test]
fn wrong_fd_counts_close_every_fd() {
    let d = Daemon::start(&[]);
    let baseline = d.settled_fds();
    let (a, b) = UnixStream::pair().unwrap();
    let park = Message::Park {
        req: 1,
        park: idle_park("alice", vec![]),
    }
    .encode();
    error_mentions(send_raw(&d, true, &park, &[]), "carries 0 fds, expected 1");
    error_mentions(
        send_raw(&d, true, &park, &[a.as_fd(), b.as_fd(), a.as_fd()]),
        "carries 3 fds, expected 1",
    );
    let stats = Message::StatsRequest.encode();
    error_mentions(
        send_raw(&d, true, &stats, &[a.as_fd()]),
        "carries 1 fds, expected 0",
    );
    // Our ends are the only ones left: the daemon kept no copy.
    assert_eq!(d.stats().parked, 0);
    still_serving(&d, baseline);
}

#[test]
fn protocol_order_and_roles_are_enforced() {
    let d = Daemon::start(&[]);
    let baseline = d.settled_fds();
    let (a, _b) = UnixStream::pair().unwrap();
    let park = Message::Park {
        req: 1,
        park: idle_park("alice", vec![]),
    }
    .encode();
    error_mentions(
        send_raw(&d, false, &park, &[a.as_fd()]),
        "first message must be Hello",
    );
    let tracker_hello = Message::Hello {
        role: Role::Tracker,
        pid: 1,
    }
    .encode();
    error_mentions(send_raw(&d, false, &tracker_hello, &[]), "does not park");
    let accepted = Message::Accepted { id: 1 }.encode();
    error_mentions(send_raw(&d, true, &accepted, &[]), "unexpected Accepted");
    let mut bad_tag = idle_park("alice", vec![]);
    bad_tag.tag = "has space".into();
    let bad = Message::Park {
        req: 1,
        park: bad_tag,
    }
    .encode();
    error_mentions(send_raw(&d, true, &bad, &[a.as_fd()]), "tag");
    still_serving(&d, baseline);
}

#[test]
fn a_regular_file_or_datagram_socket_is_refused_not_parked() {
    let d = Daemon::start(&[]);
    let baseline = d.settled_fds();
    let file = tempfile::tempfile().unwrap();
    let park = Message::Park {
        req: 1,
        park: idle_park("alice", vec![]),
    }
    .encode();
    match send_raw(&d, true, &park, &[file.as_fd()]) {
        Some(Message::Refused { kind, reason, .. }) => {
            assert_eq!(kind, RefuseKind::BadFd);
            assert!(reason.contains("not a socket"), "{reason}");
        }
        other => panic!("expected Refused, got {other:?}"),
    }
    let (dgram, _other) = std::os::unix::net::UnixDatagram::pair().unwrap();
    match send_raw(&d, true, &park, &[dgram.as_fd()]) {
        Some(Message::Refused { kind, .. }) => assert_eq!(kind, RefuseKind::BadFd),
        other => panic!("expected Refused, got {other:?}"),
    }
    still_serving(&d, baseline);
}

#[test]
fn a_peer_vanishing_mid_park_leaves_nothing_behind() {
    let d = Daemon::start(&[]);
    let baseline = d.settled_fds();
    for _ in 0..20 {
        let sock = SeqPacket::connect(&d.park, false).unwrap();
        let (a, _b) = UnixStream::pair().unwrap();
        let h = Message::Hello {
            role: Role::MailProcess,
            pid: 1,
        };
        native::send(&sock, &h, None).unwrap();
        native::send(
            &sock,
            &Message::Park {
                req: 1,
                park: idle_park("alice", vec![]),
            },
            Some(a.as_fd()),
        )
        .unwrap();
        drop(sock);
    }
    // Whatever was parked without a confirmation reaching us was dropped;
    // whatever got confirmed is parked. Either way no fd leaks once the
    // clients go away.
    wait_for(
        || d.stats().parked == 0,
        "unconfirmed parks dropped or hung up",
    );
    still_serving(&d, baseline);
}

#[test]
fn dovecot_hand_offs_that_are_malformed_are_answered_and_leave_no_fd() {
    let (base, d) = dovecot_daemon();
    let baseline = d.settled_fds();
    let cmd = "alice\t%u: \ttag=c\tidle-cmd\tsession=S1\trip=127.0.0.1\n";

    let mut f = FakeImap::connect(base.path());
    f.send("VERSION\timap-hibernate\t2\t0\n", None);
    assert!(f.line().starts_with("-expected VERSION imap-hibernate 1.x"));
    assert!(f.closed());

    let (client, _peer) = UnixStream::pair().unwrap();
    let mut f = FakeImap::greeted(base.path());
    f.send("alice\t%u: \tidle-cmd\n", Some(client.as_fd()));
    assert_eq!(f.line(), "-Failed to parse client input: Missing tag\n");
    assert!(f.closed());

    let mut f = FakeImap::greeted(base.path());
    f.send(cmd, None);
    assert_eq!(f.line(), "-expected the client fd, got 0 fds\n");

    let mut f = FakeImap::greeted(base.path());
    f.send(
        "alice\t%u: \ttag=c\tidle-cmd\tnotify_fd\n",
        Some(client.as_fd()),
    );
    assert_eq!(f.line(), "+\n");
    f.send("not empty\n", Some(client.as_fd()));
    assert_eq!(f.line(), "-Expected empty notify fd line\n");

    // An imap process that leaves before sending its notify fd still owns
    // the client: nothing is parked.
    let mut f = FakeImap::greeted(base.path());
    f.send(
        "alice\t%u: \ttag=c\tidle-cmd\tnotify_fd\n",
        Some(client.as_fd()),
    );
    assert_eq!(f.line(), "+\n");
    drop(f);

    wait_for(
        || d.log().contains("closed before finishing the hand-off"),
        "the early close",
    );
    assert_eq!(d.stats().parked, 0);
    d.expect_fds(baseline);

    // And a well-formed hand-off parks.
    let mut f = FakeImap::greeted(base.path());
    f.send(cmd, Some(client.as_fd()));
    assert_eq!(f.line(), "+\n");
    drop(f);
    wait_for(|| d.stats().parked == 1, "the client to be parked");
}
