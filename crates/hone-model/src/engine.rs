//! A loaded chat model: weights plus the tokenizer and chat template that
//! came with them. `hone chat`, the HTTP server and evaluation share it, so
//! prompts are rendered by the same template code path as training.

use std::ops::ControlFlow;
use std::sync::Arc;

use hone_text::{ChatMessage, ChatTokenizer};

use crate::constraint::{GrammarEnv, GrammarEnvCell};
use crate::error::{text_err, Result};
use crate::generate::{generate, Detokenizer, Generation, GenerationParams, RowEngine};
use crate::llama::{Llama, WeightPath};

/// The weight path for serving: hone's packed kernels on the file's own
/// blocks (Q4_1, Q8_0, Q5_0 and the K-quants kept as stored; others re-quantized
/// to Q8_0) with f32 activations. Measured on SmolLM2-135M: logits
/// within 1e-4 of the f32 path (candle's Q8_0 kernels, since retired: 1.0) and the reference greedy
/// answers exactly (`quantized_paths_gap_to_f32`), and the fastest decode
/// (docs/benchmarks.md).
pub const SERVING_WEIGHTS: WeightPath = WeightPath::Packed;

pub struct ChatEngine {
    pub id: String,
    pub model: Llama,
    pub tokenizer: ChatTokenizer,
    /// The vocabulary for constrained decoding, built on the first request
    /// with a grammar and shared with adapted copies of this engine (same
    /// tokenizer).
    pub grammar: GrammarEnvCell,
}

impl ChatEngine {
    /// Token ids of `messages` rendered with the generation prompt.
    pub fn encode_prompt(
        &self,
        messages: &[ChatMessage],
        tools: Option<&serde_json::Value>,
    ) -> Result<Vec<u32>> {
        self.tokenizer
            .encode_prompt(messages, tools)
            .map_err(text_err)
    }

    /// Generates the assistant's reply, streaming text through `on_text`.
    pub fn chat(
        &self,
        messages: &[ChatMessage],
        params: &GenerationParams,
        on_text: &mut dyn FnMut(&str) -> ControlFlow<()>,
    ) -> Result<Generation> {
        let prompt = self.encode_prompt(messages, None)?;
        self.generate_ids(&prompt, params, on_text)
    }

    /// Generates from prompt ids, stopping on the tokenizer's stop tokens.
    pub fn generate_ids(
        &self,
        prompt: &[u32],
        params: &GenerationParams,
        on_text: &mut dyn FnMut(&str) -> ControlFlow<()>,
    ) -> Result<Generation> {
        let stop_ids = self.tokenizer.tokenizer.stop_token_ids().to_vec();
        generate(&self.model, prompt, params, &stop_ids, self, on_text)
    }
}

impl Detokenizer for ChatEngine {
    fn decode(&self, ids: &[u32]) -> Result<String> {
        self.tokenizer
            .tokenizer
            .decode_skip_special(ids)
            .map_err(text_err)
    }

    fn grammar_env(&self) -> Result<Arc<GrammarEnv>> {
        self.grammar.get(&self.tokenizer.tokenizer)
    }
}

/// A row of the server's running batch generates with the engine's model
/// handle (its adapters on), tokenizer and stop tokens.
impl RowEngine for ChatEngine {
    fn model(&self) -> &Llama {
        &self.model
    }
    fn detokenizer(&self) -> &dyn Detokenizer {
        self
    }
    fn stop_ids(&self) -> &[u32] {
        self.tokenizer.tokenizer.stop_token_ids()
    }
}
