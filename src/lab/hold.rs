//! `imap-idle-lab hold`: a bare IMAP stand-in that greets, answers every
//! command OK, and holds its connections doing nothing. The bench runs
//! the load tool against it to measure what the client side of a
//! connection costs the machine (the load processes and one socket end),
//! so that it can be subtracted from the whole machine's growth.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::process::ExitCode;

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};

const LISTENER: Token = Token(usize::MAX);
const USAGE: &str = "\
Usage: imap-idle-lab hold [--port PORT]

Listens on 127.0.0.1:PORT (0, the default: any free port), prints the
port on stdout, and holds every IMAP connection it gets: a greeting,
`OK` to every command, `+ idling` to IDLE, and nothing else. Runs until
killed. The bench measures the client side's memory against it.
";

pub fn main(args: Vec<String>) -> ExitCode {
    let mut args = crate::args::Args::new(args);
    let mut port = 0u16;
    while let Some(flag) = args.next_flag() {
        match flag.as_str() {
            "-h" | "--help" => {
                print!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            "--port" => match args.number(&flag) {
                Ok(p) => port = p,
                Err(e) => {
                    eprintln!("imap-idle-lab hold: {e}\n\n{USAGE}");
                    return ExitCode::from(2);
                }
            },
            _ => {
                eprintln!("imap-idle-lab hold: unknown argument {flag:?}\n\n{USAGE}");
                return ExitCode::from(2);
            }
        }
    }
    let _ = crate::sys::limits::raise_nofile();
    match run(port) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("imap-idle-lab hold: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The answer to one command line, and whether to close afterwards.
fn answer(line: &[u8]) -> (Vec<u8>, bool) {
    let line = String::from_utf8_lossy(line);
    let line = line.trim_end();
    let mut words = line.split_whitespace();
    let (tag, cmd) = (words.next().unwrap_or("*"), words.next().unwrap_or(""));
    if line.eq_ignore_ascii_case("DONE") {
        return (Vec::new(), false);
    }
    match cmd.to_ascii_uppercase().as_str() {
        "IDLE" => (b"+ idling\r\n".to_vec(), false),
        "LOGOUT" => (format!("* BYE\r\n{tag} OK\r\n").into_bytes(), true),
        _ => (format!("{tag} OK\r\n").into_bytes(), false),
    }
}

struct Conn {
    sock: TcpStream,
    /// The tag of the IDLE in progress, answered at DONE.
    idle_tag: Option<String>,
    partial: Vec<u8>,
}

fn run(port: u16) -> Result<(), String> {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    // The login process's listener: a deep backlog for a burst of clients.
    let mut listener =
        crate::lab::serve::login::listen(addr).map_err(|e| format!("binding {addr}: {e}"))?;
    let port = listener.local_addr().map_err(|e| e.to_string())?.port();
    println!("{port}");
    std::io::stdout().flush().map_err(|e| e.to_string())?;
    let mut poll = Poll::new().map_err(|e| e.to_string())?;
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)
        .map_err(|e| e.to_string())?;
    let mut conns: HashMap<usize, Conn> = HashMap::new();
    let mut next = 0usize;
    let mut events = Events::with_capacity(1024);
    let mut buf = [0u8; 4096];
    loop {
        if let Err(e) = poll.poll(&mut events, None) {
            if e.kind() == ErrorKind::Interrupted {
                continue;
            }
            return Err(e.to_string());
        }
        for ev in &events {
            if ev.token() == LISTENER {
                while let Ok((mut sock, _)) = listener.accept() {
                    let key = next;
                    next += 1;
                    let _ = sock.write_all(b"* OK hold ready\r\n");
                    if poll
                        .registry()
                        .register(&mut sock, Token(key), Interest::READABLE)
                        .is_ok()
                    {
                        let c = Conn {
                            sock,
                            idle_tag: None,
                            partial: Vec::new(),
                        };
                        conns.insert(key, c);
                    }
                }
                continue;
            }
            let key = ev.token().0;
            let Some(c) = conns.get_mut(&key) else {
                continue;
            };
            if !serve(c, &mut buf) {
                let _ = poll.registry().deregister(&mut c.sock);
                conns.remove(&key);
            }
        }
    }
}

/// Read what the client sent and answer it; false when it is gone.
fn serve(c: &mut Conn, buf: &mut [u8]) -> bool {
    loop {
        match c.sock.read(buf) {
            Ok(0) => return false,
            Ok(n) => c.partial.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => return false,
        }
    }
    while let Some(end) = c.partial.iter().position(|&b| b == b'\n') {
        let line: Vec<u8> = c.partial.drain(..=end).collect();
        let (mut out, close) = answer(&line);
        if line.trim_ascii().eq_ignore_ascii_case(b"DONE") {
            if let Some(tag) = c.idle_tag.take() {
                out = format!("{tag} OK Idle completed\r\n").into_bytes();
            }
        } else if out.starts_with(b"+") {
            let tag = String::from_utf8_lossy(&line);
            c.idle_tag = tag.split_whitespace().next().map(str::to_owned);
        }
        if c.sock.write_all(&out).is_err() || close {
            return false;
        }
    }
    // Nothing a stand-in needs to keep: a line this long is not IMAP.
    c.partial.len() < 64 * 1024
}

#[cfg(test)]
mod tests {
    use super::answer;

    #[test]
    fn answers_like_a_server_that_does_nothing() {
        assert_eq!(answer(b"a LOGIN u p\r\n"), (b"a OK\r\n".to_vec(), false));
        assert_eq!(answer(b"c IDLE\r\n"), (b"+ idling\r\n".to_vec(), false));
        assert_eq!(answer(b"DONE\r\n"), (Vec::new(), false));
        assert!(answer(b"z LOGOUT\r\n").1);
    }
}
