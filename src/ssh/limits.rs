//! Concurrent session cap per identity (policy `grant.max_sessions`, like
//! Teleport's `max_session_per_connection` but across connections): a slot
//! is taken when a shell/exec channel is accepted and given back when its
//! session ends, whatever way it ends (the slot is released on drop).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Open shell/exec sessions per identity (`issuer:subject`).
#[derive(Debug, Default, Clone)]
pub struct SessionCount {
    open: Arc<Mutex<HashMap<String, u32>>>,
}

/// One open session's place in the count; released on drop.
#[derive(Debug)]
pub struct SessionSlot {
    open: Arc<Mutex<HashMap<String, u32>>>,
    key: String,
}

impl SessionCount {
    /// Take a slot for `key` unless `max` are already open; `Err(open)`
    /// says how many are.
    pub fn try_acquire(&self, key: &str, max: Option<u32>) -> Result<SessionSlot, u32> {
        let mut g = match self.open.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let n = g.entry(key.to_string()).or_insert(0);
        if let Some(m) = max
            && *n >= m
        {
            return Err(*n);
        }
        *n += 1;
        Ok(SessionSlot {
            open: Arc::clone(&self.open),
            key: key.to_string(),
        })
    }

    /// Sessions open for `key` now.
    pub fn open(&self, key: &str) -> u32 {
        let g = match self.open.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        g.get(key).copied().unwrap_or(0)
    }
}

impl Drop for SessionSlot {
    fn drop(&mut self) {
        let mut g = match self.open.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if let Some(n) = g.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                g.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_refuses_past_max_and_drop_gives_the_slot_back() {
        let c = SessionCount::default();
        let a = c.try_acquire("local:alice", Some(2)).unwrap();
        let b = c.try_acquire("local:alice", Some(2)).unwrap();
        assert_eq!(c.try_acquire("local:alice", Some(2)).unwrap_err(), 2);
        // Others are counted apart; no cap means no limit.
        let _o = c.try_acquire("local:bob", Some(1)).unwrap();
        let _u: Vec<_> = (0..50).map(|_| c.try_acquire("x", None).unwrap()).collect();
        drop(a);
        assert_eq!(c.open("local:alice"), 1);
        let _again = c.try_acquire("local:alice", Some(2)).unwrap();
        drop(b);
        drop(_again);
        assert_eq!(c.open("local:alice"), 0);
    }
}
