//! The training-mode forward pass: the same block as [`Llama::forward_hidden`] (the one
//! of [`crate::family`], every switch of the spec honoured), built from the
//! differentiable custom ops of [`crate::ops`].
//!
//! It lives beside the inference path rather than behind a flag in it so that inference
//! keeps its fused, cache-aware kernels untouched, while training gets ops that carry a
//! gradient (candle's fused `rms_norm`, `rope` and `softmax_last_dim` drop it silently,
//! architecture.md "Pitfalls"). The equivalence of the two paths is a test
//! (`train_forward_matches_inference_forward`), so they cannot drift apart unnoticed.
//!
//! Frozen weights go through [`ops::frozen_linear`] (no weight gradient is ever
//! computed); the LoRA matrices, which are candle `Var`s during training, go through stock
//! matmuls, so the gradient store holds exactly the trainable parameters.

use candle_core::{DType, Tensor};

use crate::error::{ModelError, Result};
use crate::family::{LayerKind, Switch};
use crate::linear::BaseWeight;
use crate::llama::{Embedding, Llama, LmHead, RopeTables};
use crate::ops;

/// The spec switches the training path implements: all of them. Where each lives:
/// RoPE scaling and per-layer RoPE are in the tables the stack is given (one per
/// distinct [`crate::family::RopeSpec`]); q/k/v biases are frozen constants added after
/// the projections; q/k norms, post norms, GELU-tanh, sliding windows and the attention
/// scale are steps of [`ops::lora_stack`] with their backward; the embedding scale
/// multiplies the frozen embedding rows (nothing upstream needs a gradient); the final
/// softcap is in [`ops::lm_head_cross_entropy`] and [`Llama::train_logits`]. A switch
/// added to the spec later is refused by training until it is listed here.
pub const TRAIN_SWITCHES: &[Switch] = &[
    Switch::QkvBias,
    Switch::QkNorm,
    Switch::PostAttentionNorm,
    Switch::PostFfnNorm,
    Switch::GeluTanh,
    Switch::EmbeddingScale,
    Switch::AttentionScale,
    Switch::FinalLogitSoftcap,
    Switch::SlidingWindow,
    Switch::PerLayerRope,
    Switch::RopeScaling,
];

/// Switches for one training-mode forward pass.
#[derive(Debug, Clone, Copy)]
pub struct TrainOptions {
    /// Run LoRA adapters (false: the frozen base, e.g. DPO's reference model).
    pub use_adapters: bool,
    /// LoRA dropout probability on the adapter input (PEFT's `lora_dropout`); 0 disables.
    pub lora_dropout: f64,
    /// Seed of this pass's dropout masks, so that a run is reproducible.
    pub dropout_seed: u64,
    /// Recompute each layer's activations in the backward instead of keeping them
    /// (`--gradient-checkpointing`; see `ops::StackSpec::checkpoint`).
    pub gradient_checkpointing: bool,
}

impl Default for TrainOptions {
    fn default() -> Self {
        Self {
            use_adapters: true,
            lora_dropout: 0.0,
            dropout_seed: 0,
            gradient_checkpointing: false,
        }
    }
}

/// Where packed examples sit in a batch: several examples share a row, each with
/// RoPE positions from 0 and attending only within itself, so that a packed batch
/// computes exactly what the same examples would unpacked (architecture.md pitfall 4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackedLayout {
    /// `[b·t]`, row-major: each token's position within its own example.
    pub positions: Vec<u32>,
    /// `[b·t]`: the column (within its row) where each token's example starts;
    /// attention from a token reaches back to that column and no further.
    pub segment_starts: Vec<u32>,
}

impl PackedLayout {
    /// `rope`'s tables `(b, t, d/2)` gathered at each token's position.
    fn rope_tables(&self, rope: &RopeTables, b: usize, t: usize) -> Result<(Tensor, Tensor)> {
        let pos = Tensor::from_slice(&self.positions, b * t, rope.cos.device())?;
        let half = rope.cos.dim(1)?;
        let gather = |table: &Tensor| -> Result<Tensor> {
            Ok(table.index_select(&pos, 0)?.reshape((b, t, half))?)
        };
        Ok((gather(&rope.cos)?, gather(&rope.sin)?))
    }

    fn check(&self, b: usize, t: usize) -> Result<()> {
        if self.positions.len() != b * t || self.segment_starts.len() != b * t {
            return Err(ModelError::Config(format!(
                "packed layout has {} positions and {} segment starts for a {b}x{t} batch",
                self.positions.len(),
                self.segment_starts.len()
            )));
        }
        Ok(())
    }
}

/// What every training pass starts from: the scaled embeddings and the RoPE tables of
/// the batch.
pub(crate) struct TrainInputs {
    /// `embed[ids] · embedding_scale`, `[b, t, hidden]`.
    pub(crate) x: Tensor,
    /// `(cos, sin)` per distinct RoPE of the model: the full layers' first, then the
    /// sliding layers' when they have their own ([`Llama::rope_index`]). Each `(t, d/2)`,
    /// or `(b, t, d/2)` gathered at the packed positions.
    pub(crate) ropes: Vec<(Tensor, Tensor)>,
}

/// Loss and token counts of one training-mode pass.
#[derive(Debug, Clone)]
pub struct TrainLoss {
    /// Scalar mean cross-entropy over the masked-in positions (differentiable).
    pub loss: Tensor,
    /// Argmax-correct predictions at masked-in positions.
    pub accuracy: ops::TokenAccuracy,
}

impl Llama {
    /// Final-normed hidden states `[b, t, hidden]` of `input_ids: [b, t]` from position 0,
    /// through differentiable ops (no KV cache).
    pub fn forward_train_hidden(&self, input_ids: &Tensor, opts: TrainOptions) -> Result<Tensor> {
        self.forward_train_hidden_packed(input_ids, None, opts)
    }

    /// [`Self::forward_train_hidden`] over rows that hold several examples each,
    /// laid out by `packed` (`None`: one example per row, from position 0).
    pub fn forward_train_hidden_packed(
        &self,
        input_ids: &Tensor,
        packed: Option<&PackedLayout>,
        opts: TrainOptions,
    ) -> Result<Tensor> {
        let inputs = self.train_inputs(input_ids, packed, opts.use_adapters)?;
        let p = opts.lora_dropout;
        if !(0.0..1.0).contains(&p) {
            return Err(ModelError::Adapter(format!(
                "lora dropout must be in [0, 1), got {p}"
            )));
        }
        let (layers, theta) = self.stack_layers(opts.use_adapters)?;
        let ropes: Vec<(&Tensor, &Tensor)> = inputs.ropes.iter().map(|(c, s)| (c, s)).collect();
        let spec = ops::StackSpec {
            heads: self.cfg.num_attention_heads,
            kv_heads: self.cfg.num_key_value_heads,
            head_dim: self.cfg.head_dim,
            rms_norm_eps: self.cfg.rms_norm_eps,
            attention_scale: self.spec.attention_scale,
            activation: self.spec.activation,
            ropes: &ropes,
            segment_starts: packed.map(|p| p.segment_starts.as_slice()),
            dropout: (p > 0.0).then_some((p as f32, opts.dropout_seed)),
            checkpoint: opts.gradient_checkpointing,
        };
        let x = ops::lora_stack(&inputs.x, theta.as_ref(), &layers, &spec)?;
        Ok(ops::rms_norm(&x, &self.norm, self.cfg.rms_norm_eps)?)
    }

    /// Which of [`TrainInputs::ropes`] layer `i` uses: 1 for a sliding layer of a model
    /// whose sliding layers have their own RoPE, else 0.
    pub(crate) fn rope_index(&self, i: usize) -> usize {
        match (self.spec.layer(i).kind, &self.rope_sliding) {
            (LayerKind::Sliding, Some(_)) => 1,
            _ => 0,
        }
    }

    /// The scaled embeddings `[b, t, hidden]` of `input_ids` (with the adapter's token
    /// rows when `use_adapters`: the only part of them with a gradient) and the RoPE
    /// tables of the batch (per row when packed), after checking the spec, the length
    /// and the layout.
    pub(crate) fn train_inputs(
        &self,
        input_ids: &Tensor,
        packed: Option<&PackedLayout>,
        use_adapters: bool,
    ) -> Result<TrainInputs> {
        self.spec.require(
            "training",
            TRAIN_SWITCHES,
            "this family cannot be fine-tuned yet",
        )?;
        let (b, t) = input_ids.dims2()?;
        if t > self.cfg.max_position_embeddings {
            return Err(ModelError::ContextOverflow {
                needed: t,
                max: self.cfg.max_position_embeddings,
            });
        }
        if let Some(p) = packed {
            p.check(b, t)?;
        }
        let tables = |rope: &RopeTables| match packed {
            Some(p) => p.rope_tables(rope, b, t),
            None => rope.slice(0, t),
        };
        let mut ropes = vec![tables(&self.rope)?];
        if let Some(r) = &self.rope_sliding {
            ropes.push(tables(r)?);
        }
        let x = match &self.embed_tokens {
            // A bf16-held table (`--base-weights bf16`) widens only the rows it gathers.
            Embedding::Dense(w) => w
                .index_select(&input_ids.flatten_all()?, 0)?
                .to_dtype(DType::F32)?
                .reshape((b, t, self.cfg.hidden_size))?,
            Embedding::Packed(_) => self.embed_tokens.lookup(input_ids)?,
        };
        let x = match self.active_token_rows(use_adapters) {
            Some(rows) => rows.patch_embeddings(&x, input_ids)?,
            None => x,
        };
        // The scale is a constant: candle's multiply carries the token rows' gradient.
        let s = self.spec.embedding_scale;
        let x = if s == 1.0 { x } else { (x * s as f64)? };
        Ok(TrainInputs { x, ropes })
    }

    /// The decoder layers as [`ops::lora_stack`] takes them, and `theta`: every active
    /// adapter's `A` and `B` flattened in stack order (`None` when there are none), built
    /// by a differentiable `cat` so each LoRA matrix still gets its own gradient.
    fn stack_layers(&self, use_adapters: bool) -> Result<(Vec<ops::StackLayer>, Option<Tensor>)> {
        let mut parts = Vec::new();
        let mut layers = Vec::with_capacity(self.layers.len());
        for (i, block) in self.layers.iter().enumerate() {
            let (a, m) = (&block.self_attn, &block.mlp);
            let linears = [
                &a.q_proj,
                &a.k_proj,
                &a.v_proj,
                &a.o_proj,
                &m.gate_proj,
                &m.up_proj,
                &m.down_proj,
            ];
            let mut weights = Vec::with_capacity(7);
            let mut adapters = [None; 7];
            for (slot, lin) in adapters.iter_mut().zip(linears) {
                weights.push(lin.base().clone());
                if let Some(ad) = lin.adapter().filter(|_| use_adapters) {
                    *slot = Some((ad.rank(), ad.scale));
                    parts.push(ad.a.flatten_all()?);
                    parts.push(ad.b.flatten_all()?);
                }
            }
            layers.push(ops::StackLayer {
                input_norm: block.input_layernorm.clone(),
                post_norm: block.post_attention_layernorm.clone(),
                weights: weights.try_into().expect("seven projections"),
                adapters,
                qkv_bias: match (&a.q_bias, &a.k_bias, &a.v_bias) {
                    (Some(q), Some(k), Some(v)) => Some([q.clone(), k.clone(), v.clone()]),
                    _ => None,
                },
                qk_norm: match (&a.q_norm, &a.k_norm) {
                    (Some(q), Some(k)) => Some([q.clone(), k.clone()]),
                    _ => None,
                },
                post_attn_norm: block.post_attn_norm.clone(),
                post_ffn_norm: block.post_ffn_norm.clone(),
                rope: self.rope_index(i),
                window: self.spec.layer(i).window,
            });
        }
        let theta = (!parts.is_empty())
            .then(|| Tensor::cat(&parts, 0))
            .transpose()?;
        Ok((layers, theta))
    }

    /// Logits `[b, t, vocab]` through the training-mode path.
    pub fn forward_train(&self, input_ids: &Tensor, opts: TrainOptions) -> Result<Tensor> {
        let h = self.forward_train_hidden(input_ids, opts)?;
        self.train_logits_with(&h, opts.use_adapters)
    }

    /// Projects hidden states to logits with the frozen LM head (gradient to `hidden`
    /// only, and to the token rows when tied), with the spec's final softcap
    /// `cap · tanh(z / cap)`.
    pub fn train_logits(&self, hidden: &Tensor) -> Result<Tensor> {
        self.train_logits_with(hidden, true)
    }

    /// [`Self::train_logits`], with the token rows only when `use_adapters`.
    pub fn train_logits_with(&self, hidden: &Tensor, use_adapters: bool) -> Result<Tensor> {
        let z = ops::frozen_linear_base(hidden, &self.head_weight())?;
        let z = match self.active_token_rows(use_adapters) {
            Some(rows) => rows.patch_logits(&z, hidden)?,
            None => z,
        };
        match self.spec.final_logit_softcap {
            Some(cap) => Ok(((z / cap as f64)?.tanh()? * cap as f64)?),
            None => Ok(z),
        }
    }

    /// Masked mean cross-entropy of a shifted batch: `targets` (u32) and `mask` (f32, 1 =
    /// trained) have the shape `[b, t]` of `input_ids`.
    pub fn train_loss(
        &self,
        input_ids: &Tensor,
        targets: &Tensor,
        mask: &Tensor,
        opts: TrainOptions,
    ) -> Result<TrainLoss> {
        self.train_loss_packed(input_ids, targets, mask, None, opts)
    }

    /// [`Self::train_loss`] of a packed batch (see [`PackedLayout`]).
    pub fn train_loss_packed(
        &self,
        input_ids: &Tensor,
        targets: &Tensor,
        mask: &Tensor,
        packed: Option<&PackedLayout>,
        opts: TrainOptions,
    ) -> Result<TrainLoss> {
        let h = self.forward_train_hidden_packed(input_ids, packed, opts)?;
        // The LM head and the loss in one op: only trained positions are projected,
        // and the 200 MB logits of a 4x256 batch are never held (ops::lm_head_loss).
        let cap = self.spec.final_logit_softcap;
        let rows = self
            .active_token_rows(opts.use_adapters)
            .and_then(|r| r.head_patch());
        let (loss, accuracy) =
            ops::lm_head_cross_entropy_base(&h, &self.head_weight(), targets, mask, cap, rows)?;
        Ok(TrainLoss { loss, accuracy })
    }

    /// Per sequence, the summed log-prob of the masked targets: `[b]` for `input_ids:
    /// [b, t]` (`targets` and `mask` shifted as for [`Self::train_loss`]). DPO's sequence
    /// log-probs, through the fused head ([`ops::lm_head_sequence_nll`]): only masked
    /// positions are projected and the batch's logits are never held.
    pub fn train_sequence_logprobs(
        &self,
        input_ids: &Tensor,
        targets: &Tensor,
        mask: &Tensor,
        opts: TrainOptions,
    ) -> Result<Tensor> {
        let h = self.forward_train_hidden(input_ids, opts)?;
        let cap = self.spec.final_logit_softcap;
        let rows = self
            .active_token_rows(opts.use_adapters)
            .and_then(|r| r.head_patch());
        let nll = ops::lm_head_sequence_nll(&h, &self.head_weight(), targets, mask, cap, rows)?;
        Ok(nll.neg()?)
    }

    /// The frozen LM head as the training ops take it.
    fn head_weight(&self) -> BaseWeight {
        match &self.lm_head {
            LmHead::Dense(w) => BaseWeight::Dense(w.clone()),
            LmHead::Packed(p) => BaseWeight::Packed(p.clone()),
        }
    }
}

/// The unfused reference path (`train_reference`, tests only) multiplies f32 tensors.
#[cfg(test)]
pub(crate) fn quantized_in_training() -> ModelError {
    ModelError::Config(
        "training needs f32 base weights; load the model with WeightPath::F32".into(),
    )
}
