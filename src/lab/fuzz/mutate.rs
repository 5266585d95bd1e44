//! Mutations, AFL "havoc" style without coverage: each new input is an
//! old one with a stack of 1 to 8 random edits. The edits aim at what our
//! decoders parse: postcard varints (length and number fields), TAB- and
//! 0x01-escaped Dovecot lines, CRLF-ended IMAP lines, decimal fields.

use super::rng::Rng;

/// Bytes that mean something to one of our formats: NUL and 0x01
/// (Dovecot escapes), TAB (field separator), CR and LF (line ends), and
/// the edges of signed, ASCII and varint-continuation ranges.
pub const INTERESTING: [u8; 8] = [0, 0xff, 0x7f, 0x80, b'\t', b'\r', b'\n', 0x01];

/// Numbers worth planting as varints: around the 1-, 2- and 3-byte
/// varint edges, our limits, and the integer widths' ends.
const NUMBERS: [u64; 16] = [
    0,
    1,
    2,
    127,
    128,
    255,
    256,
    1024,
    4097,
    16_385,
    65_535,
    65_537,
    u32::MAX as u64,
    1 << 32,
    i64::MAX as u64,
    u64::MAX,
];

/// The same for decimal text fields (ports, intervals, versions, UIDs).
const DECIMALS: [&str; 12] = [
    "0",
    "-1",
    "+1",
    "00",
    "65535",
    "65536",
    "4294967295",
    "4294967296",
    "18446744073709551615",
    "18446744073709551616",
    "99999999999999999999999999",
    "",
];

/// Replace `data` by a mutant of itself. `other` is a second corpus entry
/// for splicing, `dict` the target's tokens; the result is at most
/// `max_len` bytes.
pub fn mutate(data: &mut Vec<u8>, rng: &mut Rng, other: &[u8], dict: &[&[u8]], max_len: usize) {
    let rounds = 1 << rng.below(4);
    for _ in 0..rounds {
        edit(data, rng, other, dict);
        data.truncate(max_len);
    }
}

fn edit(data: &mut Vec<u8>, rng: &mut Rng, other: &[u8], dict: &[&[u8]]) {
    let len = data.len();
    // Edits of an existing byte need one; an empty input can only grow.
    let op = if len == 0 { 1 } else { rng.below(15) };
    let at = rng.below(len);
    let gap = rng.below(len + 1);
    match op {
        0 => data[at] ^= 1 << rng.below(8),
        1 => data.insert(gap, rng.byte()),
        2 => {
            let n = (1 + rng.below(8)).min(len - at);
            data.drain(at..at + n);
        }
        3 => data[at] = rng.byte(),
        4 => data[at] = *rng.pick(&INTERESTING),
        5 => data.insert(gap, *rng.pick(&INTERESTING)),
        // A length or count a little off: the classic off-by-one probes.
        6 => {
            let d = 1 + rng.below(16) as u8;
            data[at] = if rng.one_in(2) {
                data[at].wrapping_add(d)
            } else {
                data[at].wrapping_sub(d)
            };
        }
        // A postcard length or number field replaced by an extreme one.
        7 => {
            let v = varint(*rng.pick(&NUMBERS));
            let n = rng.below(3).min(len - at);
            data.splice(at..at + n, v);
        }
        8 => decimal(data, rng),
        9 => {
            // Splice: the front of this one, the back of another.
            let cut = rng.below(other.len() + 1);
            data.truncate(gap);
            data.extend_from_slice(&other[cut..]);
        }
        10 => data.truncate(at),
        11 => {
            // Duplicate a chunk, often in place, which repeats fields.
            let n = (1 + rng.below(32)).min(len - at);
            let chunk = data[at..at + n].to_vec();
            let to = if rng.one_in(2) { at + n } else { gap };
            data.splice(to..to, chunk);
        }
        12 | 13 if !dict.is_empty() => {
            let token = *rng.pick(dict);
            if op == 12 {
                data.splice(gap..gap, token.iter().copied());
            } else {
                let n = token.len().min(len - at);
                data.splice(at..at + n, token.iter().copied());
            }
        }
        _ => {
            // Swap two bytes (also where the dictionary is empty).
            let b = rng.below(len);
            data.swap(at, b);
        }
    }
}

/// Postcard's varint: 7 bits a byte, low first, high bit = more follows.
pub fn varint(mut v: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(10);
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            return out;
        }
        out.push(b | 0x80);
    }
}

/// Replace a run of ASCII digits (or, when there is none, any spot) by
/// an extreme decimal.
fn decimal(data: &mut Vec<u8>, rng: &mut Rng) {
    let start = rng.below(data.len());
    let (from, to) = match data[start..].iter().position(u8::is_ascii_digit) {
        Some(i) => {
            let from = start + i;
            let n = data[from..]
                .iter()
                .take_while(|b| b.is_ascii_digit())
                .count();
            (from, from + n)
        }
        None => (start, start),
    };
    data.splice(from..to, rng.pick(&DECIMALS).bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mutants_respect_the_length_and_replay_from_the_seed() {
        let run = |seed| {
            let mut rng = Rng::new(seed);
            let mut out = Vec::new();
            let mut data = b"alice\tp\ttag=a\tlport=143".to_vec();
            for _ in 0..2000 {
                mutate(&mut data, &mut rng, b"other\x01t", &[b"tag="], 64);
                assert!(data.len() <= 64);
                out.push(data.clone());
            }
            out
        };
        assert_eq!(run(5), run(5));
        assert_ne!(run(5), run(6));
        // Mutating nothing grows something (later edits may cut it again).
        let mut rng = Rng::new(1);
        let grown = (0..20)
            .filter(|_| {
                let mut empty = Vec::new();
                mutate(&mut empty, &mut rng, b"", &[], 16);
                !empty.is_empty()
            })
            .count();
        assert!(grown > 0);
    }

    #[test]
    fn varints_match_postcard() {
        for v in NUMBERS {
            assert_eq!(varint(v), postcard::to_stdvec(&v).unwrap());
        }
    }
}
