//! The one retry/backoff helper every outbound call uses (GitHub, Slack, AWS).

use std::future::Future;
use std::time::Duration;

/// Exponential backoff with full jitter, bounded in attempts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// Delay before the first retry (before jitter).
    pub initial: Duration,
    /// Upper bound of one delay.
    pub max: Duration,
    /// Total attempts including the first (1 = no retry).
    pub max_attempts: u32,
}

impl Default for Backoff {
    /// 200 ms doubling to 10 s, 5 attempts.
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(200),
            max: Duration::from_secs(10),
            max_attempts: 5,
        }
    }
}

impl Backoff {
    /// The ceiling of the delay after failed attempt `attempt` (1-based): initial × 2^(n-1),
    /// capped at `max`.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt.saturating_sub(1).min(20));
        self.initial.saturating_mul(factor).min(self.max)
    }

    /// A jittered delay in `[ceiling/2, ceiling]`.
    pub fn delay(&self, attempt: u32) -> Duration {
        let ceiling = self.ceiling(attempt);
        let half = ceiling / 2;
        half + half.mul_f64(rand::random::<f64>())
    }
}

/// What to do after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Permanent failure: give up now.
    Never,
    /// Retry after the policy's backoff.
    Backoff,
    /// Retry after exactly this long (a server's `Retry-After`), capped at the policy's `max`.
    After(Duration),
}

/// Runs `op` until it succeeds, `classify` says [`Retry::Never`], or attempts run out; returns
/// the last error then.
pub async fn retry<T, E, F, Fut, C>(policy: &Backoff, mut op: F, classify: C) -> Result<T, E>
where
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = Result<T, E>>,
    C: Fn(&E) -> Retry,
    E: std::fmt::Display,
{
    let mut attempt = 1;
    loop {
        match op(attempt).await {
            Ok(value) => return Ok(value),
            Err(err) => {
                let delay = match classify(&err) {
                    Retry::Never => return Err(err),
                    _ if attempt >= policy.max_attempts => return Err(err),
                    Retry::Backoff => policy.delay(attempt),
                    Retry::After(d) => d.min(policy.max),
                };
                tracing::warn!(attempt, ?delay, error = %err, "attempt failed, retrying");
                tokio::time::sleep(delay).await;
                attempt += 1;
            }
        }
    }
}

/// Parses an HTTP `Retry-After` header given in seconds.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[test]
    fn ceiling_doubles_and_caps() {
        let b = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
            max_attempts: 10,
        };
        assert_eq!(b.ceiling(1), Duration::from_millis(100));
        assert_eq!(b.ceiling(2), Duration::from_millis(200));
        assert_eq!(b.ceiling(4), Duration::from_millis(800));
        assert_eq!(b.ceiling(5), Duration::from_secs(1));
        assert_eq!(b.ceiling(99), Duration::from_secs(1));
        for n in 1..10 {
            let d = b.delay(n);
            assert!(d <= b.ceiling(n) && d >= b.ceiling(n) / 2);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn retries_transient_errors_until_success() {
        let calls = AtomicU32::new(0);
        let result: Result<u32, String> = retry(
            &Backoff::default(),
            |attempt| {
                calls.fetch_add(1, Ordering::SeqCst);
                async move {
                    if attempt < 3 {
                        Err("busy".to_owned())
                    } else {
                        Ok(attempt)
                    }
                }
            },
            |_| Retry::Backoff,
        )
        .await;
        assert_eq!(result.unwrap(), 3);
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn permanent_errors_and_exhaustion_stop_retrying() {
        let calls = AtomicU32::new(0);
        let result: Result<(), String> = retry(
            &Backoff::default(),
            |_| {
                calls.fetch_add(1, Ordering::SeqCst);
                async { Err("bad request".to_owned()) }
            },
            |_| Retry::Never,
        )
        .await;
        assert!(result.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 1);

        let calls = AtomicU32::new(0);
        let policy = Backoff {
            max_attempts: 3,
            ..Backoff::default()
        };
        let started = tokio::time::Instant::now();
        let result: Result<(), String> = retry(
            &policy,
            |_| {
                calls.fetch_add(1, Ordering::SeqCst);
                async { Err("429".to_owned()) }
            },
            |_| Retry::After(Duration::from_secs(2)),
        )
        .await;
        assert!(result.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        // Two waits of exactly the server's Retry-After.
        assert_eq!(started.elapsed(), Duration::from_secs(4));
    }

    #[test]
    fn retry_after_in_seconds() {
        assert_eq!(parse_retry_after(" 30 "), Some(Duration::from_secs(30)));
        assert_eq!(parse_retry_after("soon"), None);
    }
}
