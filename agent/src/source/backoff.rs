//! Retry timing of the kube source's lists and watches: exponential, capped,
//! with jitter, reset only after a quiet period.
use std::{hash::BuildHasher, time::Duration};

use kube::runtime::utils::Backoff;

/// Retry timing for failed lists and watches.
#[derive(Clone, Copy, Debug)]
pub struct BackoffConfig {
    pub initial: Duration,
    pub max: Duration,
    /// Start again from `initial` once no retry was needed for this long.
    pub reset_after: Duration,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        // Capped at a few seconds: after an API server restart the watches
        // must come back within seconds, not after a 30 s backoff built up
        // during the outage. Jitter spreads the agents of a cluster out.
        Self {
            initial: Duration::from_millis(500),
            max: Duration::from_secs(4),
            reset_after: Duration::from_secs(60),
        }
    }
}

/// Exponential backoff with jitter that resets by time, not by success.
///
/// kube-runtime's `StreamBackoff` calls `reset` on every successful item, and a
/// watcher emits `Init` (a success) before each list attempt, so a list refused
/// forever would otherwise be retried at the initial interval forever. Here `reset`
/// is ignored and the delay starts over only after `reset_after` without retries.
pub(super) struct Jittered {
    cfg: BackoffConfig,
    next: Duration,
    last: Option<std::time::Instant>,
    rng: std::collections::hash_map::RandomState,
    n: u64,
}

impl Jittered {
    pub(super) fn new(cfg: BackoffConfig) -> Self {
        Self {
            cfg,
            next: cfg.initial,
            last: None,
            rng: Default::default(),
            n: 0,
        }
    }
}

impl Iterator for Jittered {
    type Item = Duration;
    fn next(&mut self) -> Option<Duration> {
        let now = std::time::Instant::now();
        if self
            .last
            .is_some_and(|l| now.duration_since(l) > self.cfg.reset_after)
        {
            self.next = self.cfg.initial;
        }
        self.last = Some(now);
        let cur = self.next.min(self.cfg.max);
        self.next = (cur * 2).min(self.cfg.max);
        // Half fixed, half random: never sooner than half the nominal delay.
        self.n += 1;
        let r = (self.rng.hash_one(self.n) % 1000) as u32;
        Some(cur / 2 + cur / 2 * r / 1000)
    }
}

impl Backoff for Jittered {
    fn reset(&mut self) {
        // Deliberately nothing: see the type's docs.
    }
}
