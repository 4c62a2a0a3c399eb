//! Trainable token rows: replacement embedding and LM-head rows for a handful of chosen
//! token ids, as PEFT's `trainable_token_indices` holds them.
//!
//! Why: LoRA on the linear layers cannot move a token whose output row was never
//! trained. In Qwen2.5-Coder-0.5B-Instruct the tied row of `<tool_call>` sits in a
//! cluster of 2,452 near-identical untrained rows, so no hidden state makes it likelier
//! than the others and a fine-tune writes the nearest trained row in its place
//! (docs/tools.md section 2). Training the row itself fixes it, cheaply: a few rows of
//! `hidden` floats.
//!
//! The layout is PEFT's `TrainableTokensLayer` (peft >= 0.15): the rows *replace* the
//! base rows (they start as copies of them), one `[k, hidden]` tensor saved as
//! `base_model.model.model.embed_tokens.token_adapter.trainable_tokens_delta`. With tied
//! embeddings the LM head reads the same rows (PEFT ties the head's adapter to the
//! embedding's and saves no second tensor). An untied model (Qwen2.5-Coder's GGUF has its
//! own `output.weight`) needs the head's rows too, since the untrained *output* row is
//! what keeps a token from being written: hone trains them as a second `[k, hidden]`
//! tensor, `base_model.model.lm_head.token_adapter.trainable_tokens_delta`, which is
//! PEFT's `trainable_token_indices = {"embed_tokens": ids, "lm_head": ids}`. Adapters
//! with embedding rows only (PEFT's list form on an untied model) still load.
//!
//! Every pass applies them here, one implementation per shape of data: on candle
//! tensors ([`TokenRows::patch_embeddings`], [`TokenRows::patch_logits`], differentiable
//! in the rows for training), inside the fused LM-head loss
//! ([`crate::ops::lm_head_cross_entropy_base`]'s `rows`), and on the decode step's f32
//! slices ([`TokenRows::patch_logit_row`]).

use candle_core::{DType, Tensor};

use crate::config::Config;
use crate::error::{ModelError, Result};

/// The adapter-file key of the rows, after PEFT's `base_model.model.` prefix.
pub const PEFT_ROWS_KEY: &str = "model.embed_tokens.token_adapter.trainable_tokens_delta";

/// The adapter-file key of an untied LM head's rows, after PEFT's `base_model.model.`.
pub const PEFT_HEAD_ROWS_KEY: &str = "lm_head.token_adapter.trainable_tokens_delta";

/// Replacement rows for `ids` (see the module docs).
#[derive(Debug, Clone)]
pub struct TokenRows {
    /// The token ids, in the adapter's order (PEFT's `trainable_token_indices`).
    ids: Vec<u32>,
    /// `[k, hidden]` f32, row `j` for `ids[j]`; during training a `Var`'s tensor.
    rows: Tensor,
    /// The LM head's rows: `rows` itself when the embeddings are tied, the head's own
    /// `[k, hidden]` rows on an untied model, or none (embedding rows only).
    head: Option<Tensor>,
}

impl TokenRows {
    /// Rows `rows: [k, hidden]` for `ids` on a model of config `cfg`: every id inside
    /// the vocabulary, none twice, one row each of the model's width. The head uses
    /// `rows` when the embeddings are tied, else `head` (its own rows, same shape) when
    /// given; a tied model refuses separate head rows, which it could not honour.
    pub fn new(cfg: &Config, ids: Vec<u32>, rows: Tensor, head: Option<Tensor>) -> Result<Self> {
        check_ids(&ids, cfg.vocab_size)?;
        let shape = |t: &Tensor, what: &str| -> Result<Tensor> {
            let (k, h) = t.dims2()?;
            if k != ids.len() || h != cfg.hidden_size {
                return Err(ModelError::Adapter(format!(
                    "trainable {what} rows have shape [{k}, {h}], the model needs [{}, {}]",
                    ids.len(),
                    cfg.hidden_size
                )));
            }
            Ok(t.to_dtype(DType::F32)?)
        };
        let rows = shape(&rows, "token")?;
        let head = match (cfg.tie_word_embeddings, head) {
            (true, None) => Some(rows.clone()),
            (true, Some(_)) => {
                return Err(ModelError::Adapter(
                    "the adapter has its own LM-head token rows, but this model ties its \
                     LM head to the embedding"
                        .into(),
                ))
            }
            (false, head) => head.map(|t| shape(&t, "LM-head")).transpose()?,
        };
        Ok(Self { ids, rows, head })
    }

    pub fn ids(&self) -> &[u32] {
        &self.ids
    }

    /// `[k, hidden]` f32.
    pub fn rows(&self) -> &Tensor {
        &self.rows
    }

    /// The LM head's `[k, hidden]` rows: [`Self::rows`] when tied, the head's own when
    /// untied, `None` when only the embedding's are replaced.
    pub fn head_rows(&self) -> Option<&Tensor> {
        self.head.as_ref()
    }

    /// Embeddings `x: [b, t, hidden]` (unscaled) of `ids: [b, t]` with the rows put in
    /// for the chosen tokens: `x ⊙ keep + onehot · rows`, exact (a one-hot product adds
    /// nothing to the row) and differentiable in the rows (`onehotᵀ · dx`).
    pub(crate) fn patch_embeddings(&self, x: &Tensor, ids: &Tensor) -> Result<Tensor> {
        let (b, t, h) = x.dims3()?;
        let flat = ids.flatten_all()?.to_vec1::<u32>()?;
        let k = self.ids.len();
        let mut onehot = vec![0f32; flat.len() * k];
        let mut keep = vec![1f32; flat.len()];
        let mut any = false;
        for (i, id) in flat.iter().enumerate() {
            if let Some(j) = self.position(*id) {
                onehot[i * k + j] = 1.0;
                keep[i] = 0.0;
                any = true;
            }
        }
        if !any {
            return Ok(x.clone());
        }
        let dev = x.device();
        let onehot = Tensor::from_vec(onehot, (flat.len(), k), dev)?;
        let keep = Tensor::from_vec(keep, (flat.len(), 1), dev)?;
        let x = x.reshape((b * t, h))?.broadcast_mul(&keep)?;
        Ok((x + onehot.matmul(&self.rows)?)?.reshape((b, t, h))?)
    }

    /// Logits `z: [.., vocab]` (before any softcap) of `hidden: [.., h]` with the chosen
    /// columns recomputed from the head's rows, when it has them. The column is replaced
    /// by adding `hidden·rowᵀ − z[id]`, so its gradient reaches the rows and the hidden
    /// states through the row, and nothing goes through the base head's row.
    pub(crate) fn patch_logits(&self, z: &Tensor, hidden: &Tensor) -> Result<Tensor> {
        let Some(head) = &self.head else {
            return Ok(z.clone());
        };
        let last = z.rank() - 1;
        let idx = Tensor::new(self.ids.as_slice(), z.device())?;
        let rows = head.to_dtype(hidden.dtype())?;
        let new = hidden.broadcast_matmul(&rows.t()?)?.to_dtype(z.dtype())?;
        let old = z.index_select(&idx, last)?;
        Ok(z.index_add(&idx, &(new - old)?, last)?)
    }

    /// The decode step's version of [`Self::patch_logits`] for one row: `logits[id] =
    /// hidden · row` (before any softcap); `rows` is [`Self::head_rows`]'s data.
    pub(crate) fn patch_logit_row(&self, rows: &[f32], hidden: &[f32], logits: &mut [f32]) {
        let h = hidden.len();
        for (&id, row) in self.ids.iter().zip(rows.chunks_exact(h)) {
            logits[id as usize] = crate::ops::kernel::dot(hidden, row);
        }
    }

    /// The index of `id` in [`Self::ids`].
    pub fn position(&self, id: u32) -> Option<usize> {
        self.ids.iter().position(|&i| i == id)
    }

    /// The fused loss's view: the head's columns to replace and their rows, when it has
    /// them.
    pub(crate) fn head_patch(&self) -> Option<(&[u32], &Tensor)> {
        Some((self.ids.as_slice(), self.head.as_ref()?))
    }
}

/// Ids must be inside the vocabulary and listed once.
pub fn check_ids(ids: &[u32], vocab: usize) -> Result<()> {
    for (i, &id) in ids.iter().enumerate() {
        if id as usize >= vocab {
            return Err(ModelError::Adapter(format!(
                "trainable token id {id} is outside the vocabulary of {vocab}"
            )));
        }
        if ids[..i].contains(&id) {
            return Err(ModelError::Adapter(format!(
                "trainable token id {id} is listed twice"
            )));
        }
    }
    Ok(())
}
