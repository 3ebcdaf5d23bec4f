//! The byte budget for incomplete packets across all connections: a
//! connection's read buffer beyond a small free allowance is charged to
//! it, so clients that each send half of a large packet cannot together
//! hold more than `max_incomplete_bytes`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Read-buffer bytes a connection holds without charging the budget
/// (so small packets never touch the shared counter).
pub(super) const FREE_PER_CONNECTION: usize = 64 * 1024;

/// Bytes charged across all connections, and the most allowed.
#[derive(Debug)]
pub(super) struct Budget {
    used: AtomicUsize,
    max: usize,
}

impl Budget {
    pub fn new(max: usize) -> Budget {
        Budget {
            used: AtomicUsize::new(0),
            max,
        }
    }

    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    pub fn max(&self) -> usize {
        self.max
    }
}

/// What one connection has charged; given back when it is dropped.
pub(super) struct Held {
    budget: Arc<Budget>,
    charged: usize,
}

impl Held {
    pub fn new(budget: Arc<Budget>) -> Held {
        Held { budget, charged: 0 }
    }

    /// Accounts for a read buffer of `capacity` bytes; false (and nothing
    /// more charged) when that would take the budget over its maximum.
    pub fn resize(&mut self, capacity: usize) -> bool {
        let want = capacity.saturating_sub(FREE_PER_CONNECTION);
        if want <= self.charged {
            self.budget
                .used
                .fetch_sub(self.charged - want, Ordering::Relaxed);
            self.charged = want;
            return true;
        }
        let more = want - self.charged;
        let before = self.budget.used.fetch_add(more, Ordering::Relaxed);
        if before + more > self.budget.max {
            self.budget.used.fetch_sub(more, Ordering::Relaxed);
            return false;
        }
        self.charged = want;
        true
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.charged, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charges_beyond_the_allowance_and_gives_back() {
        let budget = Arc::new(Budget::new(1 << 20));
        let mut a = Held::new(budget.clone());
        let mut b = Held::new(budget.clone());
        assert!(a.resize(FREE_PER_CONNECTION));
        assert_eq!(budget.used(), 0, "the allowance is free");
        assert!(a.resize(FREE_PER_CONNECTION + (700 << 10)));
        assert!(!b.resize(FREE_PER_CONNECTION + (400 << 10)), "over 1 MiB");
        assert_eq!(budget.used(), 700 << 10, "a refusal charges nothing");
        assert!(b.resize(FREE_PER_CONNECTION + (300 << 10)));
        assert!(a.resize(1024), "shrinking gives back");
        assert_eq!(budget.used(), 300 << 10);
        drop(b);
        assert_eq!(budget.used(), 0);
    }
}
