//! A token bucket in operations per minute, shared by the client (to stay under quota) and
//! the local service (to enforce `--ops-per-min`).

use std::time::{Duration, Instant};

/// Holds up to one minute's worth of operations and refills continuously.
#[derive(Debug)]
pub struct TokenBucket {
    capacity: f64,
    per_sec: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket allowing `per_minute` operations per minute (a minute's burst).
    #[must_use]
    pub fn per_minute(per_minute: u32) -> Self {
        let capacity = f64::from(per_minute.max(1));
        Self {
            capacity,
            per_sec: capacity / 60.0,
            tokens: capacity,
            last: Instant::now(),
        }
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + dt * self.per_sec).min(self.capacity);
        self.last = now;
    }

    /// Takes one token, or says how long until one is available.
    pub fn try_take(&mut self, now: Instant) -> Result<(), Duration> {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / self.per_sec))
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn bursts_a_minute_then_refills_at_the_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::per_minute(600);
        for _ in 0..600 {
            assert!(b.try_take(t0).is_ok());
        }
        let wait = b.try_take(t0).unwrap_err();
        assert!((wait.as_secs_f64() - 0.1).abs() < 1e-6, "{wait:?}");
        // One second later exactly ten more operations are allowed.
        let t1 = t0 + Duration::from_secs(1);
        let taken = (0..20).filter(|_| b.try_take(t1).is_ok()).count();
        assert_eq!(taken, 10);
    }
}
