//! `imap-idle-lab probe`: what a local peer can get from a socket of ours.
//! Opens connections to a park or tracker socket as whoever runs it,
//! optionally claims a role, holds them, and reports what the daemon did:
//! an operator's check that a uid cannot take a role it should not, and
//! the tool our hostile-peer tests run as another user.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use crate::proto::native::{self, Message, RecvError, Role, MAX_PACKET};
use crate::sys::SeqPacket;

const USAGE: &str = "\
Usage: imap-idle-lab probe --socket PATH [OPTIONS]

Connects to a park or tracker socket as the calling user and reports, one
line each, what became of the connections.

  --socket PATH     the socket to probe
  --connections N   connections to open [default: 1]
  --role ROLE       say Hello as mail, admin, login, idle or tracker;
                    without it, say nothing
  --describe        as admin: ask imap-idle for every connection it holds
  --hold SECS       keep the connections open this long, then report which
                    the daemon closed [default: 0]

Exit code 0 when every connection was served as asked, 1 otherwise.
";

struct Opts {
    socket: PathBuf,
    connections: usize,
    role: Option<Role>,
    describe: bool,
    hold: Duration,
}

fn parse(args: Vec<String>) -> Result<Option<Opts>, String> {
    let mut o = Opts {
        socket: PathBuf::new(),
        connections: 1,
        role: None,
        describe: false,
        hold: Duration::ZERO,
    };
    let mut it = args.into_iter();
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "-h" | "--help" => return Ok(None),
            "--socket" => o.socket = PathBuf::from(value()?),
            "--connections" => {
                o.connections = value()?
                    .parse()
                    .map_err(|_| "--connections: not a number")?
            }
            "--role" => {
                o.role = Some(match value()?.as_str() {
                    "mail" => Role::MailProcess,
                    "admin" => Role::Admin,
                    "login" => Role::Login,
                    "idle" => Role::Idle,
                    "tracker" => Role::Tracker,
                    other => return Err(format!("--role: unknown role {other:?}")),
                })
            }
            "--describe" => o.describe = true,
            "--hold" => {
                let secs: u64 = value()?.parse().map_err(|_| "--hold: not a number")?;
                o.hold = Duration::from_secs(secs);
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if o.socket.as_os_str().is_empty() {
        return Err("--socket is required".into());
    }
    Ok(Some(o))
}

pub fn main(args: Vec<String>) -> ExitCode {
    let o = match parse(args) {
        Ok(Some(o)) => o,
        Ok(None) => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("imap-idle-lab probe: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let mut buf = vec![0; MAX_PACKET + 1];
    let mut open = Vec::new();
    let mut ok = true;
    for i in 0..o.connections {
        let sock = match SeqPacket::connect(&o.socket, false) {
            Ok(s) => s,
            Err(e) => {
                println!("connection {i}: connect failed: {e}");
                ok = false;
                continue;
            }
        };
        let _ = sock.set_recv_timeout(Some(Duration::from_secs(5)));
        if let Some(role) = o.role {
            let hello = Message::Hello {
                role,
                pid: std::process::id(),
            };
            let answer = native::send(&sock, &hello, None)
                .map_err(|e| e.to_string())
                .and_then(|()| next(&sock, &mut buf));
            match answer {
                Ok(Message::Hello { role, .. }) => println!("connection {i}: hello from {role:?}"),
                Ok(other) => {
                    println!("connection {i}: refused: {}", brief(&other));
                    ok = false;
                    continue;
                }
                Err(e) => {
                    println!("connection {i}: {e}");
                    ok = false;
                    continue;
                }
            }
            if o.describe && !describe(i, &sock, &mut buf) {
                ok = false;
            }
        }
        open.push((i, sock));
    }
    let until = Instant::now() + o.hold;
    while Instant::now() < until {
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut closed = 0;
    for (i, sock) in &open {
        let _ = sock.set_nonblocking(true);
        match native::recv(sock, &mut buf) {
            Err(RecvError::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Ok(m) => {
                println!("connection {i}: closed by the daemon: {}", brief(&m.msg));
                closed += 1;
            }
            Err(e) => {
                println!("connection {i}: closed by the daemon ({e})");
                closed += 1;
            }
        }
    }
    println!(
        "{} connections: {} held, {closed} closed by the daemon, {} refused",
        o.connections,
        open.len() - closed,
        o.connections - open.len()
    );
    if closed > 0 {
        ok = false;
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn next(sock: &SeqPacket, buf: &mut [u8]) -> Result<Message, String> {
    native::recv(sock, buf)
        .map(|i| i.msg)
        .map_err(|e| format!("no answer: {e}"))
}

fn describe(i: usize, sock: &SeqPacket, buf: &mut [u8]) -> bool {
    let ask = Message::Describe {
        query: 1,
        user: None,
    };
    if let Err(e) = native::send(sock, &ask, None) {
        println!("connection {i}: describe: {e}");
        return false;
    }
    let mut rows = 0;
    loop {
        match next(sock, buf) {
            Ok(Message::Described { conns, last, .. }) => {
                rows += conns.len();
                if last {
                    println!("connection {i}: described {rows} connections");
                    return true;
                }
            }
            Ok(other) => {
                println!("connection {i}: describe refused: {}", brief(&other));
                return false;
            }
            Err(e) => {
                println!("connection {i}: describe: {e}");
                return false;
            }
        }
    }
}

fn brief(m: &Message) -> String {
    match m {
        Message::Error { reason } => format!("Error: {reason}"),
        other => {
            let name = format!("{other:?}");
            name.split([' ', '(', '{']).next().unwrap_or("?").to_owned()
        }
    }
}
