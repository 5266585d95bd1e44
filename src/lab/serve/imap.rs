//! Just enough IMAP syntax for the reference server: command lines made
//! of atoms, quoted strings and parenthesised lists; sequence sets.
//! Literals are not supported (the server answers BAD).

/// Take one complete line (without CRLF) off the front of `buf`.
pub fn take_line(buf: &mut Vec<u8>) -> Option<Vec<u8>> {
    let end = buf.iter().position(|&b| b == b'\n')?;
    let mut line: Vec<u8> = buf.drain(..=end).collect();
    line.pop();
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    Some(line)
}

/// Split a command line into words: atoms, quoted strings (unquoted), and
/// parenthesised lists (kept whole, parentheses included).
pub fn words(line: &str) -> Result<Vec<String>, &'static str> {
    let mut out = Vec::new();
    let mut chars = line.chars().peekable();
    while let Some(&c) = chars.peek() {
        match c {
            ' ' => {
                chars.next();
            }
            '"' => {
                chars.next();
                let mut s = String::new();
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => s.push(chars.next().ok_or("unfinished quoted string")?),
                        Some(c) => s.push(c),
                        None => return Err("unfinished quoted string"),
                    }
                }
                out.push(s);
            }
            '(' => {
                let mut depth = 0;
                let mut s = String::new();
                for c in chars.by_ref() {
                    s.push(c);
                    match c {
                        '(' => depth += 1,
                        ')' => {
                            depth -= 1;
                            if depth == 0 {
                                break;
                            }
                        }
                        _ => {}
                    }
                }
                if depth != 0 {
                    return Err("unbalanced parentheses");
                }
                out.push(s);
            }
            '{' => return Err("literals are not supported by this reference server"),
            _ => {
                let mut s = String::new();
                while let Some(&c) = chars.peek() {
                    if c == ' ' {
                        break;
                    }
                    s.push(c);
                    chars.next();
                }
                out.push(s);
            }
        }
    }
    Ok(out)
}

/// The words inside a parenthesised list, upper-cased: `(FLAGS UID)`.
pub fn list_items(word: &str) -> Vec<String> {
    word.trim_start_matches('(')
        .trim_end_matches(')')
        .split(' ')
        .filter(|s| !s.is_empty())
        .map(|s| s.to_ascii_uppercase())
        .collect()
}

/// Does `n` fall in sequence set `set` (`1,3:5,7:*`), `*` being `max`?
pub fn in_set(set: &str, n: u32, max: u32) -> Option<bool> {
    let num = |s: &str| -> Option<u32> {
        if s == "*" {
            Some(max)
        } else {
            s.parse().ok().filter(|&v| v > 0)
        }
    };
    let mut hit = false;
    for part in set.split(',') {
        let (lo, hi) = match part.split_once(':') {
            Some((a, b)) => (num(a)?, num(b)?),
            None => {
                let v = num(part)?;
                (v, v)
            }
        };
        let (lo, hi) = (lo.min(hi), lo.max(hi));
        hit |= (lo..=hi).contains(&n);
    }
    Some(hit)
}

/// Quote `s` as an IMAP quoted string.
pub fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_words_and_sets() {
        let mut buf = b"a NOOP\r\nb IDLE\npartial".to_vec();
        assert_eq!(take_line(&mut buf).unwrap(), b"a NOOP");
        assert_eq!(take_line(&mut buf).unwrap(), b"b IDLE");
        assert_eq!(take_line(&mut buf), None);
        assert_eq!(buf, b"partial");
        assert_eq!(
            words(r#"a LOGIN "al ice" "p\"w" (FLAGS (X Y)) 1:*"#).unwrap(),
            vec!["a", "LOGIN", "al ice", "p\"w", "(FLAGS (X Y))", "1:*"]
        );
        assert!(words("a LOGIN {5}").is_err());
        assert!(words("a (x").is_err());
        assert_eq!(list_items("(flags uid)"), vec!["FLAGS", "UID"]);
        assert_eq!(in_set("1,3:5", 4, 9), Some(true));
        assert_eq!(in_set("1,3:5", 2, 9), Some(false));
        assert_eq!(in_set("7:*", 9, 9), Some(true));
        assert_eq!(in_set("x", 1, 1), None);
        assert_eq!(quote("a\"b"), "\"a\\\"b\"");
    }
}
