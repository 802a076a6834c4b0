//! A small seeded generator (SplitMix64) and the distributions the simulation draws from.

use std::time::Duration;

/// SplitMix64: small, seeded, reproducible on every platform.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// Uniform in `lo..=hi`.
    pub fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi.saturating_sub(lo) + 1)
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    /// Uniform in `[0, 1)`.
    #[expect(
        clippy::cast_precision_loss,
        reason = "53 random bits into an f64 mantissa"
    )]
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1_u64 << 53) as f64
    }

    /// A standard normal draw (Box-Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.unit(); // (0, 1]
        let u2 = self.unit();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    /// Exponential with the given mean (the gaps of a Poisson process).
    pub fn exponential(&mut self, mean: Duration) -> Duration {
        Duration::from_secs_f64(-mean.as_secs_f64() * (1.0 - self.unit()).ln())
    }

    /// Log-normal with the given median and shape `sigma` (of the underlying normal).
    pub fn log_normal(&mut self, median: Duration, sigma: f64) -> Duration {
        Duration::from_secs_f64(median.as_secs_f64() * (sigma * self.normal()).exp())
    }

    /// Fisher-Yates.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = usize::try_from(self.below(i as u64 + 1)).unwrap_or(0);
            items.swap(i, j);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_are_reproducible_and_distributions_have_their_medians() {
        let (mut a, mut b) = (Rng::new(7), Rng::new(7));
        assert_eq!(
            (0..5).map(|_| a.next_u64()).collect::<Vec<_>>(),
            (0..5).map(|_| b.next_u64()).collect::<Vec<_>>()
        );
        let mut rng = Rng::new(1);
        let median = Duration::from_secs(600);
        let mut draws: Vec<Duration> = (0..20_001).map(|_| rng.log_normal(median, 0.5)).collect();
        draws.sort();
        let mid = draws[10_000].as_secs_f64();
        assert!((570.0..630.0).contains(&mid), "median {mid}");
        let mean: f64 = (0..20_000)
            .map(|_| rng.exponential(Duration::from_secs(100)).as_secs_f64())
            .sum::<f64>()
            / 20_000.0;
        assert!((95.0..105.0).contains(&mean), "mean {mean}");
    }
}
