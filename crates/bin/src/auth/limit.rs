//! Failed logins, counted and limited per user name and per client address.
//!
//! A request that presents credentials which fail (an unknown user or a wrong password) counts
//! one failure against its user name and one against its client's IP address. Once either has
//! [`Limiter::per_minute`] failures within the last minute, every request for that user, or
//! from that address, that presents credentials is answered 429 with `Retry-After` until the
//! oldest failure in the window is a minute old, without checking its password: a guesser
//! learns nothing and costs no argon2 verification. Requests without credentials (the first
//! request of a browser, or routes `*` may use) are not logins and are never limited.
//!
//! The window is a sliding one: each key keeps the times of its last `per_minute` failures. A
//! success does not clear them, so an attacker cannot interleave one known password to reset
//! the count. Keys are kept for a minute after their last failure and the table holds at most
//! [`MAX_KEYS`] of them; when it is full, keys whose window has passed are dropped first, and
//! then the table is emptied, so memory stays bounded whatever the attacker sends (at the
//! price of forgetting counts under such a flood).
//!
//! Limiting by user lets anyone who knows a user name lock that user out for a minute at a
//! time; that is the usual trade-off of per-account limits, and the reason the limit applies
//! per minute rather than until an operator intervenes.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// The window failures are counted in.
pub const WINDOW: Duration = Duration::from_secs(60);

/// The most keys (users and addresses) remembered.
pub const MAX_KEYS: usize = 100_000;

/// What failures are counted against.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Key {
    /// A user name, as the request gave it.
    User(String),
    /// A client's IP address.
    Addr(IpAddr),
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Key::User(name) => write!(f, "user {name}"),
            Key::Addr(addr) => write!(f, "address {addr}"),
        }
    }
}

/// Counts failed logins; see the module docs.
#[derive(Debug)]
pub struct Limiter {
    /// Failures allowed per key within [`WINDOW`]; 0 turns limiting off.
    per_minute: usize,
    /// The times of each key's last failures, oldest first, at most `per_minute` of them.
    failures: Mutex<HashMap<Key, VecDeque<Instant>>>,
}

impl Limiter {
    /// A limiter allowing `per_minute` failures per key (0: no limit).
    pub fn new(per_minute: usize) -> Limiter {
        Limiter { per_minute, failures: Mutex::new(HashMap::new()) }
    }

    /// The failures allowed per key and minute.
    pub fn per_minute(&self) -> usize {
        self.per_minute
    }

    /// If any of `keys` has used up its failures, which one and how long until it may try
    /// again.
    pub fn blocked(&self, keys: &[Key], now: Instant) -> Option<(Key, Duration)> {
        if self.per_minute == 0 {
            return None;
        }
        let failures = self.failures.lock().unwrap_or_else(PoisonError::into_inner);
        keys.iter()
            .filter_map(|key| {
                let times = failures.get(key)?;
                let oldest = *times.front()?;
                let free_at = oldest + WINDOW;
                (times.len() >= self.per_minute && free_at > now)
                    .then(|| (key.clone(), free_at - now))
            })
            .max_by_key(|(_, wait)| *wait)
    }

    /// Counts one failure against each of `keys`.
    pub fn failed(&self, keys: &[Key], now: Instant) {
        if self.per_minute == 0 {
            return;
        }
        let mut failures = self.failures.lock().unwrap_or_else(PoisonError::into_inner);
        if failures.len() + keys.len() > MAX_KEYS {
            failures.retain(|_, times| times.back().is_some_and(|t| now < *t + WINDOW));
            if failures.len() + keys.len() > MAX_KEYS {
                failures.clear();
            }
        }
        for key in keys {
            let times = failures.entry(key.clone()).or_default();
            while times.front().is_some_and(|t| now >= *t + WINDOW) {
                times.pop_front();
            }
            if times.len() >= self.per_minute {
                times.pop_front();
            }
            times.push_back(now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> Vec<Key> {
        vec![Key::User("app".into()), Key::Addr("192.0.2.7".parse().unwrap())]
    }

    #[test]
    fn blocks_after_the_allowed_failures_until_the_oldest_leaves_the_window() {
        let limiter = Limiter::new(3);
        let t0 = Instant::now();
        for s in 0..3 {
            assert_eq!(limiter.blocked(&keys(), t0), None);
            limiter.failed(&keys(), t0 + Duration::from_secs(s));
        }
        let now = t0 + Duration::from_secs(10);
        let (key, wait) = limiter.blocked(&keys(), now).expect("blocked after 3 failures");
        assert!(matches!(key, Key::User(_) | Key::Addr(_)));
        assert_eq!(wait, Duration::from_secs(50));
        // Once the first failure is a minute old, one more try is allowed.
        assert_eq!(limiter.blocked(&keys(), t0 + WINDOW), None);
        limiter.failed(&keys(), t0 + WINDOW);
        assert_eq!(
            limiter.blocked(&keys(), t0 + WINDOW).map(|(_, w)| w),
            Some(Duration::from_secs(1))
        );
    }

    #[test]
    fn keys_are_counted_apart() {
        let limiter = Limiter::new(2);
        let now = Instant::now();
        let mallory = Key::Addr("198.51.100.1".parse().unwrap());
        for user in ["a", "b"] {
            limiter.failed(&[Key::User(user.into()), mallory.clone()], now);
        }
        // The address is used up; each user has one failure left.
        assert_eq!(
            limiter.blocked(std::slice::from_ref(&mallory), now).map(|(k, _)| k),
            Some(mallory)
        );
        let elsewhere = Key::Addr("198.51.100.2".parse().unwrap());
        assert_eq!(limiter.blocked(&[Key::User("a".into()), elsewhere], now), None);
    }

    #[test]
    fn zero_turns_limiting_off() {
        let limiter = Limiter::new(0);
        let now = Instant::now();
        for _ in 0..100 {
            limiter.failed(&keys(), now);
        }
        assert_eq!(limiter.blocked(&keys(), now), None);
    }

    #[test]
    fn the_table_stays_bounded() {
        let limiter = Limiter::new(1);
        let now = Instant::now();
        for i in 0..(MAX_KEYS as u32 + 10) {
            limiter.failed(&[Key::Addr(IpAddr::from(i.to_be_bytes()))], now);
        }
        assert!(limiter.failures.lock().unwrap().len() <= MAX_KEYS);
    }
}
