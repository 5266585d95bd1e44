//! Interned user names: a parked connection stores a 4-byte id instead of
//! its own copy of the name.

use std::collections::HashMap;
use std::rc::Rc;

use slab::Slab;

struct User {
    name: Rc<str>,
    refs: u32,
    hash: u64,
}

#[derive(Default)]
pub struct Users {
    by_name: HashMap<Rc<str>, u32>,
    list: Slab<User>,
}

impl Users {
    pub fn intern(&mut self, name: &str) -> u32 {
        if let Some(&id) = self.by_name.get(name) {
            self.list[id as usize].refs += 1;
            return id;
        }
        let name: Rc<str> = name.into();
        let id = self.list.insert(User {
            hash: fnv1a(name.as_bytes()),
            name: name.clone(),
            refs: 1,
        }) as u32;
        self.by_name.insert(name, id);
        id
    }

    pub fn release(&mut self, id: u32) {
        let Some(user) = self.list.get_mut(id as usize) else {
            return;
        };
        user.refs = user.refs.saturating_sub(1);
        if user.refs == 0 {
            let user = self.list.remove(id as usize);
            self.by_name.remove(&user.name);
        }
    }

    pub fn name(&self, id: u32) -> &str {
        self.list.get(id as usize).map_or("?", |u| &u.name)
    }

    /// Stable across restarts, so a user's keepalive phase stays put.
    pub fn hash(&self, id: u32) -> u64 {
        self.list.get(id as usize).map_or(0, |u| u.hash)
    }

    pub fn len(&self) -> usize {
        self.list.len()
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interning_counts_references() {
        let mut u = Users::default();
        let a = u.intern("alice");
        assert_eq!(u.intern("alice"), a);
        let b = u.intern("bob");
        assert_ne!(a, b);
        u.release(a);
        assert_eq!(u.name(a), "alice");
        u.release(a);
        assert_eq!(u.len(), 1);
        assert_eq!(u.name(b), "bob");
    }
}
