//! One idle IMAP client of the load tool: connect, LOGIN, SELECT, IDLE,
//! then count keepalives and note when each new `EXISTS` arrives. Works
//! against any IMAP server; only the server's lines drive it.

/// What the client is waiting for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Connecting,
    Greeting,
    Login,
    Select,
    IdleStart,
    Idle,
    /// DONE sent, waiting for the tagged OK.
    Done,
    Logout,
    Finished,
    Failed,
}

pub struct Client {
    pub user: String,
    pub password: String,
    pub mailbox: String,
    pub step: Step,
    /// Messages the client knows of.
    pub exists: u32,
    pub keepalives: u32,
    /// When the last keepalive came, and the longest gap between two
    /// (monotonic ns; 0 until there were two).
    pub keepalive_at: u64,
    pub keepalive_gap: u64,
    pub failure: Option<String>,
    /// When DONE was sent (monotonic ns).
    pub done_sent: u64,
    pub done_ns: Option<u64>,
    pub started: u64,
    inbuf: Vec<u8>,
}

/// What a line from the server means to the caller.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    /// Send these bytes.
    Send(String),
    /// The client is idle now.
    Idle,
    /// A new message count arrived while idle.
    Exists(u32),
    Fail(String),
    /// DONE answered.
    DoneOk,
    Finished,
}

const MAX_LINE: usize = 64 * 1024;

impl Client {
    pub fn new(user: &str, password: &str, mailbox: &str, now: u64) -> Client {
        Client {
            user: user.to_owned(),
            password: password.to_owned(),
            mailbox: mailbox.to_owned(),
            step: Step::Connecting,
            exists: 0,
            keepalives: 0,
            keepalive_at: 0,
            keepalive_gap: 0,
            failure: None,
            done_sent: 0,
            done_ns: None,
            started: now,
            inbuf: Vec::new(),
        }
    }

    /// A read at `now` brought keepalives `before` did not count.
    pub fn keepalives_at(&mut self, before: u32, now: u64) {
        if self.keepalives == before {
            return;
        }
        if self.keepalive_at > 0 {
            self.keepalive_gap = self.keepalive_gap.max(now - self.keepalive_at);
        }
        self.keepalive_at = now;
    }

    pub fn fail(&mut self, why: String) {
        if self.failure.is_none() && !matches!(self.step, Step::Finished) {
            self.failure = Some(why);
            self.step = Step::Failed;
        }
    }

    pub fn connected(&mut self) {
        self.step = Step::Greeting;
    }

    /// Feed bytes from the server; events in order.
    pub fn input(&mut self, bytes: &[u8]) -> Vec<Event> {
        self.inbuf.extend_from_slice(bytes);
        let mut out = Vec::new();
        while let Some(end) = self.inbuf.iter().position(|&b| b == b'\n') {
            let raw: Vec<u8> = self.inbuf.drain(..=end).collect();
            let line = String::from_utf8_lossy(&raw).trim_end().to_owned();
            self.line(&line, &mut out);
            // The caller ends the client at the first failure.
            if matches!(out.last(), Some(Event::Fail(_))) {
                return out;
            }
        }
        if self.inbuf.len() > MAX_LINE {
            out.push(Event::Fail("line from server too long".into()));
        }
        out
    }

    fn line(&mut self, line: &str, out: &mut Vec<Event>) {
        if let Some(rest) = line.strip_prefix("* BYE") {
            if !matches!(self.step, Step::Logout | Step::Finished) {
                out.push(Event::Fail(format!(
                    "closed by server in {:?}: BYE{rest}",
                    self.step
                )));
            }
            return;
        }
        let exists = line
            .strip_prefix("* ")
            .and_then(|r| r.strip_suffix(" EXISTS"))
            .and_then(|n| n.parse::<u32>().ok());
        match self.step {
            Step::Greeting if line.starts_with("* OK") => {
                self.step = Step::Login;
                out.push(Event::Send(format!(
                    "a LOGIN {} {}\r\n",
                    quote(&self.user),
                    quote(&self.password)
                )));
            }
            Step::Greeting => out.push(Event::Fail(format!("unexpected greeting: {line}"))),
            Step::Login => {
                if line.starts_with("a OK") {
                    self.step = Step::Select;
                    out.push(Event::Send(format!(
                        "b SELECT {}\r\n",
                        quote(&self.mailbox)
                    )));
                } else if let Some(rest) = line.strip_prefix("a ") {
                    out.push(Event::Fail(format!("LOGIN failed: {rest}")));
                }
            }
            Step::Select => {
                if let Some(n) = exists {
                    self.exists = n;
                } else if line.starts_with("b OK") {
                    self.step = Step::IdleStart;
                    out.push(Event::Send("c IDLE\r\n".into()));
                } else if let Some(rest) = line.strip_prefix("b ") {
                    out.push(Event::Fail(format!("SELECT failed: {rest}")));
                }
            }
            Step::IdleStart => {
                if line.starts_with('+') {
                    self.step = Step::Idle;
                    out.push(Event::Idle);
                } else if let Some(n) = exists {
                    self.exists = n;
                } else if let Some(rest) = line.strip_prefix("c ") {
                    out.push(Event::Fail(format!("IDLE refused: {rest}")));
                }
            }
            Step::Idle | Step::Done => {
                if let Some(n) = exists {
                    if n > self.exists {
                        self.exists = n;
                        out.push(Event::Exists(n));
                    }
                } else if line.starts_with("* OK") {
                    self.keepalives += 1;
                } else if self.step == Step::Done && line.starts_with("c OK") {
                    self.step = Step::Logout;
                    out.push(Event::DoneOk);
                    out.push(Event::Send("z LOGOUT\r\n".into()));
                } else if let Some(rest) =
                    line.strip_prefix("c ").filter(|_| self.step == Step::Done)
                {
                    out.push(Event::Fail(format!("DONE answered: {rest}")));
                }
            }
            Step::Logout => {
                if line.starts_with("z ") {
                    self.step = Step::Finished;
                    out.push(Event::Finished);
                }
            }
            Step::Connecting | Step::Finished | Step::Failed => {}
        }
    }

    /// End IDLE; the answer is timed.
    pub fn finish(&mut self, now: u64) -> Option<String> {
        if self.step != Step::Idle {
            return None;
        }
        self.step = Step::Done;
        self.done_sent = now;
        Some("DONE\r\n".into())
    }
}

fn quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-@+".contains(&b))
    {
        return s.to_owned();
    }
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_whole_session() {
        let mut c = Client::new("alice", "pw", "INBOX", 0);
        c.connected();
        assert_eq!(
            c.input(b"* OK ready\r\n"),
            vec![Event::Send("a LOGIN alice pw\r\n".into())]
        );
        assert_eq!(
            c.input(b"a OK Logged in\r\n"),
            vec![Event::Send("b SELECT INBOX\r\n".into())]
        );
        assert_eq!(
            c.input(b"* 3 EXISTS\r\n* 0 RECENT\r\nb OK\r\n"),
            vec![Event::Send("c IDLE\r\n".into())]
        );
        assert_eq!(c.input(b"+ idling\r\n"), vec![Event::Idle]);
        assert_eq!(c.input(b"* OK Still here\r\n* 3 EXISTS\r\n"), vec![]);
        assert_eq!(c.keepalives, 1);
        assert_eq!(c.input(b"* 4 EX"), vec![]);
        assert_eq!(c.input(b"ISTS\r\n"), vec![Event::Exists(4)]);
        assert_eq!(c.finish(5).as_deref(), Some("DONE\r\n"));
        assert_eq!(
            c.input(b"c OK Idle completed\r\n"),
            vec![Event::DoneOk, Event::Send("z LOGOUT\r\n".into())]
        );
        assert_eq!(c.input(b"* BYE\r\nz OK\r\n"), vec![Event::Finished]);
    }

    #[test]
    fn failures_say_why() {
        let mut c = Client::new("bob", "a b", "INBOX", 0);
        c.connected();
        assert_eq!(
            c.input(b"* OK\r\n"),
            vec![Event::Send("a LOGIN bob \"a b\"\r\n".into())]
        );
        assert_eq!(
            c.input(b"a NO [AUTHENTICATIONFAILED] Authentication failed.\r\n"),
            vec![Event::Fail(
                "LOGIN failed: NO [AUTHENTICATIONFAILED] Authentication failed.".into()
            )]
        );
        let mut c = Client::new("bob", "x", "INBOX", 0);
        c.connected();
        let e = c.input(b"* BYE too many\r\n");
        assert!(
            matches!(&e[..], [Event::Fail(w)] if w.starts_with("closed by server in Greeting"))
        );
    }
}
