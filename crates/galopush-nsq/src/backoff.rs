//! Exponential back-off with jitter: the one policy behind every retry in galopush — this
//! client's reconnections, the server's REQ delays and consumption pauses on the NSQ bus, the
//! embedded bus's requeues and webhook retries, and a comet's rejoins to a router. It lives here
//! because this crate is the lowest one that needs it; the server uses it from here.

use std::time::Duration;

/// Waits that double from `initial` up to `max`, each jittered down by up to half so that many
/// clients failing together do not retry together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
}

impl Backoff {
    /// `initial` doubling up to `max`.
    pub const fn new(initial: Duration, max: Duration) -> Backoff {
        Backoff { initial, max }
    }

    /// The wait after `failures` failures in a row (0 for the first), before jitter:
    /// `initial × 2^failures`, at most `max`.
    pub fn ceiling(&self, failures: u32) -> Duration {
        self.initial
            .saturating_mul(1 << failures.min(20))
            .min(self.max)
    }

    /// The wait after `failures` failures in a row: the [`ceiling`](Self::ceiling) jittered
    /// down by up to half.
    pub fn delay(&self, failures: u32) -> Duration {
        let half = self.ceiling(failures) / 2;
        half + half.mul_f64(fastrand::f64())
    }

    /// A failure count starting at none, for one connection or one retried job.
    pub fn retries(self) -> Retries {
        Retries {
            backoff: self,
            failures: 0,
        }
    }
}

/// A [`Backoff`] with the count of failures in a row.
#[derive(Debug, Clone)]
pub struct Retries {
    backoff: Backoff,
    failures: u32,
}

impl Retries {
    /// Records a failure and returns how long to wait before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.backoff.delay(self.failures);
        self.failures = self.failures.saturating_add(1);
        delay
    }

    /// Records a success: the next failure starts from the initial wait again.
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_maximum_and_resets() {
        let initial = Duration::from_millis(100);
        let max = Duration::from_secs(10);
        let mut retries = Backoff::new(initial, max).retries();
        let mut ceiling = initial;
        for _ in 0..12 {
            let delay = retries.next_delay();
            assert!(delay <= ceiling, "{delay:?} > {ceiling:?}");
            assert!(delay >= ceiling / 2, "{delay:?} < half of {ceiling:?}");
            ceiling = (ceiling * 2).min(max);
        }
        retries.reset();
        assert!(retries.next_delay() <= initial);
    }

    #[test]
    fn ceilings_double_then_stay_at_the_maximum() {
        let backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
        assert_eq!(backoff.ceiling(0), Duration::from_millis(100));
        assert_eq!(backoff.ceiling(1), Duration::from_millis(200));
        assert_eq!(backoff.ceiling(6), Duration::from_secs(6400) / 1000);
        assert_eq!(backoff.ceiling(7), Duration::from_secs(10));
        assert_eq!(backoff.ceiling(u32::MAX), Duration::from_secs(10));
    }

    #[test]
    fn survives_many_failures() {
        let mut retries =
            Backoff::new(Duration::from_millis(100), Duration::from_secs(10)).retries();
        for _ in 0..10_000 {
            assert!(retries.next_delay() <= Duration::from_secs(10));
        }
    }
}
