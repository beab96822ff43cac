//! Verification references: the provider's id for a verification → the number it went to.
//!
//! A Vonage Verify check (`/v2/verify/{request_id}`) or a Twilio check by
//! `VerificationSid` carries no number; the start response's id is remembered here so the
//! check can be counted against the number and its approval recorded as a conversion.
//! Bounded: entries expire, and past the ceiling the oldest half is dropped.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use crate::clock::Timestamp;
use crate::phone::Destination;

/// How long a reference is remembered by default (`store.verify_ref_ttl`): as long as the
/// longest-lived code of the presets' defaults (Vonage Verify v1's `pin_expiry` goes up to
/// an hour; a Verify v2 workflow of three 15-minute steps lasts 45 minutes), so a late
/// resend or check is still decided.
pub const TTL: Duration = Duration::from_secs(60 * 60);

/// The bounded, expiring map.
#[derive(Debug)]
pub struct VerifyRefs {
    map: Mutex<HashMap<String, (Destination, Timestamp)>>,
    max: usize,
    ttl: Duration,
}

impl VerifyRefs {
    /// A map holding at most `max` references, each for `ttl`.
    pub fn new(max: usize, ttl: Duration) -> VerifyRefs {
        VerifyRefs {
            map: Mutex::new(HashMap::new()),
            max: max.max(2),
            ttl,
        }
    }

    /// How long a reference is remembered.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Remembers `reference` → `dest` until `now + ttl`.
    pub fn insert(&self, reference: String, dest: Destination, now: Timestamp) {
        if reference.len() > 128 {
            return;
        }
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= self.max {
            map.retain(|_, (_, exp)| *exp > now);
            if map.len() >= self.max {
                let mut expiries: Vec<Timestamp> = map.values().map(|(_, e)| *e).collect();
                expiries.sort_unstable();
                let cut = expiries[expiries.len() / 2];
                map.retain(|_, (_, exp)| *exp > cut);
            }
        }
        map.insert(reference, (dest, now.add(self.ttl)));
    }

    /// The destination of a live reference.
    pub fn get(&self, reference: &str, now: Timestamp) -> Option<Destination> {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.get(reference)
            .filter(|(_, exp)| *exp > now)
            .map(|(d, _)| *d)
    }

    /// How many references are held.
    pub fn len(&self) -> usize {
        self.map.lock().map(|m| m.len()).unwrap_or(0)
    }

    /// Whether none are held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::phone::{normalize, NumberFormat};

    #[test]
    fn bounded_and_expiring() {
        let d = normalize("+447700900123", NumberFormat::E164, None).unwrap();
        let refs = VerifyRefs::new(10, TTL);
        let t0 = Timestamp::from_unix_secs(1_000);
        for i in 0..100 {
            refs.insert(format!("r{i}"), d, t0.add(Duration::from_secs(i)));
        }
        assert!(refs.len() <= 10);
        assert_eq!(refs.get("r99", t0.add(Duration::from_secs(100))), Some(d));
        assert_eq!(
            refs.get("r99", t0.add(TTL).add(Duration::from_secs(100))),
            None
        );
    }

    #[test]
    fn a_longer_ttl_keeps_references_longer() {
        let d = normalize("+447700900123", NumberFormat::E164, None).unwrap();
        let t0 = Timestamp::from_unix_secs(1_000);
        let three_hours = Duration::from_secs(3 * 3600);
        let refs = VerifyRefs::new(10, three_hours);
        assert_eq!(refs.ttl(), three_hours);
        refs.insert("r".into(), d, t0);
        let later = t0.add(TTL).add(Duration::from_secs(60));
        assert_eq!(refs.get("r", later), Some(d), "past the default hour");
        assert_eq!(refs.get("r", t0.add(three_hours)), None);
    }
}
