//! Dovecot 2.4's ostream-multiplex stream framing, the writing side, as a
//! pure function. A client whose hand-off carries `multiplex_ostream` reads
//! a multiplexed stream (a Dovecot proxy in front of it demultiplexes), so
//! whatever a hibernation process writes to it goes out on channel 0 in
//! the "stream continue" format: no stream header (the login process sent
//! it), a switch to channel 0 before the first bytes, and the switch
//! prefix's first byte escaped where a reader could mistake it.

use std::borrow::Cow;

/// Starts a channel switch (`<prefix> 0 <channel>`) or an escape
/// (`<prefix> 1`, standing for the prefix's first byte).
const PREFIX: [u8; 2] = [0x03, 0xFE];
const SWITCH_CHANNEL: u8 = 0;
const ESCAPED_FIRST_BYTE: u8 = 1;
/// The main channel: what the IMAP client itself reads.
const MAIN_CHANNEL: u8 = 0;

/// `data` as written on channel 0 of a multiplexed stream. `first`: nothing
/// has been written to this stream yet in this hibernation (a stream that
/// continues starts on no channel, so the switch to channel 0 comes first).
///
/// As Dovecot's writer: the prefix's first byte is escaped where it is
/// followed by the prefix's second byte, or is the write's last byte (a
/// reader would otherwise wait for the byte after it).
pub fn frame(data: &[u8], first: bool) -> Cow<'_, [u8]> {
    let escapes = (0..data.len()).filter(|&i| needs_escape(data, i)).count();
    if !first && escapes == 0 {
        return Cow::Borrowed(data);
    }
    let mut out = Vec::with_capacity(data.len() + 4 + escapes * 2);
    if first {
        out.extend_from_slice(&PREFIX);
        out.extend_from_slice(&[SWITCH_CHANNEL, MAIN_CHANNEL]);
    }
    for (i, &b) in data.iter().enumerate() {
        if needs_escape(data, i) {
            out.extend_from_slice(&PREFIX);
            out.push(ESCAPED_FIRST_BYTE);
        } else {
            out.push(b);
        }
    }
    Cow::Owned(out)
}

fn needs_escape(data: &[u8], i: usize) -> bool {
    data[i] == PREFIX[0] && data.get(i + 1).is_none_or(|&next| next == PREFIX[1])
}

/// The reading side, for tests and the lab: channel 0's bytes of a stream
/// that may start with Dovecot's stream header. Bytes of other channels
/// are dropped. A prefix cut off at the end is left out.
pub fn main_channel(stream: &[u8]) -> Vec<u8> {
    const HEADER: [u8; 9] = [0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x00, 0x02, 0x03, 0xFE];
    let mut s = stream.strip_prefix(&HEADER[..]).unwrap_or(stream);
    let mut out = Vec::new();
    let mut channel = MAIN_CHANNEL;
    while let Some((&b, rest)) = s.split_first() {
        if b == PREFIX[0] && rest.first() == Some(&PREFIX[1]) {
            match rest.get(1) {
                Some(&SWITCH_CHANNEL) => {
                    channel = rest.get(2).copied().unwrap_or(channel);
                    s = rest.get(3..).unwrap_or_default();
                }
                Some(&ESCAPED_FIRST_BYTE) => {
                    if channel == MAIN_CHANNEL {
                        out.push(PREFIX[0]);
                    }
                    s = &rest[2..];
                }
                _ => s = rest.get(2..).unwrap_or_default(),
            }
            continue;
        }
        if channel == MAIN_CHANNEL {
            out.push(b);
        }
        s = rest;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_write_switches_to_channel_0_and_later_ones_go_as_they_are() {
        let ka = b"* OK Still here\r\n";
        let first = frame(ka, true);
        assert_eq!(&first[..4], b"\x03\xFE\x00\x00");
        assert_eq!(&first[4..], ka);
        assert!(matches!(frame(ka, false), Cow::Borrowed(_)));
        assert_eq!(&*frame(ka, false), ka);
    }

    #[test]
    fn the_prefix_byte_is_escaped_only_where_dovecot_escapes_it() {
        // Followed by the prefix's second byte, or last: escaped.
        assert_eq!(&*frame(b"a\x03\xFEb", false), b"a\x03\xFE\x01\xFEb");
        assert_eq!(&*frame(b"ab\x03", false), b"ab\x03\xFE\x01");
        assert_eq!(&*frame(b"\x03", true), b"\x03\xFE\x00\x00\x03\xFE\x01");
        // Anywhere else it goes as it is.
        assert_eq!(&*frame(b"\x03a", false), b"\x03a");
        assert_eq!(&*frame(b"a\x03\x03b", false), b"a\x03\x03b");
    }

    #[test]
    fn the_reader_undoes_the_writer() {
        for data in [
            &b"* OK Still here\r\n"[..],
            b"\x03\xFE\x03",
            b"\x03\x03\xFE\xFE\x03",
            b"",
        ] {
            let mut stream = frame(data, true).into_owned();
            stream.extend_from_slice(&frame(data, false));
            let twice = [data, data].concat();
            assert_eq!(main_channel(&stream), twice, "{data:?}");
        }
        // Dovecot's stream header and another channel's bytes are dropped.
        let s = b"\xFF\xFF\xFF\xFF\xFF\x00\x02\x03\xFE* a\r\n\x03\xFE\x00\x01side\x03\xFE\x00\x00b";
        assert_eq!(main_channel(s), b"* a\r\nb");
    }
}
