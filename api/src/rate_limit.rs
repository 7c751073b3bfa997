//! A token bucket per API key, in this process's memory.
//!
//! Each key's bucket holds at most one second's worth of requests and refills continuously at
//! the configured rate, so a client may burst up to the rate and then sustain it. The limit is
//! per process: behind a load balancer with N API replicas a key may make up to N times the
//! rate. That is deliberate: a shared counter would cost a round trip to PostgreSQL (or a new
//! store) on every request, and the limit exists to stop one runaway client from starving the
//! others on a replica, not to meter usage exactly.
//!
//! Arithmetic is on integers: a token is as many units as the refill period has nanoseconds,
//! and every elapsed nanosecond adds `burst` units, so no rounding creeps in at any rate.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

const NANOS_PER_SEC: u128 = 1_000_000_000;

/// Idle buckets are dropped this often. A bucket idle for a second is full again, which is
/// exactly what a missing bucket means, so dropping it changes no decision.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

pub struct RateLimiter {
    /// Tokens a full bucket holds, and how many come back per `period`.
    burst: u32,
    /// The refill period in nanoseconds: one token is this many units.
    period_nanos: u128,
    state: Mutex<State>,
}

struct State {
    buckets: HashMap<String, Bucket>,
    last_prune: Option<Instant>,
}

struct Bucket {
    /// Tokens left, in units of 1/period_nanos of a token.
    units: u128,
    refilled_at: Instant,
}

/// The request must wait; `retry_after_secs` (whole seconds, at least 1) is when the next
/// token will be there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limited {
    pub retry_after_secs: u64,
}

impl RateLimiter {
    /// `per_sec` requests per second per key, with a burst of as many; 0 allows everything.
    pub fn new(per_sec: u32) -> Self {
        Self::per_period(per_sec, Duration::from_secs(1))
    }

    /// `burst` requests per `period` per key, with a burst of as many; used for the slower
    /// limit on failed client-secret checks (per minute).
    pub fn per_period(burst: u32, period: Duration) -> Self {
        Self {
            burst,
            period_nanos: period.as_nanos().max(1),
            state: Mutex::new(State {
                buckets: HashMap::new(),
                last_prune: None,
            }),
        }
    }

    pub fn is_enabled(&self) -> bool {
        self.burst > 0
    }

    /// Takes one token from `key`'s bucket, or says how long to wait for one.
    pub fn check(&self, key: &str, now: Instant) -> Result<(), Limited> {
        self.decide(key, now, true)
    }

    /// Whether `key`'s bucket has a token, without taking it: a call is refused while the
    /// bucket is empty, and only a failure (see [`RateLimiter::check`]) takes a token.
    pub fn peek(&self, key: &str, now: Instant) -> Result<(), Limited> {
        self.decide(key, now, false)
    }

    fn decide(&self, key: &str, now: Instant, take: bool) -> Result<(), Limited> {
        if !self.is_enabled() {
            return Ok(());
        }
        let token = self.period_nanos;
        let rate = u128::from(self.burst);
        let capacity = rate * token;
        // A panic elsewhere while the lock was held cannot leave a bucket half-updated (each
        // update is a plain store), so a poisoned lock is still safe to use.
        let mut guard = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let state = &mut *guard;
        state.prune(now, token);
        let Some(bucket) = state.buckets.get_mut(key) else {
            // A key not seen lately starts full, less this request's token.
            if take {
                state.buckets.insert(
                    key.to_owned(),
                    Bucket {
                        units: capacity - token,
                        refilled_at: now,
                    },
                );
            }
            return Ok(());
        };
        let elapsed = now.saturating_duration_since(bucket.refilled_at).as_nanos();
        bucket.units = bucket
            .units
            .saturating_add(elapsed.saturating_mul(rate))
            .min(capacity);
        bucket.refilled_at = now.max(bucket.refilled_at);
        if bucket.units >= token {
            if take {
                bucket.units -= token;
            }
            return Ok(());
        }
        let wait_nanos = (token - bucket.units).div_ceil(rate);
        let secs = wait_nanos.div_ceil(NANOS_PER_SEC).max(1);
        Err(Limited {
            retry_after_secs: u64::try_from(secs).unwrap_or(u64::MAX),
        })
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .buckets
            .len()
    }
}

impl State {
    /// Drops buckets idle for a whole period: they are full again, as a missing one is.
    fn prune(&mut self, now: Instant, period_nanos: u128) {
        let due = self
            .last_prune
            .is_none_or(|at| now.saturating_duration_since(at) >= PRUNE_EVERY);
        if !due {
            return;
        }
        self.last_prune = Some(now);
        let full_after = Duration::from_nanos(u64::try_from(period_nanos).unwrap_or(u64::MAX));
        self.buckets
            .retain(|_, b| now.saturating_duration_since(b.refilled_at) < full_after);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_of_the_rate_then_one_per_interval() {
        let limiter = RateLimiter::new(5);
        let t0 = Instant::now();
        for i in 0..5 {
            assert_eq!(limiter.check("key_a", t0), Ok(()), "request {i}");
        }
        assert_eq!(
            limiter.check("key_a", t0),
            Err(Limited {
                retry_after_secs: 1
            })
        );
        // One token comes back every 200 ms, not before.
        assert!(limiter
            .check("key_a", t0 + Duration::from_millis(199))
            .is_err());
        assert_eq!(
            limiter.check("key_a", t0 + Duration::from_millis(200)),
            Ok(())
        );
        assert!(limiter
            .check("key_a", t0 + Duration::from_millis(200))
            .is_err());
        // A long pause refills to the burst, never beyond it.
        let later = t0 + Duration::from_secs(60);
        for _ in 0..5 {
            assert_eq!(limiter.check("key_a", later), Ok(()));
        }
        assert!(limiter.check("key_a", later).is_err());
    }

    #[test]
    fn keys_have_their_own_buckets() {
        let limiter = RateLimiter::new(1);
        let t0 = Instant::now();
        assert_eq!(limiter.check("key_a", t0), Ok(()));
        assert!(limiter.check("key_a", t0).is_err());
        assert_eq!(limiter.check("key_b", t0), Ok(()));
    }

    #[test]
    fn zero_turns_the_limit_off() {
        let limiter = RateLimiter::new(0);
        let t0 = Instant::now();
        assert!(!limiter.is_enabled());
        for _ in 0..10_000 {
            assert_eq!(limiter.check("key_a", t0), Ok(()));
        }
        assert_eq!(limiter.tracked(), 0);
    }

    #[test]
    fn high_rates_do_not_overflow_and_retry_after_is_whole_seconds() {
        let limiter = RateLimiter::new(u32::MAX);
        let t0 = Instant::now();
        assert_eq!(limiter.check("key_a", t0), Ok(()));
        assert_eq!(
            limiter.check("key_a", t0 + Duration::from_secs(365 * 24 * 3600)),
            Ok(())
        );
        let slow = RateLimiter::new(1);
        assert_eq!(slow.check("key_a", t0), Ok(()));
        assert_eq!(
            slow.check("key_a", t0 + Duration::from_millis(1)),
            Err(Limited {
                retry_after_secs: 1
            })
        );
    }

    #[test]
    fn per_minute_buckets_and_peeking_takes_nothing() {
        let limiter = RateLimiter::per_period(3, Duration::from_secs(60));
        let t0 = Instant::now();
        for _ in 0..10 {
            assert_eq!(limiter.peek("ip", t0), Ok(()));
        }
        for _ in 0..3 {
            assert_eq!(limiter.check("ip", t0), Ok(()));
        }
        assert_eq!(
            limiter.peek("ip", t0),
            Err(Limited {
                retry_after_secs: 20
            })
        );
        assert!(limiter.check("ip", t0).is_err());
        assert_eq!(limiter.peek("other", t0), Ok(()));
        // One failure is forgiven every 20 s.
        assert_eq!(limiter.peek("ip", t0 + Duration::from_secs(20)), Ok(()));
        // Idle for a whole minute, the bucket is dropped (it would be full).
        let later = t0 + Duration::from_secs(20) + PRUNE_EVERY;
        assert_eq!(limiter.check("x", later), Ok(()));
        assert_eq!(limiter.tracked(), 1);
    }

    #[test]
    fn idle_buckets_are_dropped() {
        let limiter = RateLimiter::new(10);
        let t0 = Instant::now();
        assert_eq!(limiter.check("key_a", t0), Ok(()));
        assert_eq!(limiter.check("key_b", t0), Ok(()));
        assert_eq!(limiter.tracked(), 2);
        assert_eq!(limiter.check("key_c", t0 + PRUNE_EVERY), Ok(()));
        assert_eq!(limiter.tracked(), 1);
    }
}
