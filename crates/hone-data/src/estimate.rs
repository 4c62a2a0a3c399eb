//! What a run will take: steps, tokens, wall time here, and cost compared
//! with hosted fine-tuning, in the spirit of seed 002's ROI exercise.

use serde::{Deserialize, Serialize};

use crate::hparams::ResolvedHyperparameters;
use crate::types::Method;

/// Training throughput assumed when no `hone bench train` result exists:
/// tokens per second for LoRA on SmolLM2-135M on the 2-core reference
/// machine. The first spike (docs/architecture.md) measured 136-214 tokens/s (batch 4×256) depending on
/// kernels; we take the conservative end, rounded down.
pub const DEFAULT_TOKENS_PER_SECOND: f64 = 130.0;
/// A DPO step runs the policy forward and backward on two sequences and a
/// reference forward on both: about 1.5× the work per token of SFT (forward
/// ≈ backward for LoRA, where frozen weights get no gradient).
pub const DPO_WORK_FACTOR: f64 = 1.5;

/// A hosted price to compare against (seed 001's table).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostedPrice {
    pub model: String,
    /// US dollars per 1M billed training tokens.
    pub usd_per_million_tokens: f64,
}

/// Seed 001: $3 per 1M training tokens for gpt-4o-mini, $25 for gpt-4o.
pub fn default_hosted_prices() -> Vec<HostedPrice> {
    vec![
        HostedPrice {
            model: "gpt-4o-mini".into(),
            usd_per_million_tokens: 3.0,
        },
        HostedPrice {
            model: "gpt-4o".into(),
            usd_per_million_tokens: 25.0,
        },
    ]
}

/// The measured (or assumed) training speed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Throughput {
    pub tokens_per_second: f64,
    /// Where the figure comes from, for the report.
    pub source: String,
}

impl Default for Throughput {
    fn default() -> Self {
        Throughput {
            tokens_per_second: DEFAULT_TOKENS_PER_SECOND,
            source: format!(
                "default {DEFAULT_TOKENS_PER_SECOND} tokens/s (no `hone bench train` result found)"
            ),
        }
    }
}

/// What to estimate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EstimateInput {
    pub method: Method,
    pub n_examples: usize,
    /// All tokens per epoch (from the token stats).
    pub total_tokens: u64,
    /// Loss tokens per epoch.
    pub trained_tokens: u64,
    pub hyperparameters: ResolvedHyperparameters,
    pub throughput: Throughput,
    /// Local compute price, US dollars per hour.
    pub price_per_hour: f64,
    pub hosted_prices: Vec<HostedPrice>,
}

/// One hosted comparison line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostedCost {
    pub model: String,
    pub usd_per_million_tokens: f64,
    pub usd: f64,
}

/// The estimate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Estimate {
    pub n_epochs: u32,
    pub batch_size: u32,
    pub steps_per_epoch: u64,
    pub total_steps: u64,
    /// Loss tokens × epochs.
    pub trained_tokens_total: u64,
    /// Every token processed × epochs: what hosted services bill, and what
    /// local training time depends on.
    pub billed_tokens_total: u64,
    pub tokens_per_second: f64,
    pub throughput_source: String,
    pub wall_seconds: f64,
    pub price_per_hour: f64,
    pub local_usd: f64,
    pub hosted: Vec<HostedCost>,
}

/// Steps, tokens, time and cost for a run.
pub fn estimate(input: &EstimateInput) -> Estimate {
    let hp = &input.hyperparameters;
    let epochs = u64::from(hp.n_epochs);
    let batch = u64::from(hp.batch_size.max(1));
    let steps_per_epoch = (input.n_examples as u64).div_ceil(batch);
    let billed = input.total_tokens * epochs;
    let work_factor = match input.method {
        Method::Sft => 1.0,
        Method::Dpo => DPO_WORK_FACTOR,
    };
    let tps = input.throughput.tokens_per_second;
    let wall_seconds = if tps > 0.0 {
        billed as f64 * work_factor / tps
    } else {
        f64::INFINITY
    };
    let local_usd = wall_seconds / 3600.0 * input.price_per_hour;
    let hosted = input
        .hosted_prices
        .iter()
        .map(|p| HostedCost {
            model: p.model.clone(),
            usd_per_million_tokens: p.usd_per_million_tokens,
            usd: billed as f64 / 1e6 * p.usd_per_million_tokens,
        })
        .collect();
    Estimate {
        n_epochs: hp.n_epochs,
        batch_size: hp.batch_size,
        steps_per_epoch,
        total_steps: steps_per_epoch * epochs,
        trained_tokens_total: input.trained_tokens * epochs,
        billed_tokens_total: billed,
        tokens_per_second: tps,
        throughput_source: input.throughput.source.clone(),
        wall_seconds,
        price_per_hour: input.price_per_hour,
        local_usd,
        hosted,
    }
}

/// Reads `tokens_per_second` from a `hone bench train` JSON result.
/// Accepts `{"tokens_per_second": x}` at the top level or under `"train"`.
pub fn throughput_from_bench_json(text: &str, source: &str) -> Option<Throughput> {
    let v: serde_json::Value = serde_json::from_str(text).ok()?;
    let tps = v
        .get("tokens_per_second")
        .or_else(|| v.get("train")?.get("tokens_per_second"))?
        .as_f64()
        .filter(|t| t.is_finite() && *t > 0.0)?;
    Some(Throughput {
        tokens_per_second: tps,
        source: format!("measured {tps:.1} tokens/s ({source})"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hparams::{resolve_auto, AutoInput, Overrides};

    #[test]
    fn one_million_tokens_three_epochs() {
        let hp = resolve_auto(
            &AutoInput {
                method: Method::Sft,
                n_examples: 1000,
                mean_tokens_per_example: None,
                model: None,
            },
            &Overrides::default(),
        )
        .unwrap();
        let e = estimate(&EstimateInput {
            method: Method::Sft,
            n_examples: 1000,
            total_tokens: 1_000_000,
            trained_tokens: 400_000,
            hyperparameters: hp,
            throughput: Throughput {
                tokens_per_second: 1000.0,
                source: "test".into(),
            },
            price_per_hour: 0.36,
            hosted_prices: default_hosted_prices(),
        });
        assert_eq!(
            (e.n_epochs, e.batch_size, e.steps_per_epoch, e.total_steps),
            (3, 8, 125, 375)
        );
        assert_eq!(e.billed_tokens_total, 3_000_000);
        assert_eq!(e.trained_tokens_total, 1_200_000);
        assert!((e.wall_seconds - 3000.0).abs() < 1e-9);
        assert!((e.local_usd - 0.3).abs() < 1e-9);
        assert!((e.hosted[0].usd - 9.0).abs() < 1e-9);
        assert!((e.hosted[1].usd - 75.0).abs() < 1e-9);
    }

    #[test]
    fn bench_json_shapes() {
        assert_eq!(
            throughput_from_bench_json(r#"{"tokens_per_second": 210.5}"#, "x")
                .unwrap()
                .tokens_per_second,
            210.5
        );
        assert_eq!(
            throughput_from_bench_json(r#"{"train": {"tokens_per_second": 99}}"#, "x")
                .unwrap()
                .tokens_per_second,
            99.0
        );
        assert!(throughput_from_bench_json(r#"{"tokens_per_second": -1}"#, "x").is_none());
        assert!(throughput_from_bench_json("not json", "x").is_none());
    }
}
