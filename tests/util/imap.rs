//! A small IMAP client for tests: line in, line out, nothing clever.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

pub struct Imap {
    r: BufReader<TcpStream>,
    w: TcpStream,
}

impl Imap {
    pub fn connect(port: u16) -> Imap {
        let w = TcpStream::connect(("127.0.0.1", port)).expect("connect to IMAP");
        w.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let r = BufReader::new(w.try_clone().unwrap());
        let mut imap = Imap { r, w };
        let greeting = imap.line();
        assert!(greeting.starts_with("* OK"), "greeting {greeting:?}");
        imap
    }

    /// LOGIN and SELECT INBOX.
    pub fn login(port: u16, user: &str, pass: &str) -> Imap {
        let mut imap = Imap::connect(port);
        imap.ok("a", &format!("LOGIN {user} {pass}"));
        imap.ok("b", "SELECT INBOX");
        imap
    }

    pub fn send(&mut self, raw: &str) {
        self.w
            .write_all(raw.as_bytes())
            .expect("send to IMAP server");
    }

    pub fn line(&mut self) -> String {
        let mut l = String::new();
        match self.r.read_line(&mut l) {
            Ok(0) => panic!("IMAP server closed the connection"),
            Ok(_) => l,
            Err(e) => panic!("reading from IMAP server: {e}"),
        }
    }

    /// The next line, or `None` once the server has closed.
    pub fn next_line(&mut self) -> Option<String> {
        let mut l = String::new();
        match self.r.read_line(&mut l) {
            Ok(0) => None,
            Ok(_) => Some(l),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => None,
            Err(e) => panic!("reading from IMAP server: {e}"),
        }
    }

    /// Run a command; the lines up to and including its tagged OK.
    pub fn ok(&mut self, tag: &str, cmd: &str) -> Vec<String> {
        self.send(&format!("{tag} {cmd}\r\n"));
        self.until_tagged(tag)
    }

    pub fn until_tagged(&mut self, tag: &str) -> Vec<String> {
        let mut lines = Vec::new();
        loop {
            let l = self.line();
            let done = l.starts_with(&format!("{tag} "));
            lines.push(l);
            if done {
                let last = lines.last().unwrap();
                assert!(last.starts_with(&format!("{tag} OK")), "{lines:?}");
                return lines;
            }
        }
    }

    pub fn idle(&mut self, tag: &str) {
        self.send(&format!("{tag} IDLE\r\n"));
        let l = self.line();
        assert_eq!(l, "+ idling\r\n");
    }

    /// Read lines until one contains `text`; return it and how long it took.
    pub fn expect(&mut self, text: &str) -> (String, Duration) {
        let t = Instant::now();
        loop {
            let l = self.line();
            if l.contains(text) {
                return (l, t.elapsed());
            }
        }
    }

    /// Whether a line may be read without waiting on the socket.
    pub fn has_buffered(&self) -> bool {
        !self.r.buffer().is_empty()
    }

    pub fn socket(&self) -> &TcpStream {
        &self.w
    }

    pub fn shutdown(self) {
        let _ = self.w.shutdown(std::net::Shutdown::Both);
    }
}
