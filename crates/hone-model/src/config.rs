//! Model hyperparameters, read from GGUF metadata (`llama.*`) or an HF
//! `config.json`, and converted into one internal [`Config`].

use std::collections::HashMap;

use candle_core::quantized::gguf_file::Value;
use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result, SUPPORTED_ARCHITECTURES};

/// The internal, source-independent configuration of a Llama-family model.
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
    /// Checks the invariants the forward pass relies on, so a bad file
    /// fails at load with a message instead of a shape error later.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(ModelError::Config(m));
        if self.num_attention_heads == 0 || self.num_key_value_heads == 0 {
            return bad("head counts must be positive".into());
        }
        if !self
            .num_attention_heads
            .is_multiple_of(self.num_key_value_heads)
        {
            return bad(format!(
                "num_attention_heads {} is not a multiple of num_key_value_heads {}",
                self.num_attention_heads, self.num_key_value_heads
            ));
        }
        if self.head_dim == 0 || !self.head_dim.is_multiple_of(2) {
            return bad(format!(
                "head_dim {} must be even and positive",
                self.head_dim
            ));
        }
        if self.hidden_size == 0 || self.vocab_size == 0 || self.num_hidden_layers == 0 {
            return bad("hidden_size, vocab_size and num_hidden_layers must be positive".into());
        }
        Ok(())
    }

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

    /// Reads the `llama.*` keys of a GGUF file.
    pub fn from_gguf_metadata(md: &HashMap<String, Value>) -> Result<Self> {
        let arch = md
            .get("general.architecture")
            .and_then(|v| v.to_string().ok())
            .ok_or_else(|| ModelError::MissingMetadata("general.architecture".into()))?;
        if !SUPPORTED_ARCHITECTURES.contains(&arch.as_str()) {
            return Err(ModelError::UnsupportedArchitecture {
                found: arch.clone(),
            });
        }
        let p = |k: &str| format!("{arch}.{k}");
        let usize_key = |k: &str| -> Result<usize> {
            let key = p(k);
            let v = md
                .get(&key)
                .ok_or_else(|| ModelError::MissingMetadata(key.clone()))?;
            to_u64(v)
                .map(|x| x as usize)
                .ok_or_else(|| ModelError::Config(format!("`{key}` is not an integer")))
        };
        let f64_key = |k: &str| -> Option<f64> { md.get(&p(k)).and_then(to_f64) };
        let hidden = usize_key("embedding_length")?;
        let heads = usize_key("attention.head_count")?;
        let kv_heads = usize_key("attention.head_count_kv").unwrap_or(heads);
        let head_dim = usize_key("rope.dimension_count")
            .or_else(|_| usize_key("attention.key_length"))
            .unwrap_or(hidden / heads.max(1));
        let vocab = usize_key("vocab_size").or_else(|_| {
            md.get("tokenizer.ggml.tokens")
                .and_then(|v| v.to_vec().ok())
                .map(|v| v.len())
                .ok_or_else(|| ModelError::MissingMetadata(p("vocab_size")))
        })?;
        let cfg = Config {
            vocab_size: vocab,
            hidden_size: hidden,
            intermediate_size: usize_key("feed_forward_length")?,
            num_hidden_layers: usize_key("block_count")?,
            num_attention_heads: heads,
            num_key_value_heads: kv_heads,
            head_dim,
            rms_norm_eps: f64_key("attention.layer_norm_rms_epsilon").unwrap_or(1e-5),
            rope_theta: f64_key("rope.freq_base").unwrap_or(10_000.0) as f32,
            max_position_embeddings: usize_key("context_length").unwrap_or(2048),
            // Whether `output.weight` exists decides this at load time.
            tie_word_embeddings: true,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Parses an HF `config.json`.
    pub fn from_hf_json(text: &str) -> Result<Self> {
        let hf: HfConfig = serde_json::from_str(text)
            .map_err(|e| ModelError::Config(format!("config.json: {e}")))?;
        hf.into_config()
    }
}

fn to_u64(v: &Value) -> Option<u64> {
    match v {
        Value::U8(x) => Some(*x as u64),
        Value::U16(x) => Some(*x as u64),
        Value::U32(x) => Some(*x as u64),
        Value::U64(x) => Some(*x),
        Value::I8(x) if *x >= 0 => Some(*x as u64),
        Value::I16(x) if *x >= 0 => Some(*x as u64),
        Value::I32(x) if *x >= 0 => Some(*x as u64),
        Value::I64(x) if *x >= 0 => Some(*x as u64),
        _ => None,
    }
}

fn to_f64(v: &Value) -> Option<f64> {
    match v {
        Value::F32(x) => Some(*x as f64),
        Value::F64(x) => Some(*x),
        other => to_u64(other).map(|x| x as f64),
    }
}

/// The subset of HF's `LlamaConfig` we read.
#[derive(Debug, Clone, Deserialize)]
pub struct HfConfig {
    #[serde(default)]
    pub model_type: Option<String>,
    #[serde(default)]
    pub architectures: Option<Vec<String>>,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    #[serde(default)]
    pub head_dim: Option<usize>,
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    #[serde(default = "default_theta")]
    pub rope_theta: f32,
    #[serde(default = "default_ctx")]
    pub max_position_embeddings: usize,
    #[serde(default)]
    pub tie_word_embeddings: bool,
}

fn default_eps() -> f64 {
    1e-5
}
fn default_theta() -> f32 {
    10_000.0
}
fn default_ctx() -> usize {
    2048
}

impl HfConfig {
    pub fn into_config(self) -> Result<Config> {
        let arch = self
            .model_type
            .clone()
            .or_else(|| self.architectures.as_ref().and_then(|a| a.first().cloned()))
            .unwrap_or_else(|| "unknown".into());
        let is_llama = arch == "llama" || arch == "LlamaForCausalLM";
        if !is_llama {
            return Err(ModelError::UnsupportedArchitecture { found: arch });
        }
        let heads = self.num_attention_heads;
        let cfg = Config {
            vocab_size: self.vocab_size,
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            num_hidden_layers: self.num_hidden_layers,
            num_attention_heads: heads,
            num_key_value_heads: self.num_key_value_heads.unwrap_or(heads),
            head_dim: self.head_dim.unwrap_or(self.hidden_size / heads.max(1)),
            rms_norm_eps: self.rms_norm_eps,
            rope_theta: self.rope_theta,
            max_position_embeddings: self.max_position_embeddings,
            tie_word_embeddings: self.tie_word_embeddings,
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hf_config_rejects_other_architectures() {
        let json = r#"{"model_type":"mistral","vocab_size":10,"hidden_size":8,
            "intermediate_size":16,"num_hidden_layers":1,"num_attention_heads":2}"#;
        let err = Config::from_hf_json(json).unwrap_err().to_string();
        assert!(err.contains("mistral") && err.contains("llama"), "{err}");
    }

    #[test]
    fn gguf_metadata_needs_the_llama_keys() {
        let mut md = HashMap::new();
        md.insert(
            "general.architecture".to_string(),
            Value::String("llama".into()),
        );
        let err = Config::from_gguf_metadata(&md).unwrap_err().to_string();
        assert!(err.contains("llama.embedding_length"), "{err}");
    }
}
