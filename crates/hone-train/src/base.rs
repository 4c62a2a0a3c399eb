//! The frozen base as a run holds it (`--base-weights`): which load path a mode needs,
//! the mode a run in a directory will use (a resume keeps its checkpoint's), and making
//! a loaded model fit its mode (Q8_0 blocks for `q8_0`).
//!
//! Why front ends ask here before loading: `q8_0` and `native` keep the GGUF blocks
//! (`WeightPath::Packed`, no f32 copy of the base), `f32` and `bf16` need the f32
//! weights (`WeightPath::F32`). A resume with `auto` takes its checkpoint's mode, so the
//! load path depends on the checkpoint, which only hone-train reads.

use std::path::Path;
use std::sync::Arc;

use hone_model::decode::{PackedKind, PackedMatrix};
use hone_model::ops::BaseWeights;
use hone_model::{BaseWeight, Linear, Llama, WeightPath};

use crate::checkpoint::{self, CHECKPOINTS_DIR};
use crate::error::{Result, TrainError};
use crate::resume::read_state;

/// How a model must be loaded for `mode` (resolved, see [`mode_for_run`]).
pub fn weight_path(mode: BaseWeights) -> WeightPath {
    if mode.keeps_blocks() {
        WeightPath::Packed
    } else {
        WeightPath::F32
    }
}

/// The mode a run writing to `out_dir` uses: `requested`, or with `auto` and `resume`
/// the mode its newest valid checkpoint recorded ([`BaseWeights::for_run`]).
pub fn mode_for_run(requested: BaseWeights, out_dir: &Path, resume: bool) -> Result<BaseWeights> {
    let recorded = if resume {
        match checkpoint::latest_valid(&out_dir.join(CHECKPOINTS_DIR))? {
            Some(c) => Some(read_state(&c)?.config.base_weights),
            None => None,
        }
    } else {
        None
    };
    Ok(BaseWeights::for_run(requested, recorded))
}

/// Checks that `model` holds its base as `mode` (resolved) needs; for `q8_0`
/// re-quantizes every block matrix of another kind to Q8_0 (the linears, the LM head and
/// the embedding; a tied head stays shared), for `bf16` holds the dense base in bf16
/// ([`to_bf16`]). A dense model in a block mode, or the reverse, is an error naming the
/// load path.
pub fn fit_model(model: &mut Llama, mode: BaseWeights) -> Result<()> {
    let packed = model
        .layers
        .iter()
        .flat_map(linears)
        .filter(|l| matches!(l.base(), BaseWeight::Packed(_)))
        .count();
    let total = model.layers.len() * 7;
    let wrong = |held: &str, want: WeightPath| -> Result<()> {
        Err(TrainError::Config(format!(
            "--base-weights {} needs the model loaded with WeightPath::{want:?}, but its \
             base is {held}",
            mode.as_str()
        )))
    };
    match (mode.keeps_blocks(), packed) {
        (true, n) if n < total => return wrong("partly or wholly f32", WeightPath::Packed),
        (false, n) if n > 0 => return wrong("in quantized blocks", WeightPath::F32),
        _ => {}
    }
    let in_bf16 =
        model.layers.iter().flat_map(linears).any(
            |l| matches!(l.base(), BaseWeight::Dense(t) if t.dtype() == candle_core::DType::BF16),
        );
    if in_bf16 && mode != BaseWeights::Bf16 {
        return Err(TrainError::Config(format!(
            "--base-weights {} needs the f32 weights, but this model's base is held in bf16 \
             (fitted for --base-weights bf16); load it again",
            mode.as_str()
        )));
    }
    match mode {
        BaseWeights::Q8_0 => to_q8_0(model)?,
        BaseWeights::Bf16 => to_bf16(model)?,
        _ => {}
    }
    Ok(())
}

/// Holds the dense base in bf16 (`--base-weights bf16`): every linear, the embedding
/// and the LM head (a tied head stays shared), each f32 tensor dropped as soon as its
/// bf16 twin exists, so the base takes 2 bytes per parameter and no f32 copy remains.
/// The products read the bf16 tensors directly; the embedding widens the rows it gathers.
fn to_bf16(model: &mut Llama) -> Result<()> {
    use hone_model::llama::{Embedding, LmHead};
    use hone_model::ops::base_weights::to_bf16_tensor;
    let err =
        |e: &dyn std::fmt::Display| TrainError::Config(format!("holding the base in bf16: {e}"));
    for (_, lin) in model.linears_mut() {
        if let BaseWeight::Dense(t) = lin.base() {
            let held = to_bf16_tensor(t).map_err(|e| err(&e))?;
            let (out, inp) = lin.dims();
            let adapter = lin.adapter().cloned();
            *lin = Linear::new(BaseWeight::Dense(held), out, inp);
            lin.set_adapter(adapter).map_err(|e| err(&e))?;
        }
    }
    if let (Embedding::Dense(e), LmHead::Dense(h)) = (&model.embed_tokens, &model.lm_head) {
        let tied = e.id() == h.id();
        let e = to_bf16_tensor(e).map_err(|e| err(&e))?;
        let h = if tied {
            e.clone()
        } else {
            to_bf16_tensor(h).map_err(|e| err(&e))?
        };
        model.embed_tokens = Embedding::Dense(e);
        model.lm_head = LmHead::Dense(h);
    }
    Ok(())
}

/// Bytes the model holds for its frozen base: every linear, the embedding and the LM
/// head (a tied head once), as f32 or bf16 tensors or blocks. bf16 copies of f32
/// weights made for products come on top (`hone_model::ops::base_weights::cache_bytes`;
/// none in a run, whose bf16 base is held in bf16).
pub fn base_bytes(model: &Llama) -> usize {
    use hone_model::llama::{Embedding, LmHead};
    let weight = |w: &BaseWeight| match w {
        BaseWeight::Dense(t) => t.elem_count() * t.dtype().size_in_bytes(),
        BaseWeight::Packed(p) => p.bytes(),
    };
    let linears: usize = model
        .layers
        .iter()
        .flat_map(linears)
        .map(|l| weight(l.base()))
        .sum();
    let (embed, head) = match (&model.embed_tokens, &model.lm_head) {
        (Embedding::Dense(e), LmHead::Dense(h)) => (
            BaseWeight::Dense(e.clone()),
            (e.id() != h.id()).then(|| BaseWeight::Dense(h.clone())),
        ),
        (Embedding::Packed(e), LmHead::Packed(h)) => (
            BaseWeight::Packed(e.clone()),
            (!Arc::ptr_eq(e, h)).then(|| BaseWeight::Packed(h.clone())),
        ),
        (Embedding::Dense(e), LmHead::Packed(h)) => (
            BaseWeight::Dense(e.clone()),
            Some(BaseWeight::Packed(h.clone())),
        ),
        (Embedding::Packed(e), LmHead::Dense(h)) => (
            BaseWeight::Packed(e.clone()),
            Some(BaseWeight::Dense(h.clone())),
        ),
    };
    linears + weight(&embed) + head.as_ref().map_or(0, weight)
}

fn linears(b: &hone_model::llama::Block) -> [&Linear; 7] {
    let (a, m) = (&b.self_attn, &b.mlp);
    [
        &a.q_proj,
        &a.k_proj,
        &a.v_proj,
        &a.o_proj,
        &m.gate_proj,
        &m.up_proj,
        &m.down_proj,
    ]
}

/// `p` as Q8_0 (itself when it already is).
fn q8_0(p: &Arc<PackedMatrix>) -> Result<Arc<PackedMatrix>> {
    if p.kind() == PackedKind::Q8_0 {
        return Ok(p.clone());
    }
    let (rows, cols) = p.dims();
    let mut w = Vec::with_capacity(rows * cols);
    for r in 0..rows {
        w.extend(p.row_f32(r).map_err(model_err)?);
    }
    Ok(Arc::new(
        PackedMatrix::quantize_q8_0(rows, cols, &w).map_err(model_err)?,
    ))
}

fn model_err(e: hone_model::ModelError) -> TrainError {
    TrainError::Config(format!("re-quantizing the base to Q8_0: {e}"))
}

fn to_q8_0(model: &mut Llama) -> Result<()> {
    for (_, lin) in model.linears_mut() {
        if let BaseWeight::Packed(p) = lin.base() {
            if p.kind() != PackedKind::Q8_0 {
                let (out, inp) = lin.dims();
                let adapter = lin.adapter().cloned();
                *lin = Linear::new(BaseWeight::Packed(q8_0(p)?), out, inp);
                lin.set_adapter(adapter).map_err(model_err)?;
            }
        }
    }
    use hone_model::llama::{Embedding, LmHead};
    let tied = match (&model.embed_tokens, &model.lm_head) {
        (Embedding::Packed(e), LmHead::Packed(h)) => Arc::ptr_eq(e, h),
        _ => false,
    };
    if let Embedding::Packed(e) = &model.embed_tokens {
        model.embed_tokens = Embedding::Packed(q8_0(e)?);
    }
    match (&model.lm_head, &model.embed_tokens) {
        (LmHead::Packed(_), Embedding::Packed(e)) if tied => {
            model.lm_head = LmHead::Packed(e.clone());
        }
        (LmHead::Packed(h), _) => model.lm_head = LmHead::Packed(q8_0(h)?),
        _ => {}
    }
    Ok(())
}
