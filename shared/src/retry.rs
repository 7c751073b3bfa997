//! The one backoff schedule every retry in paystream follows (docs/webhooks.md, docs/acquirer.md):
//! delay(n) = base * 2^(n-1) + uniform(0, base), for attempts n = 1.. up to a maximum.
//! With base = 1 s that is 1-2 s, 2-3 s, 4-5 s, 8-9 s. In-process retries feed it to backon;
//! nak delays and webhook retries call [`RetrySchedule::delay_for_attempt`] directly.

use std::time::Duration;

use rand::Rng;

/// Attempts in one in-process retry budget, and webhook delivery attempts in total.
pub const MAX_ATTEMPTS: u32 = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetrySchedule {
    base: Duration,
    max_attempts: u32,
}

impl RetrySchedule {
    pub fn new(base: Duration, max_attempts: u32) -> Self {
        Self { base, max_attempts }
    }

    pub fn base(&self) -> Duration {
        self.base
    }

    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// The wait after failed attempt `attempt` (1-based) before the next one.
    pub fn delay_for_attempt(&self, attempt: u32) -> Duration {
        let jitter_nanos = rand::thread_rng().gen_range(0..=self.base.as_nanos().max(1));
        self.deterministic_part(attempt)
            + Duration::from_nanos(u64::try_from(jitter_nanos).unwrap_or(u64::MAX))
    }

    /// base * 2^(attempt-1), saturating instead of overflowing.
    pub fn deterministic_part(&self, attempt: u32) -> Duration {
        let exp = attempt.saturating_sub(1).min(30);
        self.base.saturating_mul(1u32 << exp)
    }

    /// The delays between attempts: `max_attempts - 1` of them, for backon.
    pub fn delays(&self) -> RetryDelays {
        RetryDelays {
            schedule: *self,
            next_attempt: 1,
        }
    }
}

/// An iterator of delays; backon accepts any `Iterator<Item = Duration>` as a backoff.
#[derive(Debug, Clone)]
pub struct RetryDelays {
    schedule: RetrySchedule,
    next_attempt: u32,
}

impl Iterator for RetryDelays {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        if self.next_attempt >= self.schedule.max_attempts {
            return None;
        }
        let delay = self.schedule.delay_for_attempt(self.next_attempt);
        self.next_attempt += 1;
        Some(delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contract_schedule_with_one_second_base() {
        let s = RetrySchedule::new(Duration::from_secs(1), MAX_ATTEMPTS);
        let bounds = [(1, 2), (2, 3), (4, 5), (8, 9)];
        for (attempt, (lo, hi)) in (1..).zip(bounds) {
            for _ in 0..50 {
                let d = s.delay_for_attempt(attempt);
                assert!(
                    d >= Duration::from_secs(lo) && d <= Duration::from_secs(hi),
                    "attempt {attempt}: {d:?}"
                );
            }
        }
    }

    #[test]
    fn five_attempts_mean_four_delays() {
        let s = RetrySchedule::new(Duration::from_millis(10), MAX_ATTEMPTS);
        let delays: Vec<_> = s.delays().collect();
        assert_eq!(delays.len(), 4);
        assert!(delays
            .windows(2)
            .all(|w| w[1] > w[0] - Duration::from_millis(10)));
        assert_eq!(s.max_attempts(), 5);
        assert_eq!(s.base(), Duration::from_millis(10));
    }

    #[test]
    fn huge_attempt_numbers_saturate() {
        let s = RetrySchedule::new(Duration::from_secs(1), 100);
        assert!(s.deterministic_part(99) >= Duration::from_secs(1 << 30));
        let zero = RetrySchedule::new(Duration::ZERO, 3);
        assert!(zero.delay_for_attempt(2) <= Duration::from_nanos(1));
    }
}
