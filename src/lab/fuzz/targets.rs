//! The decoders under fuzz, one function each: it feeds the bytes to the
//! decoder, checks what must hold of any result (round trips, line
//! shapes), and names the result's class for the novelty check. A panic
//! here is a finding; so is an input that takes longer than a second.

use super::engine::{Class, Target};
use super::{corpus, gen, serve_target};
use crate::idle::core::idle_input::{self, IdleInput};
use crate::proto::dovecot::{self, Ending, Hibernate, HIBERNATE_SERVICE, MASTER_SERVICE};
use crate::proto::native::Message;
use crate::proto::state::SessionState;

pub const TARGETS: [Target; 7] = [
    Target {
        name: "native",
        run: native,
        generate: gen::native,
        dict: &[b"\x01"],
        max_len: 4096,
    },
    Target {
        name: "state",
        run: state,
        generate: gen::state,
        dict: &[b"\x01"],
        max_len: 4096,
    },
    Target {
        name: "state-text",
        run: state_text,
        generate: gen::state_text,
        dict: &[b"=", b"==", b"A", b"+", b"/", b"AQ"],
        max_len: 4096,
    },
    Target {
        name: "hibernate",
        run: hibernate,
        generate: gen::hibernate,
        dict: &[
            b"\t",
            b"\x01",
            b"\x01t",
            b"=",
            b"tag=",
            b"state=",
            b"lport=",
            b"rport=",
            b"lip=",
            b"rip=",
            b"idle-cmd",
            b"notify_fd",
            b"idle_notify_interval=",
            b"mailbox=",
            b"session=",
            b"session_created=",
            b"userdb_fields=",
            b"peer_ino=",
            b"uid=",
            b"::1",
            b"127.0.0.1",
            b"VERSION\timap-hibernate\t1\t0",
        ],
        max_len: 4096,
    },
    Target {
        name: "master-answer",
        run: master_answer,
        generate: gen::master_answer,
        dict: &[b"+", b"-", b"VERSION", b"\timap-master", b"\t1", b"\t"],
        max_len: 512,
    },
    Target {
        name: "idle-input",
        run: idle_input,
        generate: gen::idle_input,
        dict: &[b"DONE", b"done", b"\r\n", b"\n", b" IDLE", b"idle", b" "],
        max_len: 512,
    },
    Target {
        name: "imap-command",
        run: serve_target::imap_command,
        generate: serve_target::generate,
        dict: serve_target::DICT,
        max_len: 2048,
    },
];

/// A result class: `kind` and the start of `detail`, with digits and the
/// quoted or trailing value left out, so "Invalid lport value: 7" and
/// "Invalid lport value: 8" are one class, not two.
pub fn class(kind: &str, detail: &str) -> Class {
    let mut end = detail.find('"').unwrap_or(detail.len());
    if let Some(i) = detail.find("value: ") {
        end = end.min(i + 7);
    }
    let text: Vec<u8> = kind
        .bytes()
        .chain(*b"|")
        .chain(
            detail[..end]
                .bytes()
                .filter(|b| !b.is_ascii_digit())
                .take(48),
        )
        .collect();
    corpus::hash(&text)
}

/// The enum variant in a Debug form: `Park(Park { .. })` -> `Park`.
fn variant(debug: &str) -> &str {
    let end = debug
        .find(|c: char| !c.is_ascii_alphanumeric())
        .unwrap_or(debug.len());
    &debug[..end]
}

fn native(data: &[u8]) -> Class {
    match Message::decode(data) {
        Ok(msg) => {
            let again = Message::decode(&msg.encode());
            assert_eq!(
                again.as_ref(),
                Ok(&msg),
                "native: encode then decode differs"
            );
            class("ok", variant(&format!("{msg:?}")))
        }
        Err(e) => class("err", &e.to_string()),
    }
}

fn state(data: &[u8]) -> Class {
    match SessionState::decode(data) {
        Ok(s) => {
            assert_eq!(SessionState::decode(&s.encode()).as_ref(), Ok(&s));
            let blob = s.park_blob();
            let back =
                SessionState::from_park_blob(&blob, &s.user, &s.tag, &s.watch, s.keepalive_secs);
            assert_eq!(back.as_ref(), Ok(&s), "state: park blob does not restore");
            class(
                "ok",
                if s.searchres.is_some() {
                    "searchres"
                } else {
                    ""
                },
            )
        }
        Err(e) => class("err", &e.to_string()),
    }
}

fn state_text(data: &[u8]) -> Class {
    match SessionState::from_text(&String::from_utf8_lossy(data)) {
        Ok(s) => {
            assert_eq!(SessionState::from_text(&s.to_text()).as_ref(), Ok(&s));
            class("ok", "")
        }
        Err(e) => class("err", &e.to_string()),
    }
}

fn hibernate(data: &[u8]) -> Class {
    let version = dovecot::check_version(data, HIBERNATE_SERVICE).is_ok();
    // Escaping is undone by unescaping, for any bytes.
    let mut escaped = Vec::with_capacity(data.len() * 2);
    dovecot::escape(data, &mut escaped);
    assert_eq!(
        dovecot::unescape(&escaped),
        data,
        "unescape(escape(x)) != x"
    );
    match Hibernate::parse(data) {
        Ok(h) => {
            let input = &data[..data.len().min(16)];
            let line = dovecot::master_line(
                &h.user,
                (1, 2),
                &h.tag,
                &h.return_tail(),
                input,
                Ending::BadDone,
            );
            // The return line is one line, and its first field the user.
            let body = line.strip_suffix(b"\n");
            assert!(
                body.is_some_and(|b| !b.contains(&b'\n')),
                "return line breaks"
            );
            let fields = dovecot::split(body.unwrap_or_default());
            assert_eq!(fields.first().map(Vec::as_slice), Some(h.user.as_bytes()));
            let flags = [h.idle_cmd, h.notify_fd, !h.state.is_empty(), version];
            class("ok", &format!("{flags:?}"))
        }
        Err(e) => class(if version { "version" } else { "err" }, &e),
    }
}

fn master_answer(data: &[u8]) -> Class {
    let version = dovecot::check_version(data, MASTER_SERVICE).is_ok();
    let answer = match dovecot::parse_answer(data) {
        Ok(()) => "+",
        Err(reason) if data.first() == Some(&b'-') => {
            assert_eq!(
                reason.as_bytes(),
                String::from_utf8_lossy(&data[1..]).as_bytes()
            );
            "-"
        }
        Err(_) => "?",
    };
    class(answer, if version { "version" } else { "" })
}

fn idle_input(data: &[u8]) -> Class {
    let kind = match idle_input::parse(data) {
        IdleInput::Partial => {
            assert!(data.len() <= 5, "partial, but {} bytes", data.len());
            "partial"
        }
        IdleInput::Bad => "bad",
        IdleInput::Done { rest } => {
            assert!(data.ends_with(rest) && rest.len() + 5 <= data.len());
            "done"
        }
        IdleInput::Restart { tag } => {
            assert!(!tag.is_empty() && tag.len() + 10 <= data.len());
            "restart"
        }
    };
    class(kind, "")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_ignore_the_values() {
        assert_eq!(
            class("err", "Invalid lport value: 7"),
            class("err", "Invalid lport value: x")
        );
        assert_ne!(
            class("err", "Invalid lport value: 7"),
            class("err", "Invalid rport value: 7")
        );
        assert_eq!(variant("Park(Park { user: \"a\" })"), "Park");
        assert_eq!(variant("StatsRequest"), "StatsRequest");
    }
}
