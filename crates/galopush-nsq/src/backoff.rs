//! Reconnection back-off: exponential from an initial delay up to a maximum, with jitter,
//! reset after a success.

use std::time::Duration;

/// Exponential back-off state for one connection.
#[derive(Debug)]
pub(crate) struct Backoff {
    initial: Duration,
    max: Duration,
    failures: u32,
}

impl Backoff {
    pub(crate) fn new(initial: Duration, max: Duration) -> Backoff {
        Backoff {
            initial,
            max,
            failures: 0,
        }
    }

    /// Records a failure and returns how long to wait before the next attempt: the
    /// exponential delay for this failure count, jittered down by up to half.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let factor = 1u32 << self.failures.min(20);
        self.failures = self.failures.saturating_add(1);
        let delay = self.initial.saturating_mul(factor).min(self.max);
        let half = delay / 2;
        half + half.mul_f64(fastrand::f64())
    }

    /// Records a success: the next failure starts from the initial delay again.
    pub(crate) fn reset(&mut self) {
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
        let mut backoff = Backoff::new(initial, max);
        let mut ceiling = initial;
        for _ in 0..12 {
            let delay = backoff.next_delay();
            assert!(delay <= ceiling, "{delay:?} > {ceiling:?}");
            assert!(delay >= ceiling / 2, "{delay:?} < half of {ceiling:?}");
            ceiling = (ceiling * 2).min(max);
        }
        backoff.reset();
        assert!(backoff.next_delay() <= initial);
    }

    #[test]
    fn survives_many_failures() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
        for _ in 0..10_000 {
            assert!(backoff.next_delay() <= Duration::from_secs(10));
        }
    }
}
