//! A model's sizes ([`Config`]): a view of its [`DecoderSpec`], which is
//! parsed once from GGUF metadata or an HF `config.json` (`crate::family`).

use serde::{Deserialize, Serialize};

use crate::family::DecoderSpec;

/// The sizes of a model, source-independent (see [`Config::from_spec`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Config {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f32,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
}

impl Config {
    /// Parameters of the model (embeddings, attention with grouped KV heads,
    /// SwiGLU MLP, untied head if any; norms left out): what the "auto"
    /// learning-rate rule sizes a model by.
    pub fn param_count(&self) -> u64 {
        let (h, kv) = (
            self.hidden_size as u64,
            (self.num_key_value_heads * self.head_dim) as u64,
        );
        let per_layer = 2 * h * h + 2 * h * kv + 3 * h * self.intermediate_size as u64;
        let embed = self.vocab_size as u64 * h;
        let head = if self.tie_word_embeddings { 0 } else { embed };
        embed + head + self.num_hidden_layers as u64 * per_layer
    }

    /// Number of query heads sharing one key/value head.
    pub fn n_rep(&self) -> usize {
        self.num_attention_heads / self.num_key_value_heads
    }

    /// The sizes of `spec`: the view of a [`DecoderSpec`] that callers
    /// sizing a model (token budgets, the "auto" learning rate, caches) read.
    /// The spec is the one parsed source; this holds nothing it does not.
    pub fn from_spec(spec: &DecoderSpec) -> Self {
        let d = &spec.dims;
        Config {
            vocab_size: d.vocab_size,
            hidden_size: d.hidden_size,
            intermediate_size: d.intermediate_size,
            num_hidden_layers: d.num_layers,
            num_attention_heads: d.num_heads,
            num_key_value_heads: d.num_kv_heads,
            head_dim: d.head_dim,
            rms_norm_eps: spec.norm.eps,
            rope_theta: spec.rope_full.theta,
            max_position_embeddings: d.max_position_embeddings,
            tie_word_embeddings: spec.tie_word_embeddings,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_is_the_spec_sizes() {
        let json = r#"{"architectures":["Qwen2ForCausalLM"],"vocab_size":10,"hidden_size":8,
            "intermediate_size":16,"num_hidden_layers":1,"num_attention_heads":2,
            "num_key_value_heads":1,"rms_norm_eps":1e-6,"rope_theta":1000000.0,
            "max_position_embeddings":64,"tie_word_embeddings":true}"#;
        let spec = DecoderSpec::from_hf_config(json).unwrap();
        let cfg = Config::from_spec(&spec);
        assert_eq!(
            cfg,
            Config {
                vocab_size: 10,
                hidden_size: 8,
                intermediate_size: 16,
                num_hidden_layers: 1,
                num_attention_heads: 2,
                num_key_value_heads: 1,
                head_dim: 4,
                rms_norm_eps: 1e-6,
                rope_theta: 1e6,
                max_position_embeddings: 64,
                tie_word_embeddings: true,
            }
        );
    }
}
