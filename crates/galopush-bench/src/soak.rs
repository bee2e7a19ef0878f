//! Sampling a long run while it goes (`--sample`): every interval, the deliveries and their
//! latency in that interval, the server's resident memory and open files, and the bench's own
//! memory — what a soak watches for growth. Printed as each sample is taken and kept in the
//! report.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::fleet::Fleet;
use crate::system::{self, ServerProcess};

/// Sub-buckets per power of two: latencies are kept to within 1/8 (12.5%).
const SUB_BUCKETS: u64 = 8;
/// Buckets for every `u64` latency.
const BUCKETS: usize = 512;

/// Latencies of the deliveries since the last sample, in log-linear buckets: recording is one
/// relaxed add, so the terminals' receive path does not wait on the sampler. Bounded: 512
/// counters whatever the run's length.
#[derive(Debug)]
pub(crate) struct LatencyWindow {
    buckets: Box<[AtomicU64]>,
}

impl LatencyWindow {
    pub fn new() -> LatencyWindow {
        LatencyWindow {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// Counts one delivery with latency `us`.
    pub fn record(&self, us: u64) {
        self.buckets[bucket_of(us)].fetch_add(1, Ordering::Relaxed);
    }

    /// The window's p50, p99 and max (each the upper bound of its bucket), emptying it.
    fn take(&self) -> (u64, u64, u64) {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.swap(0, Ordering::Relaxed))
            .collect();
        let total: u64 = counts.iter().sum();
        let at = |quantile: f64| {
            let rank = ((total as f64 * quantile).ceil() as u64).max(1);
            let mut seen = 0;
            for (i, &count) in counts.iter().enumerate() {
                seen += count;
                if seen >= rank {
                    return upper_bound_of(i);
                }
            }
            0
        };
        if total == 0 {
            return (0, 0, 0);
        }
        (at(0.5), at(0.99), at(1.0))
    }
}

/// The bucket of `us`: exact below 8, then 8 buckets per power of two.
fn bucket_of(us: u64) -> usize {
    if us < SUB_BUCKETS {
        return us as usize;
    }
    let exponent = 63 - u64::from(us.leading_zeros());
    let sub = (us >> (exponent - 3)) & (SUB_BUCKETS - 1);
    ((exponent - 2) * SUB_BUCKETS + sub) as usize
}

/// The largest latency that falls in bucket `index`.
fn upper_bound_of(index: usize) -> u64 {
    let index = index as u64;
    if index < SUB_BUCKETS {
        return index;
    }
    let exponent = index / SUB_BUCKETS + 2;
    let sub = index % SUB_BUCKETS;
    let lower = (SUB_BUCKETS + sub) << (exponent - 3);
    lower.saturating_add((1u64 << (exponent - 3)) - 1)
}

/// One interval of a sampled run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Sample {
    /// Seconds since the first publish, at the end of the interval.
    pub at_seconds: f64,
    pub delivered_per_second: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
    pub server_rss_kib: Option<u64>,
    pub server_open_files: Option<u64>,
    pub bench_rss_kib: Option<u64>,
}

impl std::fmt::Display for Sample {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let or_dash = |v: Option<u64>| v.map_or("-".to_owned(), |v| v.to_string());
        write!(
            f,
            "{:>8.0} {:>10.0} {:>9.2} {:>9.2} {:>9.2} {:>12} {:>10} {:>12}",
            self.at_seconds,
            self.delivered_per_second,
            self.p50_us as f64 / 1000.0,
            self.p99_us as f64 / 1000.0,
            self.max_us as f64 / 1000.0,
            or_dash(self.server_rss_kib),
            or_dash(self.server_open_files),
            or_dash(self.bench_rss_kib),
        )
    }
}

/// The header of the samples' table, aligned with [`Sample`]'s lines.
pub const HEADER: &str =
    "  second deliveries/s   p50 ms    p99 ms    max ms  server KiB  server fds    bench KiB";

/// Takes a sample every `every` until `done`, printing each to stderr as it is taken.
pub(crate) async fn sample(
    fleet: Arc<Fleet>,
    server: Option<ServerProcess>,
    every: Duration,
    done: CancellationToken,
) -> Vec<Sample> {
    let Some(window) = fleet.window.as_ref() else {
        return Vec::new();
    };
    let start = Instant::now();
    let mut ticks = tokio::time::interval_at(start + every, every);
    let mut samples = Vec::new();
    let mut delivered_before = fleet.progress.delivered.load(Ordering::Relaxed);
    let mut last = start;
    eprintln!("{HEADER}");
    loop {
        tokio::select! {
            () = done.cancelled() => return samples,
            _ = ticks.tick() => {}
        }
        let now = Instant::now();
        let delivered = fleet.progress.delivered.load(Ordering::Relaxed);
        let (p50_us, p99_us, max_us) = window.take();
        let sample = Sample {
            at_seconds: (now - start).as_secs_f64(),
            delivered_per_second: (delivered - delivered_before) as f64
                / (now - last).as_secs_f64(),
            p50_us,
            p99_us,
            max_us,
            server_rss_kib: server.as_ref().and_then(ServerProcess::rss_kib),
            server_open_files: server.as_ref().and_then(ServerProcess::open_files),
            bench_rss_kib: system::own_rss_kib(),
        };
        eprintln!("{sample}");
        samples.push(sample);
        (delivered_before, last) = (delivered, now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_latency_falls_in_a_bucket_whose_bounds_hold_it() {
        for us in (0..5000).chain([65_535, 65_536, 1 << 40, u64::MAX]) {
            let bucket = bucket_of(us);
            assert!(bucket < BUCKETS, "{us}");
            assert!(upper_bound_of(bucket) >= us, "{us} above its bucket");
            if bucket > 0 {
                assert!(upper_bound_of(bucket - 1) < us, "{us} in too high a bucket");
            }
            assert!(
                upper_bound_of(bucket) - us <= us / 8,
                "{us}: bucket wider than 1/8"
            );
        }
    }

    #[test]
    fn a_window_reports_its_quantiles_and_empties() {
        let window = LatencyWindow::new();
        for us in 1..=100 {
            window.record(us * 1000);
        }
        let (p50, p99, max) = window.take();
        assert!((50_000..=57_000).contains(&p50), "p50 {p50}");
        assert!((99_000..=112_000).contains(&p99), "p99 {p99}");
        assert!((100_000..=113_000).contains(&max), "max {max}");
        assert_eq!(window.take(), (0, 0, 0));
    }
}
