//! Rate limiting of client actions: one token bucket per session. Invariant kept here: a
//! message beyond the budget is dropped with error 408 and the connection stays open; the
//! bucket reads tokio's clock, so tests can pause time.

use tokio::time::Instant;

/// A token bucket over client actions.
#[derive(Debug)]
pub(super) struct TokenBucket {
    capacity: f64,
    tokens: f64,
    refill_per_second: f64,
    last: Instant,
}

impl TokenBucket {
    pub(super) fn new(per_second: f64, burst: u32) -> TokenBucket {
        TokenBucket {
            capacity: f64::from(burst.max(1)),
            tokens: f64::from(burst.max(1)),
            refill_per_second: per_second.max(0.001),
            last: Instant::now(),
        }
    }

    /// Takes one token if there is one.
    pub(super) fn try_take(&mut self) -> bool {
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.refill_per_second).min(self.capacity);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}
