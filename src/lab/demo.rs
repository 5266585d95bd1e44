//! `imap-idle-lab demo`: show a running imap-idle parking a client and
//! handing it back, step by step, with the daemon's own counters.

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use crate::idle::config::default_runtime_dir;
use crate::link;
use crate::mail::IdleLink;
use crate::proto::native::{self, Message, Park, RecvError, Return, Role, MAX_PACKET};
use crate::proto::state::SessionState;
use crate::sys::SeqPacket;

const USAGE: &str = "\
Usage: imap-idle-lab demo [--runtime-dir DIR]

Connects to imap-idle's park socket (DIR/park), listens as its tracker on
DIR/tracker (which must be free: stop imap-tracker first), and parks a
client through the library a mail process uses. Then it shows: a message
delivered into a watched Maildir waking the client with IDLE running, DONE
waking it, DONE+IDLE answered in place, and a hang-up reported.
DIR defaults to imap-idle's own default runtime directory.
";

struct Demo {
    idle: IdleLink,
    listener: SeqPacket,
    link: Option<SeqPacket>,
    buf: Vec<u8>,
    park_socket: PathBuf,
    new_dir: PathBuf,
}

type Res<T> = Result<T, String>;

pub fn main(args: Vec<String>) -> ExitCode {
    let mut dir = default_runtime_dir();
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "-h" | "--help" => {
                print!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            "--runtime-dir" => match it.next() {
                Some(d) => dir = PathBuf::from(d),
                None => {
                    eprintln!("imap-idle-lab demo: --runtime-dir needs a value");
                    return ExitCode::from(2);
                }
            },
            other => {
                eprintln!("imap-idle-lab demo: unknown argument {other:?}\n{USAGE}");
                return ExitCode::from(2);
            }
        }
    }
    match run(&dir) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("imap-idle-lab demo: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(dir: &Path) -> Res<()> {
    let park_socket = dir.join("park");
    let tracker_path = dir.join("tracker");
    let idle = IdleLink::connect(&park_socket).map_err(|e| {
        format!(
            "cannot reach imap-idle at {}: {e}\n(start it first: imap-idle --runtime-dir {})",
            park_socket.display(),
            dir.display()
        )
    })?;
    let tracker = SeqPacket::listen(&tracker_path, 0o600)
        .map_err(|e| format!("cannot listen as the tracker: {e}"))?;
    tracker.set_nonblocking(false).map_err(|e| e.to_string())?;
    let home = std::env::temp_dir().join(format!("imap-idle-demo-{}", std::process::id()));
    let new_dir = home.join("Maildir/new");
    std::fs::create_dir_all(&new_dir).map_err(|e| format!("{}: {e}", new_dir.display()))?;
    println!(
        "imap-idle-lab demo: parking through {}, acting as tracker on {}",
        park_socket.display(),
        tracker_path.display()
    );
    let mut demo = Demo {
        idle,
        listener: tracker,
        link: None,
        buf: vec![0; MAX_PACKET + 1],
        park_socket,
        new_dir,
    };
    let result = demo.steps();
    let _ = std::fs::remove_file(&tracker_path);
    let _ = std::fs::remove_dir_all(&home);
    result
}

impl Demo {
    fn steps(&mut self) -> Res<()> {
        let state = SessionState {
            mailbox: "INBOX".into(),
            uidvalidity: 1,
            watch: vec![self.new_dir.clone()],
            tag: "A1".into(),
            keepalive_secs: 120,
            ..SessionState::default()
        };
        let park = Park::idle("demo", [0x42; 16], &state);

        let (mut client, id) = self.park(&park)?;
        println!(
            "1. parked an IDLE client of user demo as connection {id:#x}; {}",
            self.stats()?
        );
        let delivered = Instant::now();
        std::fs::write(self.new_dir.join("1.demo"), b"Subject: hello\r\n\r\nhi\r\n")
            .map_err(|e| e.to_string())?;
        let (r, fd) = self.next_return()?;
        println!(
            "2. delivered a message into {} -> handed back after {:.2} ms: {:?}, IDLE still running: {}",
            self.new_dir.display(),
            delivered.elapsed().as_secs_f64() * 1000.0,
            r.reason,
            r.idle_running
        );
        // Playing the restored mail process: tell the client and finish IDLE.
        let mut restored = UnixStream::from(fd);
        restored
            .write_all(b"* 1 EXISTS\r\n")
            .map_err(|e| e.to_string())?;
        let mut line = [0u8; 12];
        client.read_exact(&mut line).map_err(|e| e.to_string())?;
        println!(
            "   the client read {:?} through the returned socket",
            String::from_utf8_lossy(&line)
        );
        drop((client, restored));

        let (mut client, _) = self.park(&park)?;
        let typed = Instant::now();
        client.write_all(b"DONE\r\n").map_err(|e| e.to_string())?;
        let (r, _fd) = self.next_return()?;
        println!(
            "3. parked again; the client typed DONE -> handed back after {:.2} ms: {:?}",
            typed.elapsed().as_secs_f64() * 1000.0,
            r.reason
        );
        drop(client);

        let (mut client, _) = self.park(&park)?;
        client
            .write_all(b"DONE\r\nA2 IDLE\r\n")
            .map_err(|e| e.to_string())?;
        let mut answer = [0u8; 33];
        client.read_exact(&mut answer).map_err(|e| e.to_string())?;
        println!(
            "4. parked again; the client sent DONE + A2 IDLE -> answered in place with {:?}; {}",
            String::from_utf8_lossy(&answer),
            self.stats()?
        );
        drop(client);
        match self.next_event()? {
            (Message::Gone(g), _) => println!(
                "5. the client hung up -> the tracker is told: {:?} ({})",
                g.reason, g.detail
            ),
            (other, _) => return Err(format!("expected a Gone notice, got {other:?}")),
        }
        println!("   {}", self.stats()?);
        Ok(())
    }

    fn park(&mut self, park: &Park) -> Res<(UnixStream, u64)> {
        let (client, server) = UnixStream::pair().map_err(|e| e.to_string())?;
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .map_err(|e| e.to_string())?;
        let id = self
            .idle
            .park(OwnedFd::from(server), park)
            .map_err(|k| format!("park refused: {k}"))?;
        Ok((client, id))
    }

    fn stats(&self) -> Res<String> {
        let s = link::stats(&self.park_socket).map_err(|e| e.to_string())?;
        Ok(format!(
            "daemon: parked={} watches={} returned={}",
            s.parked, s.watches, s.returned
        ))
    }

    /// The next message from imap-idle on the tracker side; greets its link.
    fn next_event(&mut self) -> Res<(Message, Option<OwnedFd>)> {
        loop {
            let link = match self.link.take() {
                Some(l) => l,
                None => {
                    let l = self.listener.accept().map_err(|e| e.to_string())?;
                    l.set_nonblocking(false).map_err(|e| e.to_string())?;
                    l.set_recv_timeout(Some(Duration::from_secs(10)))
                        .map_err(|e| e.to_string())?;
                    l
                }
            };
            let inc = match native::recv(&link, &mut self.buf) {
                Ok(inc) => inc,
                Err(RecvError::Closed) => continue,
                Err(e) => return Err(format!("tracker link: {e}")),
            };
            let msg = match inc.msg {
                Message::Hello { .. } => {
                    let hello = Message::Hello {
                        role: Role::Tracker,
                        pid: std::process::id(),
                    };
                    native::send(&link, &hello, None).map_err(|e| e.to_string())?;
                    self.link = Some(link);
                    continue;
                }
                // What the daemon holds, reported on every new link: we
                // are the only peer it has, so we know it already.
                Message::Holding { .. } => {
                    self.link = Some(link);
                    continue;
                }
                msg => msg,
            };
            self.link = Some(link);
            return Ok((msg, inc.fd));
        }
    }

    fn next_return(&mut self) -> Res<(Return, OwnedFd)> {
        match self.next_event()? {
            (Message::Return(r), Some(fd)) => {
                let link = self.link.as_ref().ok_or("tracker link gone")?;
                native::send(link, &Message::Accepted { id: r.id }, None)
                    .map_err(|e| e.to_string())?;
                Ok((r, fd))
            }
            (other, _) => Err(format!("expected a returned connection, got {other:?}")),
        }
    }
}
