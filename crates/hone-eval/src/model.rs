//! What evaluation needs from a model, as a trait so the runner is testable
//! with scripted models, and its implementation over hone-model's
//! [`ChatEngine`] with the adapter switched on or off.

use std::ops::ControlFlow;

use hone_model::constraint::Grammar;
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
    /// Tokens of the rendered prompt (what a hosted API bills as input).
    pub prompt_tokens: usize,
}

/// A conversation to complete: its messages, tool definitions and the
/// grammar the answer must match (`--json-schema-from-case`).
#[derive(Debug, Clone, Copy)]
pub struct Conversation<'a> {
    pub messages: &'a [ChatMessage],
    pub tools: Option<&'a Value>,
    pub grammar: Option<&'a Grammar>,
}

impl<'a> Conversation<'a> {
    /// Plain messages: no tools, no grammar.
    pub fn new(messages: &'a [ChatMessage]) -> Self {
        Conversation {
            messages,
            tools: None,
            grammar: None,
        }
    }
}

/// A model under evaluation.
pub trait EvalModel {
    /// Greedy completion of the conversation, at most `max_tokens` tokens.
    fn generate(&self, conv: &Conversation<'_>, max_tokens: usize) -> Result<Generated>;

    /// Tokens of the conversation's rendered prompt (to check, before any
    /// generation, that an approach's longer prompts fit the context).
    fn prompt_tokens(&self, conv: &Conversation<'_>) -> Result<usize>;

    /// The model's context length in tokens.
    fn context_length(&self) -> usize;

    /// Greedy completions of several conversations, in order. The default
    /// runs them one by one; a real model decodes them together (see
    /// [`EngineModel`]), with the same results.
    fn generate_many(
        &self,
        convs: &[Conversation<'_>],
        max_tokens: usize,
    ) -> Vec<Result<Generated>> {
        convs.iter().map(|c| self.generate(c, max_tokens)).collect()
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

fn greedy(max_tokens: usize, grammar: Option<&Grammar>) -> GenerationParams {
    GenerationParams {
        max_tokens,
        temperature: 0.0,
        grammar: grammar.cloned(),
        ..GenerationParams::default()
    }
}

impl EvalModel for EngineModel<'_> {
    fn generate(&self, conv: &Conversation<'_>, max_tokens: usize) -> Result<Generated> {
        let prompt = self.engine.encode_prompt(conv.messages, conv.tools)?;
        let stop = self.engine.tokenizer.tokenizer.stop_token_ids().to_vec();
        let g = generate(
            &self.switch(),
            &prompt,
            &greedy(max_tokens, conv.grammar),
            &stop,
            self.engine,
            &mut |_| ControlFlow::Continue(()),
        )?;
        Ok(Generated {
            text: g.text,
            tokens: g.completion_tokens,
            prompt_tokens: prompt.len(),
        })
    }

    fn prompt_tokens(&self, conv: &Conversation<'_>) -> Result<usize> {
        Ok(self.engine.encode_prompt(conv.messages, conv.tools)?.len())
    }

    fn context_length(&self) -> usize {
        self.engine.model.cfg.max_position_embeddings
    }

    /// Decodes the conversations together, each with its own KV cache
    /// ([`generate_batch`]); one that does not encode gets its error.
    /// Conversations with different grammars go in separate batches (a
    /// batch shares its generation parameters).
    fn generate_many(
        &self,
        convs: &[Conversation<'_>],
        max_tokens: usize,
    ) -> Vec<Result<Generated>> {
        let mut out: Vec<Option<Result<Generated>>> = convs.iter().map(|_| None).collect();
        let mut todo: Vec<usize> = (0..convs.len()).collect();
        while let Some(&first) = todo.first() {
            let grammar = convs[first].grammar;
            let (group, rest): (Vec<usize>, Vec<usize>) =
                todo.iter().partition(|&&i| convs[i].grammar == grammar);
            let gens = self.generate_group(&group, convs, grammar, max_tokens);
            for (i, g) in group.into_iter().zip(gens) {
                out[i] = Some(g);
            }
            todo = rest;
        }
        out.into_iter()
            .map(|g| g.unwrap_or_else(|| Err(generation_err("batch lost a case"))))
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

impl EngineModel<'_> {
    /// One [`generate_batch`] call over `convs[group]`, which share `grammar`.
    fn generate_group(
        &self,
        group: &[usize],
        convs: &[Conversation<'_>],
        grammar: Option<&Grammar>,
        max_tokens: usize,
    ) -> Vec<Result<Generated>> {
        let prompts: Vec<_> = group
            .iter()
            .map(|&i| self.engine.encode_prompt(convs[i].messages, convs[i].tools))
            .collect();
        let ok: Vec<Vec<u32>> = prompts
            .iter()
            .filter_map(|p| p.as_ref().ok().cloned())
            .collect();
        let stop = self.engine.tokenizer.tokenizer.stop_token_ids().to_vec();
        let params = greedy(max_tokens, grammar);
        let batch = generate_batch(&self.switch(), &ok, &params, &stop, self.engine);
        let mut done = match batch {
            Ok(gens) => gens.into_iter().map(Ok).collect::<Vec<_>>(),
            // A failure of the whole batch: every case gets it.
            Err(e) => ok.iter().map(|_| Err(e.to_string())).collect(),
        }
        .into_iter();
        prompts
            .into_iter()
            .map(|p| {
                let prompt_tokens = p?.len();
                match done.next() {
                    Some(Ok(g)) => Ok(Generated {
                        text: g.text,
                        tokens: g.completion_tokens,
                        prompt_tokens,
                    }),
                    Some(Err(e)) => Err(generation_err(e)),
                    None => Err(generation_err("batch lost a case")),
                }
            })
            .collect()
    }
}

fn generation_err(e: impl Into<String>) -> crate::error::EvalError {
    hone_model::ModelError::Generation(e.into()).into()
}

fn text_err(e: hone_text::Error) -> crate::error::EvalError {
    hone_model::ModelError::Text(e.to_string()).into()
}
