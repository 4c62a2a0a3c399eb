//! Text embeddings: a sentence-transformers BERT model (such as
//! all-MiniLM-L6-v2) run with candle-transformers' BERT, mean-pooled over
//! the attention mask and L2-normalised — the three modules a
//! sentence-transformers `modules.json` lists for these models.
//!
//! It is opened through the registry door like the chat models
//! ([`ResolvedModel::open_embedding`]), but it is a different kind of model:
//! it turns text into vectors for `hone serve`'s `/v1/embeddings` and for
//! retrieval (`hone-retrieve`), and it cannot chat or train
//! ([`refuse_for_chat`] says so when a front end tries).
//!
//! A model directory holds `config.json` (BERT), `model.safetensors`,
//! `tokenizer.json`, and optionally `sentence_bert_config.json` (the
//! `max_seq_length`, 256 for all-MiniLM-L6-v2) and `1_Pooling/config.json`
//! (which must ask for mean pooling: the only pooling implemented).

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config as BertConfig};
use tokenizers::Tokenizer;

use crate::error::{ModelError, Result};
use crate::registry::{ModelSource, ResolvedModel};

pub mod testing;
#[cfg(test)]
mod tests;

/// Texts embedded per forward pass: bounds the padded `[batch, tokens,
/// hidden]` activations (64 x 256 x 384 f32 is 25 MiB for MiniLM).
pub const BATCH_SIZE: usize = 64;

/// The sentence-transformers file with the model's `max_seq_length`.
const SENTENCE_BERT_CONFIG: &str = "sentence_bert_config.json";
/// The sentence-transformers pooling module's configuration.
const POOLING_CONFIG: &str = "1_Pooling/config.json";

/// What to do with a text longer than [`EmbeddingModel::max_tokens`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overflow {
    /// Refuse it with [`ModelError::ContextOverflow`] (the API's choice: the
    /// caller learns that the vector would not cover the whole text).
    Error,
    /// Keep the first `max_tokens` tokens, as sentence-transformers does;
    /// the caller is told how many texts were cut ([`Embeddings::truncated`]).
    Truncate,
}

/// The vectors of a batch of texts, in input order, with what it cost.
#[derive(Debug, Clone, PartialEq)]
pub struct Embeddings {
    /// One unit-length vector of [`EmbeddingModel::dim`] floats per input.
    pub vectors: Vec<Vec<f32>>,
    /// Tokens fed to the model, `[CLS]` and `[SEP]` included.
    pub tokens: usize,
    /// Inputs cut to `max_tokens` (always 0 with [`Overflow::Error`]).
    pub truncated: usize,
}

/// A loaded embedding model.
pub struct EmbeddingModel {
    /// The id to show (see [`ResolvedModel::id`]).
    pub id: String,
    bert: BertModel,
    tokenizer: Tokenizer,
    dim: usize,
    vocab_size: usize,
    max_tokens: usize,
    cls: u32,
    sep: u32,
}

impl std::fmt::Debug for EmbeddingModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddingModel")
            .field("id", &self.id)
            .field("dim", &self.dim)
            .field("max_tokens", &self.max_tokens)
            .finish_non_exhaustive()
    }
}

/// Whether `path` is an embedding model's directory: a Hugging Face
/// directory whose `config.json` describes a BERT (`model_type: bert`).
pub fn is_embedding_model(path: &Path) -> bool {
    read_bert_config(path).is_ok()
}

/// The error a chat front end (`hone chat`, `train`, `eval`, `serve
/// --model`) gives for an embedding model, instead of "unsupported
/// architecture BertModel".
pub fn refuse_for_chat(id: &str) -> ModelError {
    ModelError::Unsupported(format!(
        "'{id}' is an embedding model (BERT): it turns text into vectors for \
         `hone serve --embedding-model` and `hone chat --rag`, and cannot chat, \
         generate or be fine-tuned; choose a chat model with --model"
    ))
}

impl ResolvedModel {
    /// Loads an embedding model (an HF directory with a BERT `config.json`);
    /// a GGUF file or a decoder model is refused with a clear error.
    pub fn open_embedding(&self) -> Result<EmbeddingModel> {
        let dir = match &self.source {
            ModelSource::HfDir(dir) => dir,
            ModelSource::Gguf(_) => return Err(not_embedding(&self.id)),
        };
        let config = read_bert_config(dir).map_err(|e| match e {
            ModelError::Unsupported(_) => not_embedding(&self.id),
            other => other,
        })?;
        check_pooling(dir)?;
        let tokenizer = load_tokenizer(dir)?;
        let special = |t: &str| {
            tokenizer.token_to_id(t).ok_or_else(|| {
                ModelError::Text(format!("{}: no {t} token in tokenizer.json", dir.display()))
            })
        };
        let (cls, sep) = (special("[CLS]")?, special("[SEP]")?);
        let max_tokens = read_max_seq_length(dir)?
            .unwrap_or(config.max_position_embeddings)
            .min(config.max_position_embeddings);
        let weights = dir.join(crate::load::HF_WEIGHTS_FILE);
        let bytes = std::fs::read(&weights).map_err(|source| ModelError::Io {
            path: weights.clone(),
            source,
        })?;
        let vb = VarBuilder::from_buffered_safetensors(bytes, DType::F32, &Device::Cpu)?;
        let bert = BertModel::load(vb, &config)?;
        Ok(EmbeddingModel {
            id: self.id.clone(),
            bert,
            tokenizer,
            dim: config.hidden_size,
            vocab_size: config.vocab_size,
            max_tokens,
            cls,
            sep,
        })
    }
}

fn not_embedding(id: &str) -> ModelError {
    ModelError::Unsupported(format!(
        "'{id}' is not an embedding model: embeddings need a sentence-transformers \
         BERT directory (config.json with model_type \"bert\", model.safetensors, \
         tokenizer.json), such as `hone model fetch all-minilm-l6-v2`"
    ))
}

fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).map_err(|source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| ModelError::Config(format!("{}: {e}", path.display())))
}

/// The BERT configuration, or `Unsupported` when `dir` holds another model.
fn read_bert_config(dir: &Path) -> Result<BertConfig> {
    let path = dir.join("config.json");
    if !path.is_file() {
        return Err(ModelError::Unsupported(format!(
            "{} is missing",
            path.display()
        )));
    }
    let value = read_json(&path)?;
    if value.get("model_type").and_then(|t| t.as_str()) != Some("bert") {
        return Err(ModelError::Unsupported(format!(
            "{} is not a BERT config",
            path.display()
        )));
    }
    serde_json::from_value(value)
        .map_err(|e| ModelError::Config(format!("{}: {e}", path.display())))
}

/// Refuses a pooling module other than mean pooling (CLS or max pooling
/// would give different vectors, silently).
fn check_pooling(dir: &Path) -> Result<()> {
    let path = dir.join(POOLING_CONFIG);
    if !path.is_file() {
        return Ok(());
    }
    let value = read_json(&path)?;
    let flag = |k: &str| value.get(k).and_then(|v| v.as_bool()).unwrap_or(false);
    let others = [
        "pooling_mode_cls_token",
        "pooling_mode_max_tokens",
        "pooling_mode_mean_sqrt_len_tokens",
    ];
    if !flag("pooling_mode_mean_tokens") || others.iter().any(|k| flag(k)) {
        return Err(ModelError::Unsupported(format!(
            "{}: only mean pooling (pooling_mode_mean_tokens alone) is implemented",
            path.display()
        )));
    }
    Ok(())
}

fn read_max_seq_length(dir: &Path) -> Result<Option<usize>> {
    let path = dir.join(SENTENCE_BERT_CONFIG);
    if !path.is_file() {
        return Ok(None);
    }
    let value = read_json(&path)?;
    Ok(value
        .get("max_seq_length")
        .and_then(|v| v.as_u64())
        .map(|n| n as usize))
}

/// `tokenizer.json` with its own padding and truncation turned off: this
/// module pads per batch and truncates (or refuses) itself.
fn load_tokenizer(dir: &Path) -> Result<Tokenizer> {
    let path: PathBuf = dir.join("tokenizer.json");
    let mut tokenizer = Tokenizer::from_file(&path)
        .map_err(|e| ModelError::Text(format!("{}: {e}", path.display())))?;
    tokenizer.with_padding(None);
    tokenizer
        .with_truncation(None)
        .map_err(|e| ModelError::Text(e.to_string()))?;
    Ok(tokenizer)
}

impl EmbeddingModel {
    /// Length of every vector (384 for all-MiniLM-L6-v2).
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// The longest input in tokens, `[CLS]` and `[SEP]` included.
    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    /// Token ids of each text, `[CLS]` and `[SEP]` included, not truncated.
    pub fn tokenize(&self, texts: &[&str]) -> Result<Vec<Vec<u32>>> {
        let encodings = self
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| ModelError::Text(e.to_string()))?;
        Ok(encodings.iter().map(|e| e.get_ids().to_vec()).collect())
    }

    /// Embeds texts, [`BATCH_SIZE`] per forward pass.
    pub fn embed(&self, texts: &[&str], overflow: Overflow) -> Result<Embeddings> {
        let ids = self.tokenize(texts)?;
        self.embed_encoded(ids, overflow)
    }

    /// Embeds pre-tokenized inputs (ids of this model's vocabulary, without
    /// `[CLS]`/`[SEP]`), as the API's token arrays.
    pub fn embed_tokens(&self, inputs: &[Vec<u32>], overflow: Overflow) -> Result<Embeddings> {
        let ids = self.encode_tokens(inputs)?;
        self.embed_encoded(ids, overflow)
    }

    /// Wraps token arrays in `[CLS]` ... `[SEP]`, as [`EmbeddingModel::tokenize`]
    /// does for text. An id outside the vocabulary is an error naming the input.
    pub fn encode_tokens(&self, inputs: &[Vec<u32>]) -> Result<Vec<Vec<u32>>> {
        let mut ids = Vec::with_capacity(inputs.len());
        for (i, input) in inputs.iter().enumerate() {
            if let Some(&bad) = input.iter().find(|&&t| t as usize >= self.vocab_size) {
                return Err(ModelError::Text(format!(
                    "input {i}: token id {bad} is outside the vocabulary (0..{})",
                    self.vocab_size
                )));
            }
            let mut seq = Vec::with_capacity(input.len() + 2);
            seq.push(self.cls);
            seq.extend_from_slice(input);
            seq.push(self.sep);
            ids.push(seq);
        }
        Ok(ids)
    }

    /// Embeds inputs already tokenized by [`EmbeddingModel::tokenize`] or
    /// [`EmbeddingModel::encode_tokens`] (so a caller that checks lengths
    /// first tokenizes once).
    pub fn embed_encoded(&self, mut ids: Vec<Vec<u32>>, overflow: Overflow) -> Result<Embeddings> {
        let mut truncated = 0;
        for seq in &mut ids {
            if seq.len() > self.max_tokens {
                if overflow == Overflow::Error {
                    return Err(ModelError::ContextOverflow {
                        needed: seq.len(),
                        max: self.max_tokens,
                    });
                }
                // Keep the closing [SEP], as the tokenizer's truncation does.
                seq.truncate(self.max_tokens - 1);
                seq.push(self.sep);
                truncated += 1;
            }
        }
        let tokens = ids.iter().map(Vec::len).sum();
        let mut vectors = Vec::with_capacity(ids.len());
        for batch in ids.chunks(BATCH_SIZE) {
            vectors.extend(self.forward_batch(batch)?);
        }
        Ok(Embeddings {
            vectors,
            tokens,
            truncated,
        })
    }

    /// One padded forward pass, mean pooling over real tokens, then L2
    /// normalisation.
    fn forward_batch(&self, batch: &[Vec<u32>]) -> Result<Vec<Vec<f32>>> {
        let len = batch.iter().map(Vec::len).max().unwrap_or(0);
        if len == 0 {
            return Ok(Vec::new());
        }
        let mut input = Vec::with_capacity(batch.len() * len);
        let mut mask = Vec::with_capacity(batch.len() * len);
        for seq in batch {
            input.extend_from_slice(seq);
            input.extend(std::iter::repeat_n(0u32, len - seq.len()));
            mask.extend(std::iter::repeat_n(1f32, seq.len()));
            mask.extend(std::iter::repeat_n(0f32, len - seq.len()));
        }
        let shape = (batch.len(), len);
        let device = &self.bert.device;
        let input = Tensor::from_vec(input, shape, device)?;
        let mask = Tensor::from_vec(mask, shape, device)?;
        let types = input.zeros_like()?;
        let hidden = self.bert.forward(&input, &types, Some(&mask))?;
        let mask3 = mask.unsqueeze(2)?;
        let summed = hidden.broadcast_mul(&mask3)?.sum(1)?;
        let counts = mask3.sum(1)?.maximum(1e-9)?;
        let mean = summed.broadcast_div(&counts)?;
        let norms = mean.sqr()?.sum_keepdim(1)?.sqrt()?.maximum(1e-12)?;
        Ok(mean.broadcast_div(&norms)?.to_vec2::<f32>()?)
    }
}
