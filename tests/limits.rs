//! Running out of descriptors: refuse or pause, never spin, recover.

mod util;

use std::time::Duration;

use imap_idle::proto::native::RefuseKind;
use imap_idle::sys::SeqPacket;
use util::*;

#[test]
fn emfile_on_accept_pauses_instead_of_spinning_and_recovers() {
    // 48 fds: a reserve of 32 leaves 16 for parked connections. More
    // control connections are allowed than the reserve holds, so that the
    // descriptors do run out.
    let d = Daemon::start_with_fd_limit(48, &["--max-controls", "100"]);
    let mut m = Mail::connect(&d);
    let mut parked = Vec::new();
    loop {
        match m.park(&idle_park("alice", vec![])) {
            Ok((c, _)) => parked.push(c),
            Err((_, kept)) => {
                assert_eq!(kept.kind, Some(RefuseKind::Full));
                break;
            }
        }
    }
    assert_eq!(parked.len(), 16, "the default limit follows the fd limit");
    // Now exhaust the table with bare control connections.
    let extra: Vec<SeqPacket> = (0..60)
        .map(|_| SeqPacket::connect(&d.park, false).expect("connect"))
        .collect();
    wait_for(
        || d.log().contains("pausing for 100 ms"),
        "EMFILE to be seen",
    );
    let before = d.cpu_time();
    std::thread::sleep(Duration::from_secs(1));
    let used = d.cpu_time() - before;
    assert!(
        used < Duration::from_millis(500),
        "the daemon used {used:?} of CPU in 1 s with EMFILE pending: spinning"
    );
    drop(extra);
    drop(parked);
    wait_for(
        || d.stats().parked == 0,
        "hang-ups processed after recovery",
    );
    let (_c, _) = m.park_ok(&idle_park("bob", vec![]));
}
