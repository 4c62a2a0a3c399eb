//! What evaluation needs from a model, as a trait so the runner is testable
//! with scripted models, and its implementation over hone-model's
//! [`ChatEngine`] with the adapter switched on or off.

use std::ops::ControlFlow;

use hone_model::generate::{generate, generate_batch, GenerationParams};
use hone_model::score::{score_tokens, AdapterSwitch, TokenScore};
use hone_model::ChatEngine;
use hone_text::{ChatMessage, EncodedChat};
use serde_json::Value;

use crate::error::Result;

/// One greedy completion.
#[derive(Debug, Clone, PartialEq)]
pub struct Generated {
    pub text: String,
    /// Completion tokens, a final stop token included.
    pub tokens: usize,
}

/// A conversation to complete: its messages and tool definitions.
pub type Conversation<'a> = (&'a [ChatMessage], Option<&'a Value>);

/// A model under evaluation.
pub trait EvalModel {
    /// Greedy completion of the conversation, at most `max_tokens` tokens.
    fn generate(
        &self,
        messages: &[ChatMessage],
        tools: Option<&Value>,
        max_tokens: usize,
    ) -> Result<Generated>;

    /// Greedy completions of several conversations, in order. The default
    /// runs them one by one; a real model decodes them together (see
    /// [`EngineModel`]), with the same results.
    fn generate_many(
        &self,
        convs: &[Conversation<'_>],
        max_tokens: usize,
    ) -> Vec<Result<Generated>> {
        convs
            .iter()
            .map(|(m, tools)| self.generate(m, *tools, max_tokens))
            .collect()
    }

    /// Log-probability of the trained (assistant) tokens of a chat, with the
    /// same loss mask as SFT training.
    fn score_chat(&self, messages: &[ChatMessage], tools: Option<&Value>) -> Result<TokenScore>;

    /// Log-probability of `answer` (and its end-of-turn token) after `prompt`,
    /// with the same mask as DPO training.
    fn score_answer(&self, prompt: &[ChatMessage], answer: &ChatMessage) -> Result<TokenScore>;
}

/// A loaded [`ChatEngine`], run with its adapters on (the fine-tuned model)
/// or off (its base), so one copy of the weights serves both.
pub struct EngineModel<'a> {
    pub engine: &'a ChatEngine,
    pub use_adapters: bool,
}

impl EngineModel<'_> {
    fn switch(&self) -> AdapterSwitch<'_> {
        AdapterSwitch {
            model: &self.engine.model,
            use_adapters: self.use_adapters,
        }
    }

    fn score(&self, enc: EncodedChat) -> Result<TokenScore> {
        // Longer than the context: score the part the model can see, as
        // training truncates to its sequence length.
        let ctx = self.engine.model.cfg.max_position_embeddings;
        let n = enc.ids.len().min(ctx);
        Ok(score_tokens(
            &self.engine.model,
            &enc.ids[..n],
            &enc.loss_mask[..n],
            self.use_adapters,
        )?)
    }
}

fn greedy(max_tokens: usize) -> GenerationParams {
    GenerationParams {
        max_tokens,
        temperature: 0.0,
        ..GenerationParams::default()
    }
}

impl EvalModel for EngineModel<'_> {
    fn generate(
        &self,
        messages: &[ChatMessage],
        tools: Option<&Value>,
        max_tokens: usize,
    ) -> Result<Generated> {
        let prompt = self.engine.encode_prompt(messages, tools)?;
        let stop = self.engine.tokenizer.tokenizer.stop_token_ids().to_vec();
        let g = generate(
            &self.switch(),
            &prompt,
            &greedy(max_tokens),
            &stop,
            self.engine,
            &mut |_| ControlFlow::Continue(()),
        )?;
        Ok(Generated {
            text: g.text,
            tokens: g.completion_tokens,
        })
    }

    /// Decodes the conversations that encode together, each with its own KV
    /// cache ([`generate_batch`]); one that does not encode gets its error.
    fn generate_many(
        &self,
        convs: &[Conversation<'_>],
        max_tokens: usize,
    ) -> Vec<Result<Generated>> {
        let prompts: Vec<_> = convs
            .iter()
            .map(|(m, tools)| self.engine.encode_prompt(m, *tools))
            .collect();
        let ok: Vec<Vec<u32>> = prompts
            .iter()
            .filter_map(|p| p.as_ref().ok().cloned())
            .collect();
        let stop = self.engine.tokenizer.tokenizer.stop_token_ids().to_vec();
        let batch = generate_batch(&self.switch(), &ok, &greedy(max_tokens), &stop, self.engine);
        let mut done = match batch {
            Ok(gens) => gens.into_iter().map(Ok).collect::<Vec<_>>(),
            // A failure of the whole batch: every case gets it.
            Err(e) => ok.iter().map(|_| Err(e.to_string())).collect(),
        }
        .into_iter();
        prompts
            .into_iter()
            .map(|p| {
                p?;
                match done.next() {
                    Some(Ok(g)) => Ok(Generated {
                        text: g.text,
                        tokens: g.completion_tokens,
                    }),
                    Some(Err(e)) => Err(hone_model::ModelError::Generation(e).into()),
                    None => {
                        Err(hone_model::ModelError::Generation("batch lost a case".into()).into())
                    }
                }
            })
            .collect()
    }

    fn score_chat(&self, messages: &[ChatMessage], tools: Option<&Value>) -> Result<TokenScore> {
        let enc = self
            .engine
            .tokenizer
            .encode_chat(messages, tools)
            .map_err(text_err)?;
        self.score(enc)
    }

    fn score_answer(&self, prompt: &[ChatMessage], answer: &ChatMessage) -> Result<TokenScore> {
        let enc = self
            .engine
            .tokenizer
            .encode_preference(prompt, answer, None)
            .map_err(text_err)?;
        self.score(enc)
    }
}

fn text_err(e: hone_text::Error) -> crate::error::EvalError {
    hone_model::ModelError::Text(e.to_string()).into()
}
