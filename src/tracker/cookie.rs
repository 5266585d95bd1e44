//! Users' cookies: 128 random bits each, compared in constant time so a
//! forger learns nothing from how long a refusal takes.

use crate::proto::native::Cookie;

pub fn new_cookie() -> std::io::Result<Cookie> {
    let mut c = [0u8; 16];
    getrandom::fill(&mut c).map_err(|e| std::io::Error::other(e.to_string()))?;
    Ok(c)
}

pub fn same(a: &Cookie, b: &Cookie) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    // black_box keeps the optimiser from turning the fold into an early exit.
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_differ_and_compare() {
        let a = new_cookie().unwrap();
        let b = new_cookie().unwrap();
        assert_ne!(a, b);
        assert!(same(&a, &a));
        assert!(!same(&a, &b));
        let mut c = a;
        c[15] ^= 1;
        assert!(!same(&a, &c));
    }
}
