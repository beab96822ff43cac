//! The generic cell rate algorithm, as pure arithmetic on nanoseconds.
//!
//! A key's whole state is its theoretical arrival time (TAT). With emission interval `T`
//! (period / rate) and burst `B`, a request of cost `c` passes when
//! `max(TAT, now) + c·T − now ≤ B·T`, and then `TAT` becomes `max(TAT, now) + c·T`.
//! A key whose TAT is in the past is indistinguishable from a fresh one, so idle keys
//! can be dropped at any time without changing a decision. Redis runs the same
//! arithmetic in Lua (see `store::redis`).

use std::time::Duration;

/// What a passing check leaves behind, for the RateLimit headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct State {
    /// Requests that would still pass right now.
    pub remaining: u32,
    /// Time until the bucket is full again.
    pub reset: Duration,
}

/// The result of one GCRA step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Passes; store `new_tat`.
    Pass {
        /// The TAT to store.
        new_tat: u64,
        /// Remaining and reset.
        state: State,
    },
    /// Refused; a retry after this long would pass (for `cost > burst`, never: the
    /// time given is one full refill).
    Refuse {
        /// Time until it would pass.
        retry_after: Duration,
    },
}

/// The longest burst window (`interval × burst`) in nanoseconds: about 292 years, so that
/// `now + tau` cannot saturate (which would let every request pass) before 2262.
const MAX_TAU: u64 = u64::MAX / 2;

/// The emission interval and burst window (`tau`) actually used, in nanoseconds.
fn limits(interval: u64, burst: u32) -> (u64, u64) {
    let mut interval = interval.max(1);
    let mut tau = interval.saturating_mul(u64::from(burst));
    if tau > MAX_TAU {
        interval = MAX_TAU / u64::from(burst);
        tau = interval * u64::from(burst);
    }
    (interval, tau)
}

/// The stored `tat` as this rate reads it: a TAT further ahead than one burst window
/// (`now + tau`) cannot come from this rate — a slower one left it before a reload — and
/// means an empty bucket now, refilling at this rate, not the old rate's wait. A caller
/// that commits stores the settled value even when the step refuses, so that the refill
/// starts.
pub fn settle(tat: u64, now: u64, interval: u64, burst: u32) -> u64 {
    tat.min(now.saturating_add(limits(interval, burst).1))
}

/// One GCRA step for stored `tat` (0 = fresh) at `now`, all in nanoseconds.
pub fn step(tat: u64, now: u64, interval: u64, burst: u32, cost: u32) -> Step {
    let (interval, tau) = limits(interval, burst);
    let tat = settle(tat, now, interval, burst);
    let increment = interval.saturating_mul(u64::from(cost));
    let base = tat.max(now);
    let new_tat = base.saturating_add(increment);
    let horizon = now.saturating_add(tau);
    if new_tat <= horizon {
        let remaining = (horizon - new_tat) / interval;
        Step::Pass {
            new_tat,
            state: State {
                remaining: u32::try_from(remaining).unwrap_or(u32::MAX),
                reset: Duration::from_nanos(new_tat - now),
            },
        }
    } else if cost > burst {
        Step::Refuse {
            retry_after: Duration::from_nanos(tau),
        }
    } else {
        Step::Refuse {
            retry_after: Duration::from_nanos(new_tat - horizon),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn pass(s: Step) -> u64 {
        match s {
            Step::Pass { new_tat, .. } => new_tat,
            Step::Refuse { retry_after } => panic!("refused, retry after {retry_after:?}"),
        }
    }

    #[test]
    fn burst_then_refill() {
        // 1 per 60 s, burst 3.
        let t = 60 * S;
        let now = 1_000 * S;
        let mut tat = 0;
        for _ in 0..3 {
            tat = pass(step(tat, now, t, 3, 1));
        }
        assert_eq!(
            step(tat, now, t, 3, 1),
            Step::Refuse {
                retry_after: Duration::from_secs(60)
            }
        );
        // Exactly at the retry-after it passes, one nanosecond before it does not.
        assert!(matches!(
            step(tat, now + 60 * S - 1, t, 3, 1),
            Step::Refuse { .. }
        ));
        assert!(matches!(
            step(tat, now + 60 * S, t, 3, 1),
            Step::Pass { .. }
        ));
    }

    #[test]
    fn remaining_and_reset() {
        let t = 10 * S;
        let Step::Pass { state, .. } = step(0, 100 * S, t, 5, 1) else {
            panic!()
        };
        assert_eq!(state.remaining, 4);
        assert_eq!(state.reset, Duration::from_secs(10));
    }

    #[test]
    fn cost_and_oversized_cost() {
        let t = S;
        let tat = pass(step(0, 0, t, 5, 5));
        assert!(matches!(step(tat, 0, t, 5, 1), Step::Refuse { .. }));
        assert_eq!(
            step(0, 0, t, 5, 6),
            Step::Refuse {
                retry_after: Duration::from_secs(5)
            }
        );
    }

    /// A period of centuries (`rate = "1/1000000d"`) overflows nanoseconds: the limit
    /// still lets `burst` through and then refuses, instead of saturating into a horizon
    /// every request fits under.
    #[test]
    fn huge_periods_still_refuse() {
        let now = 1_795_341_600 * S;
        // 1/1000000d (saturated), 1/200000d, and a third of the range.
        for interval in [u64::MAX, 200_000 * 86_400 * S, u64::MAX / 3] {
            for burst in [1, 2, 5] {
                let mut tat = 0;
                for i in 0..burst {
                    tat = match step(tat, now + u64::from(i), interval, burst, 1) {
                        Step::Pass { new_tat, .. } => new_tat,
                        other => panic!("{interval} {burst}: request {i} refused: {other:?}"),
                    };
                }
                for later in [0, 3_600 * S, 365 * 86_400 * S] {
                    assert!(
                        matches!(
                            step(tat, now + later, interval, burst, 1),
                            Step::Refuse { .. }
                        ),
                        "{interval} {burst}: request {burst} passed {later} ns later"
                    );
                }
            }
        }
    }

    #[test]
    fn idle_key_equals_fresh_key() {
        let t = 7 * S;
        let old_tat = 50 * S;
        let now = 100 * S;
        assert_eq!(step(old_tat, now, t, 2, 1), step(0, now, t, 2, 1));
    }
}
