//! Connection serials that peers cannot guess. A serial tells a reused
//! slab key apart and is half of the id peers see; counting 1, 2, 3 would
//! let anyone who saw one id name the next. Each serial is a keyed
//! permutation of a counter (a small Feistel network over 32 bits), so
//! serials never repeat within 2^32 parks and do not follow from each
//! other without the key, which comes from the OS at start.

pub struct Serials {
    key: [u16; 4],
    counter: u32,
}

impl Serials {
    pub fn new(key: u64) -> Serials {
        Serials {
            key: [
                key as u16,
                (key >> 16) as u16,
                (key >> 32) as u16,
                (key >> 48) as u16,
            ],
            counter: 0,
        }
    }

    pub fn next(&mut self) -> u32 {
        self.counter = self.counter.wrapping_add(1);
        let (mut l, mut r) = ((self.counter >> 16) as u16, self.counter as u16);
        for k in self.key {
            let f = round(r, k);
            (l, r) = (r, l ^ f);
        }
        (l as u32) << 16 | r as u32
    }
}

fn round(x: u16, k: u16) -> u16 {
    let v = (x ^ k) as u32;
    let v = v.wrapping_mul(0x9e37_79b1).rotate_left(13) ^ (k as u32).wrapping_mul(0x85eb_ca6b);
    (v ^ (v >> 16)) as u16
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn serials_do_not_repeat_and_do_not_count() {
        let mut s = Serials::new(0x1234_5678_9abc_def0);
        let got: Vec<u32> = (0..100_000).map(|_| s.next()).collect();
        let distinct: HashSet<u32> = got.iter().copied().collect();
        assert_eq!(distinct.len(), got.len());
        let steps_of_one = got
            .windows(2)
            .filter(|w| w[1] == w[0].wrapping_add(1))
            .count();
        assert!(steps_of_one < 10, "{steps_of_one}");
        assert_ne!(Serials::new(1).next(), Serials::new(2).next());
    }
}
