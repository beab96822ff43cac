//! Sliding windows for the heuristics: a sum over the last `window` (ten slots, so the
//! window slides in tenths), and the distinct members seen in it (capped).
//!
//! Pure data structure; the stores hold one per key. A window whose newest slot is older
//! than the window holds nothing and may be dropped.

/// Slots per window.
const SLOTS: u64 = 10;
const N: usize = SLOTS as usize;

/// One key's window: 80 bytes when its sums fit in 32 bits and it holds at most one
/// member — the shape of nearly every window a flood creates (one per prefix or
/// neighbourhood). Larger member sets and sums (spend, in micro-units) move to the heap.
#[derive(Debug, Clone)]
pub struct Window {
    /// Slot width in ns (window / 10).
    slot_ns: u64,
    /// The absolute index of the newest slot the window was moved to.
    last: u64,
    /// Sums per slot, at `index % SLOTS`, while they fit (see `Extra::Wide`).
    counts: [u32; N],
    extra: Extra,
}

/// Distinct members with the time they were last seen (oldest dropped past the cap), and
/// the sums once one outgrows 32 bits.
#[derive(Debug, Clone, Default)]
enum Extra {
    #[default]
    None,
    One([(u64, u64); 1]),
    // Boxed, the Vec costs this enum 8 bytes instead of 24: the window stays at 80.
    #[allow(clippy::box_collection)]
    Many(Box<Vec<(u64, u64)>>),
    Wide(Box<Wide>),
}

#[derive(Debug, Clone, Default)]
struct Wide {
    counts: [u64; N],
    members: Vec<(u64, u64)>,
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
            last: 0,
            counts: [0; N],
            extra: Extra::None,
        }
    }

    /// Whether this window was made for `window_ns` (reloads may change it).
    pub fn has_length(&self, window_ns: u64) -> bool {
        self.slot_ns == (window_ns / SLOTS).max(1)
    }

    fn window_ns(&self) -> u64 {
        self.slot_ns * SLOTS
    }

    fn slot(&self, i: usize) -> u64 {
        match &self.extra {
            Extra::Wide(w) => w.counts[i],
            _ => u64::from(self.counts[i]),
        }
    }

    fn set_slot(&mut self, i: usize, v: u64) {
        if let Extra::Wide(w) = &mut self.extra {
            w.counts[i] = v;
            return;
        }
        match u32::try_from(v) {
            Ok(n) => self.counts[i] = n,
            Err(_) => {
                // A sum past 32 bits (spend in micro-units): the sums move to the heap.
                let mut wide = Wide {
                    counts: self.counts.map(u64::from),
                    members: self.members().to_vec(),
                };
                wide.counts[i] = v;
                self.extra = Extra::Wide(Box::new(wide));
            }
        }
    }

    fn total(&self) -> u64 {
        match &self.extra {
            Extra::Wide(w) => w.counts.iter().sum(),
            _ => self.counts.iter().map(|&c| u64::from(c)).sum(),
        }
    }

    fn members(&self) -> &[(u64, u64)] {
        match &self.extra {
            Extra::None => &[],
            Extra::One(one) => one,
            Extra::Many(v) => v,
            Extra::Wide(w) => &w.members,
        }
    }

    /// The members as a growable list (moves a single inline member to the heap).
    fn members_vec(&mut self) -> &mut Vec<(u64, u64)> {
        if matches!(self.extra, Extra::None | Extra::One(_)) {
            let v = self.members().to_vec();
            self.extra = Extra::Many(Box::new(v));
        }
        match &mut self.extra {
            Extra::Many(v) => v,
            Extra::Wide(w) => &mut w.members,
            Extra::None | Extra::One(_) => unreachable!("moved to the heap above"),
        }
    }

    fn retain_members(&mut self, horizon: u64) {
        match &mut self.extra {
            Extra::None => {}
            Extra::One([(_, seen)]) => {
                if *seen <= horizon {
                    self.extra = Extra::None;
                }
            }
            Extra::Many(v) => v.retain(|&(_, seen)| seen > horizon),
            Extra::Wide(w) => w.members.retain(|&(_, seen)| seen > horizon),
        }
    }

    /// Records `m` seen at `now`, dropping the oldest member past `cap`.
    fn see(&mut self, m: u64, now: u64, cap: usize) {
        match &mut self.extra {
            Extra::None => {
                self.extra = Extra::One([(m, now)]);
                return;
            }
            Extra::One([(x, seen)]) if *x == m => {
                *seen = now;
                return;
            }
            Extra::One(_) if cap <= 1 => {
                self.extra = Extra::One([(m, now)]);
                return;
            }
            _ => {}
        }
        let members = self.members_vec();
        match members.iter_mut().find(|(x, _)| *x == m) {
            Some(e) => e.1 = now,
            None => {
                if members.len() >= cap {
                    // Drop the oldest: the cap bounds memory per key.
                    if let Some(oldest) = members
                        .iter()
                        .enumerate()
                        .min_by_key(|(_, e)| e.1)
                        .map(|(i, _)| i)
                    {
                        members.swap_remove(oldest);
                    }
                }
                members.push((m, now));
            }
        }
    }

    /// Moves the window to `now`, clearing slots that slid out.
    fn advance(&mut self, now: u64) {
        let cur = now / self.slot_ns;
        if cur > self.last {
            let gap = (cur - self.last).min(SLOTS);
            for i in 1..=gap {
                let slot = ((self.last + i) % SLOTS) as usize;
                match &mut self.extra {
                    Extra::Wide(w) => w.counts[slot] = 0,
                    _ => self.counts[slot] = 0,
                }
            }
            self.last = cur;
        }
        self.retain_members(now.saturating_sub(self.window_ns()));
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
        let total = self.total() + amount;
        let members = self.members();
        let known = member.is_some_and(|m| members.iter().any(|&(x, _)| x == m));
        let distinct = members.len() as u64 + u64::from(member.is_some() && !known);
        let near = match (member, near) {
            (Some(m), Some(d)) => members
                .iter()
                .filter(|&&(x, _)| x != m && x.abs_diff(m) <= d)
                .count() as u64,
            _ => 0,
        };
        if commit {
            if in_window {
                let slot = ((now / self.slot_ns) % SLOTS) as usize;
                self.set_slot(slot, self.slot(slot).saturating_add(amount));
            }
            if let Some(m) = member {
                self.see(m, now, cap.max(1));
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
            let i = (idx % SLOTS) as usize;
            let held = self.slot(i);
            let take = left.min(held);
            self.set_slot(i, held - take);
            left -= take;
            if left == 0 {
                break;
            }
        }
    }

    /// Whether nothing in the window is recent any more: every slot still inside the
    /// window is empty and no member was seen within it.
    pub fn idle(&self, now: u64) -> bool {
        let cur = now / self.slot_ns;
        let horizon = now.saturating_sub(self.window_ns());
        let counted = (0..SLOTS)
            .map_while(|back| self.last.checked_sub(back))
            .take_while(|&idx| idx + SLOTS > cur)
            .any(|idx| self.slot((idx % SLOTS) as usize) > 0);
        !counted && self.members().iter().all(|&(_, seen)| seen <= horizon)
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
    fn a_flood_window_is_80_bytes_and_one_member_stays_inline() {
        assert_eq!(std::mem::size_of::<Window>(), 80);
        let mut w = Window::new(60 * S);
        w.apply(1_000 * S, 1, Some(7), 9, None, true);
        assert!(matches!(w.extra, Extra::One(_)));
        w.apply(1_000 * S, 1, Some(7), 9, None, true);
        assert!(matches!(w.extra, Extra::One(_)), "the same member again");
        let r = w.apply(1_001 * S, 1, Some(8), 9, Some(1), true);
        assert_eq!((r.total, r.distinct, r.near), (3, 2, 1));
        assert!(matches!(w.extra, Extra::Many(_)));
        // A cap of one replaces the member in place.
        let mut w = Window::new(60 * S);
        w.apply(1_000 * S, 1, Some(7), 1, None, true);
        w.apply(1_000 * S, 1, Some(8), 1, None, true);
        assert_eq!(w.members(), &[(8, 1_000 * S)]);
    }

    #[test]
    fn sums_past_32_bits_move_to_the_heap_exactly() {
        let mut w = Window::new(3_600 * S);
        let t = 10_000 * S;
        w.apply(t, 5, Some(1), 9, None, true);
        let big = 3_000_000_000u64;
        w.apply(t + S, big, None, 9, None, true);
        assert!(matches!(w.extra, Extra::One(_)), "{big} + 5 fits a slot");
        // A second one in the same slot does not.
        w.apply(t + 2 * S, big, None, 9, None, true);
        assert!(matches!(w.extra, Extra::Wide(_)));
        w.apply(t + 400 * S, big, None, 9, None, true);
        let r = w.apply(t + 401 * S, 0, None, 9, None, false);
        assert_eq!(r.total, 3 * big + 5);
        assert_eq!(r.distinct, 1, "members kept");
        w.take_back(t + 401 * S, big + 2);
        assert_eq!(
            w.apply(t + 401 * S, 0, None, 9, None, false).total,
            2 * big + 3
        );
        // Slid out like any other window.
        assert_eq!(w.apply(t + 4_000 * S, 0, None, 9, None, false).total, 0);
    }

    #[test]
    fn idle_once_nothing_inside_the_window() {
        let mut w = Window::new(100 * S);
        let t = 1_000 * S;
        w.apply(t, 1, None, 0, None, true);
        assert!(!w.idle(t + 50 * S));
        assert!(w.idle(t + 110 * S));
        // Only read, never written: holds nothing, idle at once.
        let mut r = Window::new(100 * S);
        r.apply(t, 1, None, 0, None, false);
        assert!(r.idle(t));
        // A member keeps it alive for the window.
        let mut m = Window::new(100 * S);
        m.apply(t, 0, Some(3), 9, None, true);
        assert!(!m.idle(t + 99 * S));
        assert!(m.idle(t + 100 * S));
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
