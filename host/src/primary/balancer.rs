//! Which worker gets the next connection: round-robin over the ready ones
//! (Node's SCHED_RR); starting, draining and exited workers are skipped.

/// Picks the next index, after `last`, for which `ready` holds.
pub struct RoundRobin {
    next: usize,
}

impl RoundRobin {
    pub fn new() -> Self {
        Self { next: 0 }
    }

    pub fn pick(&mut self, len: usize, ready: impl Fn(usize) -> bool) -> Option<usize> {
        (0..len)
            .map(|i| (self.next + i) % len)
            .find(|&i| ready(i))
            .inspect(|&i| {
                self.next = (i + 1) % len;
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_turns_and_skips_the_unready() {
        let mut rr = RoundRobin::new();
        let picks: Vec<_> = (0..6).map(|_| rr.pick(3, |_| true).unwrap()).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
        let picks: Vec<_> = (0..4).map(|_| rr.pick(3, |i| i != 1).unwrap()).collect();
        assert_eq!(picks, [0, 2, 0, 2]);
        assert_eq!(rr.pick(3, |_| false), None);
    }
}
