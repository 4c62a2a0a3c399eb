//! A tiny random sentence-transformers BERT written to disk, for fast tests
//! of embeddings here and in other crates (`hone-serve`, `hone-retrieve`).
//! Its WordPiece vocabulary holds the BERT specials, then every lowercase
//! letter and digit alone and as a `##` continuation, and some
//! punctuation, so any ASCII text tokenizes (letter by letter).

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

use crate::error::{ModelError, Result};

/// Shape of a tiny BERT.
#[derive(Debug, Clone)]
pub struct TinyBert {
    pub hidden: usize,
    pub intermediate: usize,
    pub layers: usize,
    pub heads: usize,
    /// The `max_seq_length` written to `sentence_bert_config.json`.
    pub max_seq_length: usize,
    pub seed: u64,
}

impl Default for TinyBert {
    fn default() -> Self {
        TinyBert {
            hidden: 32,
            intermediate: 64,
            layers: 2,
            heads: 4,
            max_seq_length: 64,
            seed: 11,
        }
    }
}

/// `[PAD]`, `[UNK]`, `[CLS]`, `[SEP]`, `[MASK]`, at ids 0..5.
const SPECIALS: [&str; 5] = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"];

fn vocab() -> Vec<String> {
    let mut v: Vec<String> = SPECIALS.iter().map(|s| s.to_string()).collect();
    let chars = ('a'..='z').chain('0'..='9');
    v.extend(chars.clone().map(String::from));
    v.extend(chars.map(|c| format!("##{c}")));
    v.extend(".,!?'\"-:;()".chars().map(String::from));
    v
}

impl TinyBert {
    /// Writes `config.json`, `model.safetensors`, `tokenizer.json`,
    /// `sentence_bert_config.json` and `1_Pooling/config.json` into `dir`.
    pub fn write(&self, dir: &Path) -> Result<()> {
        let vocab = vocab();
        std::fs::create_dir_all(dir.join("1_Pooling")).map_err(io(dir))?;
        let config = json!({
            "architectures": ["BertModel"], "model_type": "bert",
            "vocab_size": vocab.len(), "hidden_size": self.hidden,
            "num_hidden_layers": self.layers, "num_attention_heads": self.heads,
            "intermediate_size": self.intermediate, "hidden_act": "gelu",
            "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1,
            "max_position_embeddings": 128, "type_vocab_size": 2,
            "initializer_range": 0.02, "layer_norm_eps": 1e-12, "pad_token_id": 0,
        });
        write_json(&dir.join("config.json"), &config)?;
        write_json(
            &dir.join("sentence_bert_config.json"),
            &json!({"max_seq_length": self.max_seq_length, "do_lower_case": false}),
        )?;
        write_json(
            &dir.join("1_Pooling/config.json"),
            &json!({"word_embedding_dimension": self.hidden, "pooling_mode_cls_token": false,
                    "pooling_mode_mean_tokens": true, "pooling_mode_max_tokens": false,
                    "pooling_mode_mean_sqrt_len_tokens": false}),
        )?;
        write_json(&dir.join("tokenizer.json"), &tokenizer_json(&vocab))?;
        let tensors = self.weights(vocab.len())?;
        candle_core::safetensors::save(&tensors, dir.join(crate::load::HF_WEIGHTS_FILE))?;
        Ok(())
    }

    fn weights(&self, vocab: usize) -> Result<HashMap<String, Tensor>> {
        let dev = Device::Cpu;
        let (h, i) = (self.hidden, self.intermediate);
        let mut rng = StdRng::seed_from_u64(self.seed);
        let mut rand = |shape: &[usize]| -> Result<Tensor> {
            let n = shape.iter().product();
            let values: Vec<f32> = (0..n).map(|_| rng.random_range(-0.3f32..0.3)).collect();
            Ok(Tensor::from_vec(values, shape, &dev)?)
        };
        let mut t = HashMap::new();
        let mut put = |name: String, tensor: Tensor| {
            t.insert(name, tensor);
        };
        put(
            "embeddings.word_embeddings.weight".into(),
            rand(&[vocab, h])?,
        );
        put(
            "embeddings.position_embeddings.weight".into(),
            rand(&[128, h])?,
        );
        put(
            "embeddings.token_type_embeddings.weight".into(),
            rand(&[2, h])?,
        );
        let norm = |p: &str, put: &mut dyn FnMut(String, Tensor)| -> Result<()> {
            put(
                format!("{p}.LayerNorm.weight"),
                Tensor::ones(h, DType::F32, &dev)?,
            );
            put(
                format!("{p}.LayerNorm.bias"),
                Tensor::zeros(h, DType::F32, &dev)?,
            );
            Ok(())
        };
        norm("embeddings", &mut put)?;
        for l in 0..self.layers {
            let p = format!("encoder.layer.{l}");
            for (name, out, inp) in [
                ("attention.self.query", h, h),
                ("attention.self.key", h, h),
                ("attention.self.value", h, h),
                ("attention.output.dense", h, h),
                ("intermediate.dense", i, h),
                ("output.dense", h, i),
            ] {
                put(format!("{p}.{name}.weight"), rand(&[out, inp])?);
                put(format!("{p}.{name}.bias"), rand(&[out])?);
            }
            norm(&format!("{p}.attention.output"), &mut put)?;
            norm(&format!("{p}.output"), &mut put)?;
        }
        Ok(t)
    }
}

/// A BERT WordPiece `tokenizer.json` over `vocab` (lowercasing, with the
/// `[CLS] A [SEP]` template).
fn tokenizer_json(vocab: &[String]) -> serde_json::Value {
    let ids: serde_json::Map<String, serde_json::Value> = vocab
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), json!(i)))
        .collect();
    let added: Vec<_> = SPECIALS
        .iter()
        .enumerate()
        .map(|(i, s)| {
            json!({"id": i, "content": s, "single_word": false, "lstrip": false,
                   "rstrip": false, "normalized": false, "special": true})
        })
        .collect();
    json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
        "normalizer": {"type": "BertNormalizer", "clean_text": true,
            "handle_chinese_chars": true, "strip_accents": null, "lowercase": true},
        "pre_tokenizer": {"type": "BertPreTokenizer"},
        "post_processor": {"type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}},
                       {"Sequence": {"id": "A", "type_id": 0}},
                       {"SpecialToken": {"id": "[SEP]", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}},
                     {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": "[SEP]", "type_id": 0}},
                     {"Sequence": {"id": "B", "type_id": 1}},
                     {"SpecialToken": {"id": "[SEP]", "type_id": 1}}],
            "special_tokens": {
                "[CLS]": {"id": "[CLS]", "ids": [2], "tokens": ["[CLS]"]},
                "[SEP]": {"id": "[SEP]", "ids": [3], "tokens": ["[SEP]"]}}},
        "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": true},
        "model": {"type": "WordPiece", "unk_token": "[UNK]",
            "continuing_subword_prefix": "##", "max_input_chars_per_word": 100,
            "vocab": ids},
    })
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> ModelError + '_ {
    move |source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn write_json(path: &Path, value: &serde_json::Value) -> Result<()> {
    let text = serde_json::to_string_pretty(value).expect("JSON values serialize");
    std::fs::write(path, text).map_err(io(path))
}
