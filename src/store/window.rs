//! Sliding windows for the heuristics: a sum over the last `window` (ten slots, so the
//! window slides in tenths), and the distinct members seen in it (capped).
//!
//! Pure data structure; the stores hold one per key. A window whose newest slot is older
//! than the window holds nothing and may be dropped.

/// Slots per window.
const SLOTS: u64 = 10;

/// One key's window.
#[derive(Debug, Clone, Default)]
pub struct Window {
    /// Slot width in ns (window / 10).
    slot_ns: u64,
    /// The absolute index of the newest slot written.
    last: u64,
    /// Sums per slot, at `index % SLOTS`.
    counts: [u64; SLOTS as usize],
    /// Distinct members with the time they were last seen, oldest dropped past the cap.
    members: Vec<(u64, u64)>,
    /// When anything was last added (ns).
    newest: u64,
}

/// What a window holds after an operation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reading {
    /// The sum over the window.
    pub total: u64,
    /// Distinct members in the window (at most the cap).
    pub distinct: u64,
    /// Distinct other members within the asked distance of the member.
    pub near: u64,
}

impl Window {
    /// A window of `window_ns`.
    pub fn new(window_ns: u64) -> Window {
        Window {
            slot_ns: (window_ns / SLOTS).max(1),
            ..Window::default()
        }
    }

    /// Whether this window was made for `window_ns` (reloads may change it).
    pub fn has_length(&self, window_ns: u64) -> bool {
        self.slot_ns == (window_ns / SLOTS).max(1)
    }

    fn window_ns(&self) -> u64 {
        self.slot_ns * SLOTS
    }

    /// Moves the window to `now`, clearing slots that slid out.
    fn advance(&mut self, now: u64) {
        let cur = now / self.slot_ns;
        if cur > self.last {
            let gap = (cur - self.last).min(SLOTS);
            for i in 1..=gap {
                self.counts[((self.last + i) % SLOTS) as usize] = 0;
            }
            self.last = cur;
        }
        let horizon = now.saturating_sub(self.window_ns());
        self.members.retain(|&(_, seen)| seen > horizon);
    }

    /// Reads the window as if `amount` and `member` were added at `now`; stores them when
    /// `commit`. `near` counts other members within that distance of `member`.
    pub fn apply(
        &mut self,
        now: u64,
        amount: u64,
        member: Option<u64>,
        cap: usize,
        near: Option<u64>,
        commit: bool,
    ) -> Reading {
        self.advance(now);
        // Replay input may go back in time a little: older than the window, it is ignored.
        let in_window = self.last - now / self.slot_ns < SLOTS;
        let total = self.counts.iter().sum::<u64>() + amount;
        let known = member.is_some_and(|m| self.members.iter().any(|&(x, _)| x == m));
        let distinct = self.members.len() as u64 + u64::from(member.is_some() && !known);
        let near = match (member, near) {
            (Some(m), Some(d)) => self
                .members
                .iter()
                .filter(|&&(x, _)| x != m && x.abs_diff(m) <= d)
                .count() as u64,
            _ => 0,
        };
        if commit {
            self.newest = self.newest.max(now);
            if in_window {
                let slot = ((now / self.slot_ns) % SLOTS) as usize;
                self.counts[slot] = self.counts[slot].saturating_add(amount);
            }
            if let Some(m) = member {
                match self.members.iter_mut().find(|(x, _)| *x == m) {
                    Some(e) => e.1 = now,
                    None => {
                        if self.members.len() >= cap.max(1) {
                            // Drop the oldest: the cap bounds memory per key.
                            if let Some(oldest) = self
                                .members
                                .iter()
                                .enumerate()
                                .min_by_key(|(_, e)| e.1)
                                .map(|(i, _)| i)
                            {
                                self.members.swap_remove(oldest);
                            }
                        }
                        self.members.push((m, now));
                    }
                }
            }
        }
        Reading {
            total,
            distinct: distinct.min(cap.max(1) as u64 + 1),
            near,
        }
    }

    /// Takes `amount` back off the sum (what [`Window::apply`] added at about `now`):
    /// from the slot of `now`, then from older slots if that one holds less.
    pub fn take_back(&mut self, now: u64, amount: u64) {
        self.advance(now);
        let mut left = amount;
        for back in 0..SLOTS {
            let Some(idx) = self.last.checked_sub(back) else {
                break;
            };
            let slot = &mut self.counts[(idx % SLOTS) as usize];
            let take = left.min(*slot);
            *slot -= take;
            left -= take;
            if left == 0 {
                break;
            }
        }
    }

    /// Whether nothing in the window is recent any more.
    pub fn idle(&self, now: u64) -> bool {
        self.newest.saturating_add(self.window_ns()) <= now
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn sums_slide_out() {
        let mut w = Window::new(100 * S);
        let t0 = 1_000 * S;
        for i in 0..10 {
            w.apply(t0 + i * 10 * S, 1, None, 0, None, true);
        }
        assert_eq!(w.apply(t0 + 95 * S, 0, None, 0, None, false).total, 10);
        // 100 s after the first event, its slot has slid out.
        assert_eq!(w.apply(t0 + 100 * S, 0, None, 0, None, false).total, 9);
        assert_eq!(w.apply(t0 + 500 * S, 0, None, 0, None, false).total, 0);
        assert!(w.idle(t0 + 500 * S));
    }

    #[test]
    fn take_back_undoes_a_reservation() {
        let mut w = Window::new(100 * S);
        let t = 1_000 * S;
        w.apply(t, 5, None, 0, None, true);
        w.apply(t + 20 * S, 3, None, 0, None, true);
        // Given back a little later, in the next slot: taken from the older slots.
        w.take_back(t + 21 * S, 4);
        assert_eq!(w.apply(t + 21 * S, 0, None, 0, None, false).total, 4);
        w.take_back(t + 21 * S, 100);
        assert_eq!(w.apply(t + 21 * S, 0, None, 0, None, false).total, 0);
    }

    #[test]
    fn distinct_members_capped_and_near() {
        let mut w = Window::new(60 * S);
        let t = 1_000 * S;
        for m in [100, 101, 150, 100] {
            w.apply(t, 1, Some(m), 10, None, true);
        }
        let r = w.apply(t, 1, Some(102), 10, Some(5), false);
        assert_eq!((r.total, r.distinct, r.near), (5, 4, 2));
        for m in 0..100 {
            w.apply(t, 1, Some(1_000 + m), 10, None, true);
        }
        assert!(w.apply(t, 0, None, 10, None, false).distinct <= 11);
        // Members expire with the window.
        assert_eq!(w.apply(t + 61 * S, 0, Some(5), 10, None, false).distinct, 1);
    }
}
