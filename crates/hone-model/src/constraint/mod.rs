//! Constrained decoding: a [`Grammar`] that an answer must match (any JSON
//! object, a JSON Schema, or a Lark grammar), and the per-sequence
//! [`Constraint`] that masks the logits of every token the grammar forbids
//! next, in generation's sampling step.
//!
//! The grammar engine is llguidance (the one vLLM, llama.cpp and mistral.rs
//! use): it compiles JSON Schema itself, so hone never hand-writes a
//! schema-to-grammar compiler, and it computes a token mask in tens of
//! microseconds from a trie of the vocabulary's bytes.
//!
//! Three pieces, built at three moments:
//! - [`Grammar`]: checked when a request is planned, with no model at hand,
//!   so a bad schema is an error before anything is generated;
//! - [`GrammarEnv`]: the vocabulary as bytes, built once per tokenizer
//!   ([`tokens`]), since the trie costs tens of milliseconds;
//! - [`Constraint`]: one matcher per generated sequence (each choice of
//!   `n`, each row of a batch), advanced with every sampled token.
//!
//! End of turn: the stop tokens are allowed exactly when the grammar
//! accepts what was generated, so an answer never ends half-way through
//! its JSON; once nothing can follow (the closing brace of the object),
//! the matcher stops and generation ends there with finish reason `stop`.

mod tokens;
mod tool_calls;

use llguidance::api::{GrammarInit, ParserLimits, TopLevelGrammar};
use llguidance::{Matcher, ParserFactory};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::error::{ModelError, Result};

pub use tokens::GrammarEnvCell;
pub use tool_calls::{CallRules, CallableTool};

/// What a grammar is written as: the wire form of a [`Grammar`] (what
/// `GenerationParams` serializes).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum GrammarSpec {
    /// Any one JSON object (OpenAI's JSON mode).
    JsonObject,
    /// A JSON document that validates against `schema`.
    JsonSchema { schema: Value },
    /// A grammar in llguidance's Lark dialect (for tool-call formats).
    Lark { grammar: String },
}

/// A checked grammar an answer must match. Building one compiles it
/// without a tokenizer, so an unsupported schema is refused up front;
/// [`GrammarEnv::constraint`] then compiles it against a vocabulary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "GrammarSpec", into = "GrammarSpec")]
pub struct Grammar {
    spec: GrammarSpec,
}

impl Grammar {
    /// Any one JSON object.
    pub fn json_object() -> Self {
        Grammar {
            spec: GrammarSpec::JsonObject,
        }
    }

    /// A document valid against the JSON Schema `schema`; an error names
    /// what the engine cannot honour (unknown keywords are refused, not
    /// ignored).
    pub fn json_schema(schema: Value) -> Result<Self> {
        Self::new(GrammarSpec::JsonSchema { schema })
    }

    /// A Lark grammar (llguidance's dialect).
    pub fn lark(grammar: impl Into<String>) -> Result<Self> {
        Self::new(GrammarSpec::Lark {
            grammar: grammar.into(),
        })
    }

    /// Checks `spec` by compiling it (no tokenizer needed).
    pub fn new(spec: GrammarSpec) -> Result<Self> {
        if let GrammarSpec::JsonSchema { schema } = &spec {
            if !schema.is_object() && !schema.is_boolean() {
                return Err(grammar_err("a JSON Schema must be an object"));
            }
        }
        let g = Grammar { spec };
        GrammarInit::Serialized(g.top_level())
            .to_internal(None, ParserLimits::default())
            .map_err(|e| grammar_err(e.to_string()))?;
        Ok(g)
    }

    pub fn spec(&self) -> &GrammarSpec {
        &self.spec
    }

    /// llguidance's form. JSON is compact (no free whitespace between
    /// tokens): a small model given free whitespace can spend its whole
    /// budget on newlines, and an answer needs none.
    fn top_level(&self) -> TopLevelGrammar {
        match &self.spec {
            GrammarSpec::JsonObject => TopLevelGrammar::from_json_schema(compact(json!({
                "type": "object"
            }))),
            GrammarSpec::JsonSchema { schema } => {
                TopLevelGrammar::from_json_schema(compact(schema.clone()))
            }
            GrammarSpec::Lark { grammar } => TopLevelGrammar::from_lark(grammar.clone()),
        }
    }
}

impl TryFrom<GrammarSpec> for Grammar {
    type Error = ModelError;
    fn try_from(spec: GrammarSpec) -> Result<Self> {
        Grammar::new(spec)
    }
}

impl From<Grammar> for GrammarSpec {
    fn from(g: Grammar) -> Self {
        g.spec
    }
}

/// `schema` with llguidance's options for compact JSON (its own
/// `x-guidance` keyword, which it strips before compiling). `true` and
/// `false` schemas become `{}` and `{"not": {}}` so there is an object to
/// carry them.
fn compact(schema: Value) -> Value {
    let mut schema = match schema {
        Value::Bool(true) => json!({}),
        Value::Bool(false) => json!({"not": {}}),
        other => other,
    };
    if let Some(obj) = schema.as_object_mut() {
        obj.insert(
            "x-guidance".into(),
            json!({"whitespace_flexible": false, "lenient": false}),
        );
    }
    schema
}

fn grammar_err(msg: impl Into<String>) -> ModelError {
    ModelError::Grammar(msg.into())
}

/// A vocabulary that grammars compile against: the bytes of every token
/// in a trie, and the parser factory over it. Built once per tokenizer
/// (see [`GrammarEnvCell`]) and shared by every sequence.
pub struct GrammarEnv {
    factory: ParserFactory,
}

impl GrammarEnv {
    /// The environment of hone's tokenizer (byte-level BPE or
    /// SentencePiece with byte fallback), ending a turn on its stop tokens.
    pub fn from_tokenizer(tokenizer: &hone_text::Tokenizer) -> Result<Self> {
        Self::from_env(tokens::tok_env(tokenizer)?)
    }

    /// An environment from the raw bytes of each token (`words[id]`), with
    /// `stop_ids` as the end-of-turn tokens; texts are tokenized greedily.
    /// For tests and toy vocabularies.
    pub fn from_token_bytes(words: &[Vec<u8>], stop_ids: &[u32]) -> Result<Self> {
        Self::from_env(tokens::bytes_env(words, stop_ids)?)
    }

    fn from_env(env: llguidance::toktrie::TokEnv) -> Result<Self> {
        let mut factory =
            ParserFactory::new_simple(&env).map_err(|e| grammar_err(e.to_string()))?;
        factory.quiet();
        Ok(GrammarEnv { factory })
    }

    /// A fresh matcher of `grammar` for one sequence.
    pub fn constraint(&self, grammar: &Grammar) -> Result<Constraint> {
        let parser = self
            .factory
            .create_parser(grammar.top_level())
            .map_err(|e| grammar_err(e.to_string()))?;
        let matcher = Matcher::new(Ok(parser));
        if let Some(e) = matcher.get_error() {
            return Err(grammar_err(e));
        }
        Ok(Constraint {
            matcher,
            env: self.factory.tok_env().clone(),
        })
    }
}

/// One sequence's position in its grammar: masks logits before each
/// sample and is advanced with the sampled token.
pub struct Constraint {
    matcher: Matcher,
    env: llguidance::toktrie::TokEnv,
}

impl Constraint {
    /// Sets to -inf every logit the grammar forbids next. A stop token
    /// (`stop_ids`) stays allowed only when the grammar accepts the text so
    /// far. Errors if nothing at all is allowed.
    pub fn mask(&mut self, logits: &mut [f32], stop_ids: &[u32]) -> Result<()> {
        if self.matcher.is_stopped() {
            // Complete: only the end of the turn can follow.
            return mask_all_but(logits, stop_ids);
        }
        let allowed = self.matcher.compute_mask().map_err(|e| engine_err(&e))?;
        let accepting = self.matcher.is_accepting().map_err(|e| engine_err(&e))?;
        let trie = self.env.tok_trie();
        let mut any = false;
        for (id, l) in logits.iter_mut().enumerate() {
            let id = id as u32;
            let ok = if stop_ids.contains(&id) {
                accepting
            } else {
                (id as usize) < trie.vocab_size()
                    && allowed.is_allowed(id)
                    && !trie.eos_tokens().contains(&id)
            };
            if ok {
                any = true;
            } else {
                *l = f32::NEG_INFINITY;
            }
        }
        if !any {
            return Err(ModelError::Generation(
                "the grammar allows no token of this model's vocabulary here".into(),
            ));
        }
        Ok(())
    }

    /// Advances past `token` (never a stop token: those end generation).
    pub fn accept(&mut self, token: u32) -> Result<()> {
        self.matcher
            .consume_token(token)
            .map_err(|e| engine_err(&e))
    }

    /// The grammar is complete and nothing can follow: generation is done
    /// (without spending a step on the stop token).
    pub fn is_finished(&self) -> bool {
        self.matcher.is_stopped()
    }
}

/// Sets every logit but those of `keep` to -inf.
fn mask_all_but(logits: &mut [f32], keep: &[u32]) -> Result<()> {
    if !keep.iter().any(|&t| (t as usize) < logits.len()) {
        return Err(ModelError::Generation(
            "the grammar is complete and this model has no stop token to end on".into(),
        ));
    }
    for (id, l) in logits.iter_mut().enumerate() {
        if !keep.contains(&(id as u32)) {
            *l = f32::NEG_INFINITY;
        }
    }
    Ok(())
}

fn engine_err(e: &dyn std::fmt::Display) -> ModelError {
    ModelError::Generation(format!("grammar engine: {e}"))
}

#[cfg(test)]
mod tests;
