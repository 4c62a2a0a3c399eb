//! The decode step on packed weights: the same block as
//! [`crate::Llama::forward_hidden`] (every family's switches), written on
//! f32 slices.
//!
//! One call takes a list of *rows*, each a token fed to one sequence: a
//! prompt chunk is several rows of one sequence, a batched decode step one row
//! per sequence. The linear layers multiply all rows at once (the weights are
//! read once per call); RoPE and attention use each row's own position and
//! cache. Equivalence with the candle path is tested in `tests/it/packed.rs`.

use crate::error::{ModelError, Result};
use crate::family::Activation;
use crate::linear::{BaseWeight, Linear, LoraAdapter};
use crate::llama::{Block, Embedding, Llama, LmHead, Mlp};

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
        logits = forward_rows(model, &rows, &mut caches, use_adapters, want)?;
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
    forward_rows(model, &rows, caches, use_adapters, &want)
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
/// logits of the rows listed in `want`. The block is [`crate::family`]'s,
/// every switch of the spec read here.
fn forward_rows(
    model: &Llama,
    rows: &[(usize, u32)],
    caches: &mut [&mut PackedKvCache],
    use_adapters: bool,
    want: &[usize],
) -> Result<Vec<Vec<f32>>> {
    let dims = Dims::of(model);
    for c in caches.iter() {
        c.check_fits(&model.cfg)?;
    }
    let rs = Rows {
        rows,
        positions: row_positions(model, rows, caches)?,
    };
    let n = rows.len();
    let mut x = embed_rows(model, rows)?;
    let scale = model.spec.embedding_scale;
    if scale != 1.0 {
        x.iter_mut().for_each(|v| *v *= scale);
    }
    for (layer, block) in model.layers.iter().enumerate() {
        let h = rms_norm_rows(&x, &block.input_layernorm, dims.eps, n)?;
        let att = attention_rows(model, &dims, block, &h, &rs, caches, layer, use_adapters)?;
        let att = post_norm_rows(att, block.post_attn_norm.as_ref(), dims.eps, n)?;
        add_into(&mut x, &att);
        let h = rms_norm_rows(&x, &block.post_attention_layernorm, dims.eps, n)?;
        let f = ffn_rows(&dims, &block.mlp, &h, n, use_adapters)?;
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
    if let Some(cap) = model.spec.final_logit_softcap {
        logits.iter_mut().for_each(|z| *z = cap * (*z / cap).tanh());
    }
    let vocab = head.dims().0;
    Ok(logits.chunks_exact(vocab).map(<[f32]>::to_vec).collect())
}

/// The attention of one layer for all rows, output projection included:
/// q/k/v (with biases), per-head q/k norms, the layer's RoPE, the new keys
/// and values appended to each row's cache, attention over the layer's window.
#[allow(clippy::too_many_arguments)]
fn attention_rows(
    model: &Llama,
    dims: &Dims,
    block: &Block,
    h: &[f32],
    rs: &Rows,
    caches: &mut [&mut PackedKvCache],
    layer: usize,
    use_adapters: bool,
) -> Result<Vec<f32>> {
    let n = rs.rows.len();
    let at = &block.self_attn;
    let qkv = linears_rows(&[&at.q_proj, &at.k_proj, &at.v_proj], h, n, use_adapters)?;
    let [mut q, mut k, mut v]: [Vec<f32>; 3] = qkv
        .try_into()
        .map_err(|_| not_packed("the attention projections"))?;
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
    linear_rows(&at.o_proj, &att, n, use_adapters)
}

/// The gated feed-forward `act(h·Gate) ⊙ (h·Up) · Down` for all rows.
fn ffn_rows(dims: &Dims, mlp: &Mlp, h: &[f32], n: usize, use_adapters: bool) -> Result<Vec<f32>> {
    let gu = linears_rows(&[&mlp.gate_proj, &mlp.up_proj], h, n, use_adapters)?;
    let [mut gate, up]: [Vec<f32>; 2] = gu
        .try_into()
        .map_err(|_| not_packed("the MLP projections"))?;
    gate_in_place(&mut gate, &up, dims.activation);
    linear_rows(&mlp.down_proj, &gate, n, use_adapters)
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

fn embed_rows(model: &Llama, rows: &[(usize, u32)]) -> Result<Vec<f32>> {
    let Embedding::Packed(table) = &model.embed_tokens else {
        return Err(not_packed("the token embedding"));
    };
    let mut x = Vec::with_capacity(rows.len() * table.dims().1);
    for &(_, id) in rows {
        if id as usize >= table.dims().0 {
            return Err(ModelError::Generation(format!(
                "token id {id} is outside the vocabulary of {}",
                table.dims().0
            )));
        }
        x.extend(table.row_f32(id as usize)?);
    }
    Ok(x)
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

/// `x·Wᵀ (+ scale·(x·Aᵀ)·Bᵀ)` for `n` rows, for several linears that read
/// the same input (one job for the thread team).
fn linears_rows(
    lins: &[&Linear],
    x: &[f32],
    n: usize,
    use_adapters: bool,
) -> Result<Vec<Vec<f32>>> {
    let mats = lins
        .iter()
        .map(|lin| match lin.base() {
            BaseWeight::Packed(w) => Ok(w.as_ref()),
            _ => Err(not_packed("a linear layer")),
        })
        .collect::<Result<Vec<&PackedMatrix>>>()?;
    let mut ys = matmul_many(&mats, x, n)?;
    if use_adapters {
        for (lin, y) in lins.iter().zip(ys.iter_mut()) {
            if let Some(ad) = lin.adapter() {
                add_lora(lin, ad, x, y)?;
            }
        }
    }
    Ok(ys)
}

fn linear_rows(lin: &Linear, x: &[f32], n: usize, use_adapters: bool) -> Result<Vec<f32>> {
    let mut ys = linears_rows(&[lin], x, n, use_adapters)?;
    ys.pop().ok_or_else(|| not_packed("a linear layer"))
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
