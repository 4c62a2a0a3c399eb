//! The decode step on packed weights: the same block as
//! [`crate::Llama::forward_hidden`] (every family's switches), written on
//! f32 slices.
//!
//! One call takes a list of *rows*, each a token fed to one sequence: a
//! prompt chunk is several rows of one sequence, a batched decode step one row
//! per sequence. The linear layers multiply all rows at once (the weights are
//! read once per call); RoPE and attention use each row's own position and
//! cache. Equivalence with the candle path is tested in `tests/it/packed.rs`.
//!
//! Each sequence may run its own [`Llama`] handle: clones of one base model
//! (the packed weights shared by `Arc`) that differ in their LoRA adapters.
//! The base products are computed once for all rows; each row then adds its
//! own sequence's adapter, so requests on different adapters share a batch
//! and rows on the bare base pay nothing for the adapters of others.

use crate::error::{ModelError, Result};
use crate::family::Activation;
use crate::linear::{BaseWeight, Linear, LoraAdapter};
use crate::llama::{Block, Embedding, Llama, LmHead};

use super::attend::{attend_rows, AttnDims, PackedKvCache};
use super::packed::{matmul_many, PackedMatrix};
use super::rows::{
    add_bias_rows, add_into, gate_in_place, post_norm_rows, rms_norm_rows, rope_rows, with_f32,
};
use crate::ops::kernel::dot;

/// Prompt tokens per forward pass during prefill: enough to read each
/// weight block once for many tokens, few enough to keep the activations in
/// cache.
const PREFILL_ROWS: usize = 16;

/// Logits after `ids`, which follow `start_pos` positions already in `cache`.
pub(crate) fn step(
    model: &Llama,
    ids: &[u32],
    start_pos: usize,
    cache: &mut PackedKvCache,
    use_adapters: bool,
) -> Result<Vec<f32>> {
    if ids.is_empty() {
        return Err(ModelError::Generation(
            "a step needs at least one token".into(),
        ));
    }
    if cache.len() != start_pos {
        return Err(ModelError::Generation(format!(
            "start_pos {start_pos} does not match the {} cached positions",
            cache.len()
        )));
    }
    cache.reserve(ids.len());
    let mut caches = [cache];
    let mut logits = Vec::new();
    let chunks: Vec<&[u32]> = ids.chunks(PREFILL_ROWS).collect();
    for (i, chunk) in chunks.iter().enumerate() {
        let rows: Vec<(usize, u32)> = chunk.iter().map(|&t| (0, t)).collect();
        let want: &[usize] = if i + 1 == chunks.len() {
            &[chunk.len() - 1]
        } else {
            &[]
        };
        logits = forward_rows(&[model], &rows, &mut caches, use_adapters, want)?;
    }
    logits
        .pop()
        .ok_or_else(|| ModelError::Generation("no logits were computed".into()))
}

/// One decode step for several sequences: `ids[i]` follows the positions in `caches[i]`.
pub(crate) fn step_batch(
    model: &Llama,
    ids: &[u32],
    caches: &mut [&mut PackedKvCache],
    use_adapters: bool,
) -> Result<Vec<Vec<f32>>> {
    if ids.is_empty() || ids.len() != caches.len() {
        return Err(ModelError::Generation(format!(
            "a batched step needs one cache per token, got {} token(s) and {} cache(s)",
            ids.len(),
            caches.len()
        )));
    }
    let rows: Vec<(usize, u32)> = ids.iter().enumerate().map(|(i, &t)| (i, t)).collect();
    let want: Vec<usize> = (0..rows.len()).collect();
    forward_rows(&vec![model; rows.len()], &rows, caches, use_adapters, &want)
}

/// Feeds several sequences at once, each its own tokens on its own model
/// handle: `feeds[i] = (model, ids)` follows the positions in `caches[i]`.
/// Returns, per sequence, the logits after its last token. The models must
/// share their base weights (clones of one loaded model, adapters apart).
/// A prompt chunk of one sequence and decode tokens of others thus go
/// through the weights together.
pub(crate) fn step_feeds(
    feeds: &[(&Llama, &[u32])],
    caches: &mut [&mut PackedKvCache],
    use_adapters: bool,
) -> Result<Vec<Vec<f32>>> {
    if feeds.is_empty() || feeds.len() != caches.len() || feeds.iter().any(|f| f.1.is_empty()) {
        return Err(ModelError::Generation(format!(
            "a step needs at least one token per sequence and one cache per sequence, \
             got {} sequence(s) and {} cache(s)",
            feeds.len(),
            caches.len()
        )));
    }
    let models: Vec<&Llama> = feeds.iter().map(|f| f.0).collect();
    let mut rows = Vec::new();
    let mut want = Vec::with_capacity(feeds.len());
    for (seq, (_, ids)) in feeds.iter().enumerate() {
        rows.extend(ids.iter().map(|&t| (seq, t)));
        want.push(rows.len() - 1);
    }
    for (c, (_, ids)) in caches.iter_mut().zip(feeds) {
        c.reserve(ids.len());
    }
    forward_rows(&models, &rows, caches, use_adapters, &want)
}

/// Shapes and switches of the model, read once per call.
struct Dims {
    hidden: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    eps: f32,
    /// Multiplies `q·kᵀ` (the spec's `attention_scale`).
    scale: f32,
    activation: Activation,
}

impl Dims {
    fn of(model: &Llama) -> Self {
        let c = &model.cfg;
        Self {
            hidden: c.hidden_size,
            heads: c.num_attention_heads,
            kv_heads: c.num_key_value_heads,
            head_dim: c.head_dim,
            eps: c.rms_norm_eps as f32,
            scale: model.spec.attention_scale,
            activation: model.spec.activation,
        }
    }

    fn kv_dim(&self) -> usize {
        self.kv_heads * self.head_dim
    }

    fn attn(&self) -> AttnDims {
        AttnDims {
            heads: self.heads,
            kv_heads: self.kv_heads,
            head_dim: self.head_dim,
            scale: self.scale,
        }
    }
}

/// One call's rows: which sequence each feeds, and at which position.
struct Rows<'a> {
    rows: &'a [(usize, u32)],
    positions: Vec<usize>,
}

/// Runs `rows` (sequence index, token) through the model, appending each
/// row's keys and values to its sequence's cache in order, and returns the
/// logits of the rows listed in `want`. Sequence `s` runs `models[s]` (the
/// base weights are read from `models[0]`, which all share). The block is
/// [`crate::family`]'s, every switch of the spec read here.
fn forward_rows(
    models: &[&Llama],
    rows: &[(usize, u32)],
    caches: &mut [&mut PackedKvCache],
    use_adapters: bool,
    want: &[usize],
) -> Result<Vec<Vec<f32>>> {
    let model = check_shared_base(models, caches.len())?;
    let dims = Dims::of(model);
    for c in caches.iter() {
        c.check_fits(&model.cfg)?;
    }
    let rs = Rows {
        rows,
        positions: row_positions(model, rows, caches)?,
    };
    let n = rows.len();
    let mut x = embed_rows(models, rows, use_adapters)?;
    let scale = model.spec.embedding_scale;
    if scale != 1.0 {
        x.iter_mut().for_each(|v| *v *= scale);
    }
    for (layer, block) in model.layers.iter().enumerate() {
        let blocks = LayerBlocks {
            base: block,
            seqs: models.iter().map(|m| &m.layers[layer]).collect(),
            use_adapters,
        };
        let h = rms_norm_rows(&x, &block.input_layernorm, dims.eps, n)?;
        let att = attention_rows(model, &dims, &blocks, &h, &rs, caches, layer)?;
        let att = post_norm_rows(att, block.post_attn_norm.as_ref(), dims.eps, n)?;
        add_into(&mut x, &att);
        let h = rms_norm_rows(&x, &block.post_attention_layernorm, dims.eps, n)?;
        let f = ffn_rows(&dims, &blocks, &h, &rs)?;
        let f = post_norm_rows(f, block.post_ffn_norm.as_ref(), dims.eps, n)?;
        add_into(&mut x, &f);
    }
    if want.is_empty() {
        return Ok(Vec::new());
    }
    let picked: Vec<f32> = want
        .iter()
        .flat_map(|&i| x[i * dims.hidden..(i + 1) * dims.hidden].iter().copied())
        .collect();
    let h = rms_norm_rows(&picked, &model.norm, dims.eps, want.len())?;
    let head = lm_head(model)?;
    let mut logits = head.matmul(&h, want.len())?;
    let vocab = head.dims().0;
    patch_head_rows(models, rows, want, use_adapters, (&h, &mut logits), vocab)?;
    if let Some(cap) = model.spec.final_logit_softcap {
        logits.iter_mut().for_each(|z| *z = cap * (*z / cap).tanh());
    }
    Ok(logits.chunks_exact(vocab).map(<[f32]>::to_vec).collect())
}

/// The attention of one layer for all rows, output projection included:
/// q/k/v (with biases), per-head q/k norms, the layer's RoPE, the new keys
/// and values appended to each row's cache, attention over the layer's window.
fn attention_rows(
    model: &Llama,
    dims: &Dims,
    blocks: &LayerBlocks,
    h: &[f32],
    rs: &Rows,
    caches: &mut [&mut PackedKvCache],
    layer: usize,
) -> Result<Vec<f32>> {
    let n = rs.rows.len();
    let at = &blocks.base.self_attn;
    let [mut q, mut k, mut v] = blocks.linears(
        |b| {
            let a = &b.self_attn;
            [&a.q_proj, &a.k_proj, &a.v_proj]
        },
        h,
        rs,
    )?;
    for (y, bias) in [
        (&mut q, &at.q_bias),
        (&mut k, &at.k_bias),
        (&mut v, &at.v_bias),
    ] {
        if let Some(b) = bias {
            add_bias_rows(y, b)?;
        }
    }
    let hd = dims.head_dim;
    if let Some(w) = &at.q_norm {
        q = rms_norm_rows(&q, w, dims.eps, n * dims.heads)?;
    }
    if let Some(w) = &at.k_norm {
        k = rms_norm_rows(&k, w, dims.eps, n * dims.kv_heads)?;
    }
    let rope = model.rope_of(layer);
    with_f32(&rope.cos, |cos| {
        with_f32(&rope.sin, |sin| {
            rope_rows(&mut q, dims.heads, hd, &rs.positions, cos, sin);
            rope_rows(&mut k, dims.kv_heads, hd, &rs.positions, cos, sin);
        })
    })??;
    let kvd = dims.kv_dim();
    for (i, &(seq, _)) in rs.rows.iter().enumerate() {
        caches[seq].push(layer, &k[i * kvd..][..kvd], &v[i * kvd..][..kvd]);
    }
    let window = model.spec.layer(layer).window;
    let seqs: Vec<usize> = rs.rows.iter().map(|r| r.0).collect();
    let att = attend_rows(
        &dims.attn(),
        &q,
        &seqs,
        &rs.positions,
        window,
        caches,
        layer,
    );
    let [out] = blocks.linears(|b| [&b.self_attn.o_proj], &att, rs)?;
    Ok(out)
}

/// The gated feed-forward `act(h·Gate) ⊙ (h·Up) · Down` for all rows.
fn ffn_rows(dims: &Dims, blocks: &LayerBlocks, h: &[f32], rs: &Rows) -> Result<Vec<f32>> {
    let [mut gate, up] = blocks.linears(|b| [&b.mlp.gate_proj, &b.mlp.up_proj], h, rs)?;
    gate_in_place(&mut gate, &up, dims.activation);
    let [out] = blocks.linears(|b| [&b.mlp.down_proj], &gate, rs)?;
    Ok(out)
}

/// The models of a step must be handles on one set of base weights (their
/// adapters apart): returns the one whose base weights are read.
fn check_shared_base<'m>(models: &[&'m Llama], seqs: usize) -> Result<&'m Llama> {
    let Some(&first) = models.first() else {
        return Err(ModelError::Generation(
            "a step needs at least one sequence".into(),
        ));
    };
    if models.len() != seqs {
        return Err(ModelError::Generation(format!(
            "{} model(s) for {seqs} sequence(s)",
            models.len()
        )));
    }
    let head = lm_head_arc(first);
    if models.iter().any(|m| !std::ptr::eq(lm_head_arc(m), head)) {
        return Err(ModelError::Generation(
            "the sequences of one step must run on clones of one loaded base model".into(),
        ));
    }
    Ok(first)
}

/// The address of a model's packed LM head (shared by every clone).
fn lm_head_arc(m: &Llama) -> *const PackedMatrix {
    match &m.lm_head {
        LmHead::Packed(p) => std::sync::Arc::as_ptr(p),
        _ => std::ptr::null(),
    }
}

/// One layer as the rows of a step see it: the block whose base weights
/// are multiplied, and each sequence's own block (whose adapters it adds).
struct LayerBlocks<'a> {
    base: &'a Block,
    seqs: Vec<&'a Block>,
    use_adapters: bool,
}

impl LayerBlocks<'_> {
    /// `x·Wᵀ` for `n` rows and the `K` linears `pick` names (they read the
    /// same input: one job for the thread team), then each row's own
    /// adapter term `scale·(x·Aᵀ)·Bᵀ`, added per run of rows of one sequence.
    fn linears<const K: usize>(
        &self,
        pick: impl Fn(&Block) -> [&Linear; K],
        x: &[f32],
        rs: &Rows,
    ) -> Result<[Vec<f32>; K]> {
        let n = rs.rows.len();
        let mats = pick(self.base)
            .iter()
            .map(|lin| match lin.base() {
                BaseWeight::Packed(w) => Ok(w.as_ref()),
                _ => Err(not_packed("a linear layer")),
            })
            .collect::<Result<Vec<&PackedMatrix>>>()?;
        let mut ys: [Vec<f32>; K] = matmul_many(&mats, x, n)?
            .try_into()
            .map_err(|_| not_packed("a linear layer"))?;
        if !self.use_adapters {
            return Ok(ys);
        }
        let inp = x.len() / n.max(1);
        let mut start = 0;
        while start < n {
            let seq = rs.rows[start].0;
            let end = start + rs.rows[start..].iter().take_while(|r| r.0 == seq).count();
            for (lin, y) in pick(self.seqs[seq]).iter().zip(ys.iter_mut()) {
                if let Some(ad) = lin.adapter() {
                    let out = y.len() / n;
                    add_lora(
                        lin,
                        ad,
                        &x[start * inp..end * inp],
                        &mut y[start * out..end * out],
                    )?;
                }
            }
            start = end;
        }
        Ok(ys)
    }
}

/// Each row's position: its cache's length plus the earlier rows of the same
/// sequence in this call.
fn row_positions(
    model: &Llama,
    rows: &[(usize, u32)],
    caches: &[&mut PackedKvCache],
) -> Result<Vec<usize>> {
    let mut next: Vec<usize> = caches.iter().map(|c| c.len()).collect();
    let mut positions = Vec::with_capacity(rows.len());
    for &(seq, _) in rows {
        let p = next
            .get_mut(seq)
            .ok_or_else(|| ModelError::Generation(format!("row for missing sequence {seq}")))?;
        if *p >= model.cfg.max_position_embeddings {
            return Err(ModelError::ContextOverflow {
                needed: *p + 1,
                max: model.cfg.max_position_embeddings,
            });
        }
        positions.push(*p);
        *p += 1;
    }
    Ok(positions)
}

/// Each row's embedding: its sequence's trainable token row for a chosen token, else
/// the base table's row.
fn embed_rows(models: &[&Llama], rows: &[(usize, u32)], use_adapters: bool) -> Result<Vec<f32>> {
    let Embedding::Packed(table) = &models[0].embed_tokens else {
        return Err(not_packed("the token embedding"));
    };
    let h = table.dims().1;
    let mut x = Vec::with_capacity(rows.len() * h);
    for &(seq, id) in rows {
        if id as usize >= table.dims().0 {
            return Err(ModelError::Generation(format!(
                "token id {id} is outside the vocabulary of {}",
                table.dims().0
            )));
        }
        let own = models[seq].active_token_rows(use_adapters);
        match own.and_then(|r| Some((r, r.position(id)?))) {
            Some((r, j)) => with_f32(r.rows(), |d| x.extend_from_slice(&d[j * h..(j + 1) * h]))?,
            None => x.extend(table.row_f32(id as usize)?),
        }
    }
    Ok(x)
}

/// Recomputes, for each wanted row whose sequence has token rows in its head, the
/// chosen columns from them (`want[i]`'s logits are `logits[i·vocab..]`, its normed
/// hidden state `h[i·hidden..]`). Rows on the bare base pay nothing.
fn patch_head_rows(
    models: &[&Llama],
    rows: &[(usize, u32)],
    want: &[usize],
    use_adapters: bool,
    (h, logits): (&[f32], &mut [f32]),
    vocab: usize,
) -> Result<()> {
    let hidden = h.len() / want.len().max(1);
    for (i, &w) in want.iter().enumerate() {
        let Some(tr) = models[rows[w].0].active_token_rows(use_adapters) else {
            continue;
        };
        let Some(head) = tr.head_rows() else {
            continue;
        };
        let (hi, zi) = (
            &h[i * hidden..(i + 1) * hidden],
            &mut logits[i * vocab..(i + 1) * vocab],
        );
        with_f32(head, |d| tr.patch_logit_row(d, hi, zi))?;
    }
    Ok(())
}

fn lm_head(model: &Llama) -> Result<&PackedMatrix> {
    match &model.lm_head {
        LmHead::Packed(m) => Ok(m),
        _ => Err(not_packed("the LM head")),
    }
}

fn not_packed(what: &str) -> ModelError {
    ModelError::Config(format!(
        "{what} is not packed; load the model with WeightPath::Packed for this step"
    ))
}

/// Adds the adapter's `scale·(x·Aᵀ)·Bᵀ` to `y`, row by row.
fn add_lora(lin: &Linear, ad: &LoraAdapter, x: &[f32], y: &mut [f32]) -> Result<()> {
    let (out, inp) = lin.dims();
    let r = ad.rank();
    let scale = ad.scale as f32;
    with_f32(&ad.a, |a| {
        with_f32(&ad.b, |b| {
            for (xr, yr) in x.chunks_exact(inp).zip(y.chunks_exact_mut(out)) {
                let t: Vec<f32> = a.chunks_exact(inp).map(|ar| dot(ar, xr)).collect();
                for (yo, br) in yr.iter_mut().zip(b.chunks_exact(r)) {
                    *yo += scale * dot(br, &t);
                }
            }
        })
    })?
}
