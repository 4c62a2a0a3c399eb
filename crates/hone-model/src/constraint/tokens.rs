//! The vocabulary as llguidance sees it: the raw bytes of every token in a
//! trie (`TokEnv`), built from hone's tokenizer.
//!
//! The bytes come from llguidance's own reader of a `tokenizer.json`
//! (`token_bytes_from_tokenizer_json`, which knows byte-level BPE and
//! SentencePiece byte fallback), fed with hone's tokenizer serialized to
//! that form, so a GGUF-built tokenizer and a `tokenizer.json` one go
//! through the same code. Special tokens are marked as such from hone's
//! own list, so a grammar never spells `<|im_end|>` inside a JSON string.

use std::sync::{Arc, OnceLock};

use llguidance::toktrie::{TokEnv, TokRxInfo, TokTrie, TokenId, TokenizerEnv};

use super::{grammar_err, GrammarEnv};
use crate::error::Result;

/// The [`TokEnv`] of `tokenizer`: its vocabulary's bytes, its stop tokens
/// as end of turn, and its own encoder for text the grammar forces.
pub(super) fn tok_env(tokenizer: &hone_text::Tokenizer) -> Result<TokEnv> {
    let json = serde_json::to_value(tokenizer.inner())
        .map_err(|e| grammar_err(format!("cannot read the tokenizer's vocabulary: {e}")))?;
    // The reader asserts on malformed byte tokens; a tokenizer it cannot
    // read must refuse constrained decoding, not take the server down.
    let words = std::panic::catch_unwind(|| llguidance::token_bytes_from_tokenizer_json(&json))
        .map_err(|_| grammar_err("the tokenizer's vocabulary has malformed byte tokens"))?
        .map_err(|e| {
            grammar_err(format!(
                "constrained decoding does not support this tokenizer: {e}"
            ))
        })?;
    let n = words.len().max(tokenizer.vocab_size());
    let words: Vec<Vec<u8>> = (0..n)
        .map(|id| {
            let id32 = id as u32;
            match words.get(id) {
                Some(w) if !w.is_empty() && !tokenizer.is_special(id32) => w.clone(),
                _ => special_name(id32, tokenizer.id_to_token(id32)),
            }
        })
        .collect();
    let trie = trie(&words, tokenizer.eos_id(), tokenizer.stop_token_ids());
    Ok(Arc::new(HoneTokEnv {
        trie,
        tokenizer: tokenizer.clone(),
    }))
}

/// A [`TokEnv`] over raw token bytes that tokenizes greedily (toy
/// vocabularies and tests).
pub(super) fn bytes_env(words: &[Vec<u8>], stop_ids: &[u32]) -> Result<TokEnv> {
    if words.is_empty() {
        return Err(grammar_err("an empty vocabulary"));
    }
    let eos = stop_ids.first().copied().unwrap_or(0);
    let trie = trie(words, eos, stop_ids);
    Ok(Arc::new(llguidance::toktrie::ApproximateTokEnv::new(trie)))
}

fn trie(words: &[Vec<u8>], eos: u32, stop_ids: &[u32]) -> TokTrie {
    let info = TokRxInfo::new(words.len() as u32, eos);
    let trie = TokTrie::from(&info, words);
    if stop_ids.is_empty() {
        trie
    } else {
        trie.with_eos_tokens(stop_ids)
    }
}

/// How the trie spells a special token: a marker byte no text contains,
/// then its name (or its id when it has none).
fn special_name(id: u32, name: Option<String>) -> Vec<u8> {
    let name = name
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| format!("<[{id}]>"));
    let mut bytes = vec![TokTrie::SPECIAL_TOKEN_MARKER];
    bytes.extend_from_slice(name.as_bytes());
    bytes
}

/// hone's tokenizer behind llguidance's trait.
struct HoneTokEnv {
    trie: TokTrie,
    tokenizer: hone_text::Tokenizer,
}

impl TokenizerEnv for HoneTokEnv {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<TokenId> {
        self.trie.tokenize_with_greedy_fallback(s, |text| {
            self.tokenizer.encode(text).unwrap_or_default()
        })
    }
}

/// A [`GrammarEnv`] built on first use and shared by clones (an engine and
/// its adapted copies): building the trie costs tens of milliseconds, so it
/// is done once per tokenizer, and never for a model that is not asked for
/// a grammar.
#[derive(Clone, Default)]
pub struct GrammarEnvCell(Arc<OnceLock<std::result::Result<Arc<GrammarEnv>, String>>>);

impl GrammarEnvCell {
    /// The environment of `tokenizer`, built on the first call.
    pub fn get(&self, tokenizer: &hone_text::Tokenizer) -> Result<Arc<GrammarEnv>> {
        self.0
            .get_or_init(|| {
                GrammarEnv::from_tokenizer(tokenizer)
                    .map(Arc::new)
                    .map_err(|e| e.to_string())
            })
            .clone()
            .map_err(grammar_err)
    }
}
