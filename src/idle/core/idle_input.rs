//! What a client inside IDLE may say while parked, decided from the bytes
//! read so far. Mirrors Dovecot's imap-hibernate so clients see the same
//! behaviour under either daemon.

/// Enough for `DONE\r\n<tag> IDLE\r\n` with a 128-byte tag; more is never read.
pub const MAX_IDLE_INPUT: usize = 12 + 1 + 128;

#[derive(Debug, PartialEq, Eq)]
pub enum IdleInput<'a> {
    /// A prefix of `DONE\r\n`: wait for the rest.
    Partial,
    /// Not `DONE`: hand everything back as a bad DONE.
    Bad,
    /// `DONE[\r]\n` ended IDLE; `rest` (maybe empty) is the next command.
    Done { rest: &'a [u8] },
    /// `DONE[\r]\n<tag> IDLE[\r]\n` and nothing else: answer in place,
    /// keep parked with the new tag.
    Restart { tag: &'a [u8] },
}

pub fn parse(data: &[u8]) -> IdleInput<'_> {
    let word = &data[..data.len().min(4)];
    if !word.eq_ignore_ascii_case(&b"DONE"[..word.len()]) {
        return IdleInput::Bad;
    }
    let Some(after) = data.get(4..).filter(|a| !a.is_empty()) else {
        return IdleInput::Partial;
    };
    let after = after.strip_prefix(b"\r").unwrap_or(after);
    let rest = match after.split_first() {
        None => return IdleInput::Partial,
        Some((b'\n', rest)) => rest,
        Some(_) => return IdleInput::Bad,
    };
    match restart_tag(rest) {
        Some(tag) => IdleInput::Restart { tag },
        None => IdleInput::Done { rest },
    }
}

/// `<tag> IDLE[\r]\n` exactly, with a non-empty tag.
fn restart_tag(line: &[u8]) -> Option<&[u8]> {
    let space = line.iter().position(|&b| b == b' ')?;
    let (tag, cmd) = (&line[..space], &line[space + 1..]);
    if tag.is_empty() || tag.iter().any(|&b| b <= b' ' || b >= 0x7f) {
        return None;
    }
    let cmd = cmd.strip_suffix(b"\n")?;
    let cmd = cmd.strip_suffix(b"\r").unwrap_or(cmd);
    cmd.eq_ignore_ascii_case(b"IDLE").then_some(tag)
}

#[cfg(test)]
mod tests {
    use super::IdleInput::*;
    use super::*;

    #[test]
    fn done_variants() {
        assert_eq!(parse(b"DONE\r\n"), Done { rest: b"" });
        assert_eq!(parse(b"done\n"), Done { rest: b"" });
        assert_eq!(
            parse(b"DONE\r\na NOOP\r\n"),
            Done {
                rest: b"a NOOP\r\n"
            }
        );
    }

    #[test]
    fn partial_prefixes_wait() {
        for p in [&b"D"[..], b"DO", b"DON", b"DONE", b"DONE\r", b"dOnE"] {
            assert_eq!(parse(p), Partial, "{:?}", p);
        }
    }

    #[test]
    fn anything_else_is_bad() {
        for b in [&b"a NOOP\r\n"[..], b"DONX", b"DONE \r\n", b"DONE\rx", b"X"] {
            assert_eq!(parse(b), Bad, "{:?}", b);
        }
    }

    #[test]
    fn done_idle_restarts_in_place() {
        assert_eq!(parse(b"DONE\r\nA2 IDLE\r\n"), Restart { tag: b"A2" });
        assert_eq!(parse(b"DONE\nA2 idle\n"), Restart { tag: b"A2" });
        // More after the IDLE line, a partial IDLE line, or a bad tag: plain DONE.
        assert_eq!(
            parse(b"DONE\r\nA2 IDLE\r\nA3 NOOP\r\n"),
            Done {
                rest: b"A2 IDLE\r\nA3 NOOP\r\n"
            }
        );
        assert_eq!(parse(b"DONE\r\nA2 IDL"), Done { rest: b"A2 IDL" });
        assert_eq!(parse(b"DONE\r\n IDLE\r\n"), Done { rest: b" IDLE\r\n" });
    }
}
