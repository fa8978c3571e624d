//! Rate limiting of client actions: one token bucket per session, and the policy for a
//! session that keeps sending over it. Invariants kept here: a message beyond the budget is
//! dropped unprocessed; only the first drop of a run gets an answer (error 408), later ones
//! none, so a flood cannot make the server write a frame per message; once the dropped
//! messages outrun the refill by `ws.max_dropped_actions`, the session is closed (error 430,
//! close 1008). The bucket reads tokio's clock, so tests can pause time.

use tokio::time::Instant;

/// A token bucket over client actions. Only what changes per connection is kept here; the
/// bucket's size, refill rate and flood allowance are the same for every session and come
/// from [`BucketLimits`] on each check (issue 17: idle WebSocket memory).
#[derive(Debug)]
pub(super) struct TokenBucket {
    tokens: f64,
    last: Instant,
    /// Messages dropped, less the refill per second: how far the client is past what it
    /// could have sent.
    dropped: f64,
    /// Whether the current run of drops has been answered already.
    answered: bool,
}

/// The bucket's shape, the same for every session (from `ws.action_burst`,
/// `ws.actions_per_second` and `ws.max_dropped_actions`).
#[derive(Debug, Clone, Copy)]
pub(super) struct BucketLimits {
    capacity: f64,
    refill_per_second: f64,
    max_dropped: f64,
}

impl BucketLimits {
    pub(super) fn new(per_second: f64, burst: u32, max_dropped: u32) -> BucketLimits {
        BucketLimits {
            capacity: f64::from(burst.max(1)),
            refill_per_second: per_second.max(0.001),
            max_dropped: f64::from(max_dropped.max(1)),
        }
    }
}

/// What to do with one client message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    /// Within the budget: handle it.
    Allow,
    /// Over the budget, first of a run: drop it and say so (408).
    DropAndAnswer,
    /// Over the budget again: drop it without a word.
    DropSilently,
    /// Over the budget for too long: close the session (430).
    Close,
}

impl TokenBucket {
    /// A full bucket.
    pub(super) fn new(limits: BucketLimits) -> TokenBucket {
        TokenBucket {
            tokens: limits.capacity,
            last: Instant::now(),
            dropped: 0.0,
            answered: false,
        }
    }

    /// Takes one token if there is one, and says what to do with the message.
    pub(super) fn check(&mut self, limits: BucketLimits) -> Verdict {
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        let regained = elapsed * limits.refill_per_second;
        self.tokens = (self.tokens + regained).min(limits.capacity);
        self.dropped = (self.dropped - regained).max(0.0);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            self.answered = false;
            return Verdict::Allow;
        }
        self.dropped += 1.0;
        if self.dropped > limits.max_dropped {
            Verdict::Close
        } else if self.answered {
            Verdict::DropSilently
        } else {
            self.answered = true;
            Verdict::DropAndAnswer
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn a_run_of_drops_is_answered_once_and_a_sustained_flood_is_closed() {
        let limits = BucketLimits::new(10.0, 5, 20);
        let mut bucket = TokenBucket::new(limits);
        for _ in 0..5 {
            assert_eq!(bucket.check(limits), Verdict::Allow);
        }
        assert_eq!(bucket.check(limits), Verdict::DropAndAnswer);
        for _ in 0..19 {
            assert_eq!(bucket.check(limits), Verdict::DropSilently);
        }
        assert_eq!(bucket.check(limits), Verdict::Close);
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_slows_down_is_answered_again_and_never_closed() {
        let limits = BucketLimits::new(10.0, 1, 20);
        let mut bucket = TokenBucket::new(limits);
        for _ in 0..200 {
            // Twice the allowed rate: every other message is dropped, but the drops never
            // outrun the refill, so the session lives on; each run of drops is answered.
            assert_eq!(bucket.check(limits), Verdict::Allow);
            assert_eq!(bucket.check(limits), Verdict::DropAndAnswer);
            tokio::time::advance(Duration::from_millis(100)).await;
        }
    }
}
