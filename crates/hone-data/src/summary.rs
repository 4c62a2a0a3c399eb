//! Summary statistics of per-example counts (messages, tokens).

use serde::{Deserialize, Serialize};

/// min, max, mean, median, p10 and p90 of a list of counts. Percentiles use
/// the nearest-rank method on the sorted values, so every figure is a value
/// that actually occurs in the data. All zero for an empty list.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Distribution {
    pub count: usize,
    pub min: u64,
    pub max: u64,
    pub mean: f64,
    pub median: u64,
    pub p10: u64,
    pub p90: u64,
    pub sum: u64,
}

impl Distribution {
    /// Summarises `values` (sorted in place).
    pub fn from_values(values: &mut [u64]) -> Self {
        if values.is_empty() {
            return Distribution::default();
        }
        values.sort_unstable();
        let sum: u64 = values.iter().sum();
        Distribution {
            count: values.len(),
            min: values[0],
            max: values[values.len() - 1],
            mean: sum as f64 / values.len() as f64,
            median: nearest_rank(values, 0.5),
            p10: nearest_rank(values, 0.1),
            p90: nearest_rank(values, 0.9),
            sum,
        }
    }
}

/// The nearest-rank percentile of sorted, non-empty `values`.
fn nearest_rank(values: &[u64], q: f64) -> u64 {
    let rank = (q * values.len() as f64).ceil() as usize;
    values[rank.clamp(1, values.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_to_ten() {
        let mut v: Vec<u64> = (1..=10).rev().collect();
        let d = Distribution::from_values(&mut v);
        assert_eq!(
            (d.min, d.max, d.median, d.p10, d.p90, d.sum),
            (1, 10, 5, 1, 9, 55)
        );
        assert!((d.mean - 5.5).abs() < 1e-12);
    }

    #[test]
    fn empty_is_zero() {
        assert_eq!(Distribution::from_values(&mut []), Distribution::default());
    }
}
