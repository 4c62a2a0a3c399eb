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

    /// Bytes of f32 activations a training step saves per token for the
    /// backward, over all layers (docs/train.md, "Activations saved for the
    /// backward"): `4·hidden + 2·q_width + 2·kv_width + 2·intermediate`
    /// values per layer. The family extras (q/k norm inputs, post norms) and
    /// the LoRA `r` columns are left out: a lower bound within a few percent,
    /// which sizes the "auto" batch's token budget.
    pub fn tape_bytes_per_token(&self) -> u64 {
        let q = (self.num_attention_heads * self.head_dim) as u64;
        let kv = (self.num_key_value_heads * self.head_dim) as u64;
        let per_layer =
            4 * self.hidden_size as u64 + 2 * q + 2 * kv + 2 * self.intermediate_size as u64;
        per_layer * 4 * self.num_hidden_layers as u64
    }

    /// What "auto" hyperparameters read of the model's size.
    pub fn size(&self) -> hone_data::hparams::ModelSize {
        hone_data::hparams::ModelSize {
            params: self.param_count(),
            tape_bytes_per_token: self.tape_bytes_per_token(),
        }
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

    /// Qwen2.5-1.5B's shape: 1.54 B parameters and 3.1 MB of tape per token
    /// (docs/train.md's formula), which "auto" sizes the batch by.
    #[test]
    fn the_size_of_a_qwen_1_5b_shape() {
        let cfg = Config {
            vocab_size: 151_936,
            hidden_size: 1536,
            intermediate_size: 8960,
            num_hidden_layers: 28,
            num_attention_heads: 12,
            num_key_value_heads: 2,
            head_dim: 128,
            rms_norm_eps: 1e-6,
            rope_theta: 1e6,
            max_position_embeddings: 32768,
            tie_word_embeddings: true,
        };
        let size = cfg.size();
        assert_eq!(size.params, 1_543_569_408);
        // (4·1536 + 2·1536 + 2·256 + 2·8960) f32 values × 28 layers.
        assert_eq!(size.tape_bytes_per_token, 27_648 * 4 * 28);
    }
}
