//! The whole decoder stack of LoRA training as one op: every layer's norms, projections
//! (with their adapters), attention, gated feed-forward and residual adds, forward and
//! backward, on plain buffers. Every optional step of the block in `crate::family` is
//! here, once: frozen q/k/v biases, per-head q/k norms, the post-attention and
//! post-feed-forward norms, SwiGLU or GeGLU, sliding windows, per-layer RoPE tables and a
//! custom attention scale.
//!
//! Why one op: built from the per-layer custom ops, a step of SmolLM2 puts about 400
//! nodes into candle's graph, and candle's backward gives every edge a zero-filled
//! gradient buffer and an add pass, runs the residual adds as separate binary ops, and
//! keeps each intermediate as a tensor of its own. Profiles put that bookkeeping at about
//! a third of a training step. Here the forward saves exactly what the backward reads (a
//! [`LayerTape`] per layer), the residual adds ride on the projections' gemm calls
//! (`beta`/accumulate), and the backward walks the layers in reverse with the same
//! kernels the single ops use ([`LoraKernel`], the attention [`Context`], the RMSNorm
//! and gated-activation slice functions), so the two paths cannot compute different
//! things.
//!
//! The trainable parameters enter as one flat tensor `theta` (every adapter's `A` then
//! `B`, layer by layer, module by module in `TARGET_MODULES` order), so that candle's
//! autograd still delivers one gradient per LoRA matrix: the caller builds `theta` with
//! `Tensor::cat` of the flattened matrices, and the backward of `cat` splits the
//! gradient. Frozen weights never get one.

use std::sync::{Arc, Mutex};

use super::attention::{Context as AttentionContext, Dims as AttentionDims};
use super::base_weights::{self, PreparedWeight};
use super::glu::glu_into;
use super::kernel::f32_data;
use super::lora_linear::{AdapterSlices, Dims as LinDims, Dropout, LoraKernel};
use super::rms_norm::{rms_norm_rows, rms_norm_rows_bwd};
use super::scratch;
use crate::family::Activation;
use crate::linear::BaseWeight;
use candle_core::{bail, CpuStorage, CustomOp2, DType, Layout, Result, Shape, Storage, Tensor};

mod backward;
mod layout;
use layout::{Shapes, DOWN, GATE, K, O, Q, UP, V};
pub use layout::{StackLayer, StackSpec};

/// The dropout seed of projection `module` (index into `TARGET_MODULES`) of `layer`, so
/// that every mask of a pass differs and a pass is reproducible from its seed.
pub fn module_seed(pass_seed: u64, layer: usize, module: usize) -> u64 {
    pass_seed
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add((layer as u64) * 16 + module as u64)
}

/// Runs the decoder layers over `x: [b, t, hidden]` (the embeddings) and returns the
/// residual stream after the last layer (before the final norm). `theta` holds the
/// adapters' matrices flattened in `TARGET_MODULES` order, layer by layer (`None` or
/// empty: no adapters). Differentiable in `x` and `theta`.
pub fn lora_stack(
    x: &Tensor,
    theta: Option<&Tensor>,
    layers: &[StackLayer],
    spec: &StackSpec,
) -> Result<Tensor> {
    let (b, t, hidden) = x.dims3()?;
    if x.dtype() != DType::F32 {
        bail!("lora_stack: only f32 is supported");
    }
    let shape = Shapes::of(layers, hidden, spec)?;
    let theta = match theta {
        Some(th) => th.flatten_all()?.contiguous()?,
        None => Tensor::zeros(0, DType::F32, x.device())?,
    };
    if theta.elem_count() != shape.theta_len {
        bail!(
            "lora_stack: theta has {} values, the adapters need {}",
            theta.elem_count(),
            shape.theta_len
        );
    }
    let table = |x: &Tensor| -> Result<Arc<Vec<f32>>> {
        Ok(Arc::new(x.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?))
    };
    let half = shape.head_dim / 2;
    let per_row = spec.ropes.first().is_some_and(|(cos, _)| cos.rank() == 3);
    let want = if per_row { b * t * half } else { t * half };
    let mut tables = Vec::with_capacity(spec.ropes.len());
    for (cos, sin) in spec.ropes {
        if cos.elem_count() != want || sin.elem_count() != want || (cos.rank() == 3) != per_row {
            bail!(
                "lora_stack: RoPE tables {:?} do not fit {b}x{t}",
                cos.dims()
            );
        }
        tables.push((table(cos)?, table(sin)?));
    }
    let starts = match spec.segment_starts {
        Some(s) if s.len() != b * t => {
            bail!(
                "lora_stack: {} segment starts for {} tokens",
                s.len(),
                b * t
            )
        }
        Some(s) => Some(Arc::new(s.to_vec())),
        None => None,
    };
    let dims = AttentionDims::new(b, t, (spec.heads, spec.kv_heads), shape.head_dim)
        .with_scale(Some(spec.attention_scale));
    let attention = layers
        .iter()
        .map(|l| -> Result<AttentionContext> {
            let (cos, sin) = &tables[l.rope];
            Ok(AttentionContext::new(
                dims.with_window(l.window)?,
                (cos.clone(), sin.clone()),
                per_row,
                starts.clone(),
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    let biases = layers
        .iter()
        .map(|l| {
            l.qkv_bias
                .as_ref()
                .map(|bs| -> Result<[Vec<f32>; 3]> {
                    let v = |t: &Tensor| -> Result<Vec<f32>> {
                        t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()
                    };
                    Ok([v(&bs[0])?, v(&bs[1])?, v(&bs[2])?])
                })
                .transpose()
        })
        .collect::<Result<Vec<_>>>()?;
    let precision = base_weights::current_precision();
    let frozen = layers
        .iter()
        .map(|l| -> Result<[PreparedWeight; 7]> {
            let [q, k, v, o, gate, up, down] = l
                .weights
                .each_ref()
                .map(|w| PreparedWeight::new(w, precision));
            Ok([q?, k?, v?, o?, gate?, up?, down?])
        })
        .collect::<Result<Vec<_>>>()?;
    let op = Stack {
        layers: layers.to_vec(),
        frozen,
        biases,
        shape,
        rows: b * t,
        seq: t,
        eps: spec.rms_norm_eps as f32,
        activation: spec.activation,
        dropout: spec.dropout.filter(|(p, _)| *p > 0.0),
        attention,
        save: x.track_op() || theta.track_op(),
        checkpoint: spec.checkpoint,
        tapes: Mutex::new(Vec::new()),
    };
    if let Some((p, _)) = op.dropout {
        if !(0.0..1.0).contains(&p) {
            bail!("lora dropout must be in [0, 1), got {p}");
        }
    }
    x.contiguous()?.apply_op2(&theta, op)
}

/// What one layer's backward reads, saved by the forward. The gated activation and the
/// attention probabilities are recomputed rather than kept. The buffers of steps a
/// layer does not have (q/k norms, post norms) stay empty.
struct LayerTape {
    /// The layer's input (residual stream) and its normed copy.
    x_in: Vec<f32>,
    h1: Vec<f32>,
    /// Attention's inputs before RoPE (after bias and q/k norm), token-major.
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    /// q and k before their per-head norms (q/k norm layers only).
    q_raw: Vec<f32>,
    k_raw: Vec<f32>,
    /// Attention output (o_proj's input).
    y: Vec<f32>,
    /// o_proj's output before the post-attention norm (post-norm layers only).
    o: Vec<f32>,
    /// Residual stream after attention, and its normed copy (the MLP's input).
    x_mid: Vec<f32>,
    h2: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
    /// down_proj's output before the post-feed-forward norm (post-norm layers only).
    down: Vec<f32>,
    /// Per module: `dropout(input)·Aᵀ` (empty without an adapter).
    xa: [Vec<f32>; 7],
}

impl LayerTape {
    /// Hands every buffer back to the scratch pool.
    fn recycle(self) {
        let [xa0, xa1, xa2, xa3, xa4, xa5, xa6] = self.xa;
        recycle([
            self.x_in, self.h1, self.q, self.k, self.v, self.q_raw, self.k_raw, self.y, self.o,
            self.x_mid, self.h2, self.gate, self.up, self.down, xa0, xa1, xa2, xa3, xa4, xa5, xa6,
        ]);
    }
}

/// What the forward keeps of one layer for the backward.
enum Saved {
    /// Every activation the layer's backward reads.
    Tape(Box<LayerTape>),
    /// Only the layer's input (gradient checkpointing): the backward runs the layer
    /// forward again to get its tape.
    Input(Vec<f32>),
}

/// Hands buffers back to the scratch pool.
fn recycle<const N: usize>(bufs: [Vec<f32>; N]) {
    bufs.into_iter().for_each(scratch::give);
}

/// Adds `bias` to every row of `y`.
fn add_rows(y: &mut [f32], bias: &[f32]) {
    for row in y.chunks_exact_mut(bias.len()) {
        row.iter_mut().zip(bias).for_each(|(a, b)| *a += b);
    }
}

/// A pooled copy of `x`.
fn copy(x: &[f32]) -> Vec<f32> {
    let mut y = scratch::take(x.len());
    y.copy_from_slice(x);
    y
}

struct Stack {
    layers: Vec<StackLayer>,
    /// Per layer, per projection: the weight with its bf16 copy when products run in
    /// bf16 (read once when the op is built, so the backward uses the forward's path).
    frozen: Vec<[PreparedWeight; 7]>,
    /// Per layer: the q, k, v biases as slices' owners (see [`StackLayer::qkv_bias`]).
    biases: Vec<Option<[Vec<f32>; 3]>>,
    shape: Shapes,
    rows: usize,
    /// Tokens per row (the batch is `rows / seq` rows).
    seq: usize,
    eps: f32,
    activation: Activation,
    dropout: Option<(f32, u64)>,
    /// Per layer: its attention (RoPE table, window, scale).
    attention: Vec<AttentionContext>,
    /// Whether a backward can follow (an input tracks a gradient): only then are the
    /// tapes kept.
    save: bool,
    /// Keep layer inputs only ([`StackSpec::checkpoint`]).
    checkpoint: bool,
    tapes: Mutex<Vec<Saved>>,
}

/// The CPU data of a tensor (contiguous f32).
fn with_data<T>(t: &Tensor, what: &str, f: impl FnOnce(&[f32]) -> Result<T>) -> Result<T> {
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        Storage::Cpu(s) => f(f32_data(s, layout, what)?),
        _ => bail!("lora_stack: only the CPU backend is supported"),
    }
}

/// Borrowed data of one layer's frozen tensors.
struct LayerData<'a> {
    input_norm: &'a [f32],
    post_norm: &'a [f32],
    weights: [&'a [f32]; 7],
    /// q's and k's per-head norm weights.
    qk_norm: Option<[&'a [f32]; 2]>,
    post_attn_norm: Option<&'a [f32]>,
    post_ffn_norm: Option<&'a [f32]>,
}

/// `norm(x)` of `x`'s rows of width `d` into a new pooled buffer.
fn normed(x: &[f32], w: &[f32], eps: f32, d: usize) -> Vec<f32> {
    let mut y = scratch::take(x.len());
    rms_norm_rows(x, w, eps, &mut y, d);
    y
}

/// The gradient of `norm(x)`'s input for the output gradient `g`, in a new pooled buffer.
fn normed_bwd(x: &[f32], w: &[f32], g: &[f32], eps: f32, d: usize) -> Vec<f32> {
    let mut dx = scratch::take(x.len());
    rms_norm_rows_bwd(x, w, g, eps, (&mut dx, false), d);
    dx
}

impl Stack {
    /// Runs `f` with slices of layer `li`'s frozen tensors.
    fn with_layer<T>(&self, li: usize, f: impl FnOnce(&LayerData) -> Result<T>) -> Result<T> {
        let l = &self.layers[li];
        let [qn, kn] = l
            .qk_norm
            .as_ref()
            .map_or([None, None], |[q, k]| [Some(q), Some(k)]);
        let optional = [qn, kn, l.post_attn_norm.as_ref(), l.post_ffn_norm.as_ref()];
        // A weight kept in blocks or in bf16 has no f32 data: an empty tensor stands in
        // (its operand reads the blocks or the bf16 copy).
        let none = Tensor::zeros(0, DType::F32, &candle_core::Device::Cpu)?;
        let weights = l.weights.iter().map(|w| match w {
            BaseWeight::Dense(t) if t.dtype() == DType::F32 => t,
            _ => &none,
        });
        let guards: Vec<_> = [&l.input_norm, &l.post_norm]
            .into_iter()
            .chain(weights)
            .chain(optional.into_iter().flatten())
            .map(|t| t.storage_and_layout())
            .collect();
        let mut slices = Vec::with_capacity(guards.len());
        for (storage, layout) in &guards {
            match &**storage {
                Storage::Cpu(s) => slices.push(f32_data(s, layout, "lora_stack weight")?),
                _ => bail!("lora_stack: only the CPU backend is supported"),
            }
        }
        // The optional tensors follow the nine fixed ones, in `optional`'s order.
        let mut rest = slices[9..].iter().copied();
        let mut next = |present: bool| present.then(|| rest.next()).flatten();
        let qk_norm = match (next(qn.is_some()), next(kn.is_some())) {
            (Some(q), Some(k)) => Some([q, k]),
            _ => None,
        };
        let data = LayerData {
            input_norm: slices[0],
            post_norm: slices[1],
            weights: std::array::from_fn(|m| slices[2 + m]),
            qk_norm,
            post_attn_norm: next(optional[2].is_some()),
            post_ffn_norm: next(optional[3].is_some()),
        };
        f(&data)
    }

    /// The kernel of module `m` of layer `li` with its weights and `theta`'s adapter.
    fn kernel<'a>(&'a self, li: usize, m: usize, w: &'a [f32], theta: &'a [f32]) -> LoraKernel<'a> {
        let (out, inp) = self.shape.io(m);
        let adapter = self.layers[li].adapters[m].map(|(r, scale)| {
            let at = self.shape.offsets[li][m];
            let (a, b) = theta[at..at + r * (inp + out)].split_at(r * inp);
            AdapterSlices {
                a,
                b,
                r,
                scale: scale as f32,
                dropout: self.dropout.map(|(p, seed)| Dropout {
                    p,
                    seed: module_seed(seed, li, m),
                }),
            }
        });
        LoraKernel {
            dims: LinDims {
                rows: self.rows,
                n_in: inp,
                n_out: out,
            },
            w: self.frozen[li][m].operand(w),
            adapter,
        }
    }

    /// One layer forward: `x_in` → the layer's output, and its tape.
    fn layer_forward(
        &self,
        li: usize,
        x_in: Vec<f32>,
        theta: &[f32],
    ) -> Result<(Vec<f32>, LayerTape)> {
        let (n, hd, im) = (self.rows, self.shape.hidden, self.shape.intermediate);
        let (qw, kvw, dh) = (self.shape.q_width, self.shape.kv_width, self.shape.head_dim);
        self.with_layer(li, |ld| {
            let kern = |m: usize| self.kernel(li, m, ld.weights[m], theta);
            let mut xa: [Vec<f32>; 7] = Default::default();
            let h1 = normed(&x_in, ld.input_norm, self.eps, hd);
            let (mut q, mut k, mut v) = (
                scratch::take(n * qw),
                scratch::take(n * kvw),
                scratch::take(n * kvw),
            );
            xa[Q] = kern(Q).forward(&h1, &mut q, false);
            xa[K] = kern(K).forward(&h1, &mut k, false);
            xa[V] = kern(V).forward(&h1, &mut v, false);
            if let Some([bq, bk, bv]) = &self.biases[li] {
                add_rows(&mut q, bq);
                add_rows(&mut k, bk);
                add_rows(&mut v, bv);
            }
            let (mut q_raw, mut k_raw) = (Vec::new(), Vec::new());
            if let Some([wq, wk]) = ld.qk_norm {
                q_raw = std::mem::take(&mut q);
                k_raw = std::mem::take(&mut k);
                q = normed(&q_raw, wq, self.eps, dh);
                k = normed(&k_raw, wk, self.eps, dh);
            }
            let y = self.attention[li].forward(&q, &k, &v);
            let (x_mid, o) = self.residual_add(&x_in, ld.post_attn_norm, |out, acc| {
                xa[O] = kern(O).forward(&y, out, acc);
            });
            let h2 = normed(&x_mid, ld.post_norm, self.eps, hd);
            let (mut gate, mut up) = (scratch::take(n * im), scratch::take(n * im));
            xa[GATE] = kern(GATE).forward(&h2, &mut gate, false);
            xa[UP] = kern(UP).forward(&h2, &mut up, false);
            let mut act = scratch::take(n * im);
            glu_into(self.activation, &gate, &up, &mut act);
            let (out, down) = self.residual_add(&x_mid, ld.post_ffn_norm, |out, acc| {
                xa[DOWN] = kern(DOWN).forward(&act, out, acc);
            });
            scratch::give(act);
            let tape = LayerTape {
                x_in,
                h1,
                q,
                k,
                v,
                q_raw,
                k_raw,
                y,
                o,
                x_mid,
                h2,
                gate,
                up,
                down,
                xa,
            };
            Ok((out, tape))
        })
    }

    /// `x + f` or, with a post norm `w`, `x + norm(f, w)`, where `project(out, acc)`
    /// writes `f` into `out` (adding to it when `acc`). Without a norm the projection
    /// accumulates straight onto a copy of the residual stream; with one, `f` is kept
    /// (the second value) for the norm's backward.
    fn residual_add(
        &self,
        x: &[f32],
        post_norm: Option<&[f32]>,
        project: impl FnOnce(&mut [f32], bool),
    ) -> (Vec<f32>, Vec<f32>) {
        let Some(w) = post_norm else {
            let mut out = copy(x);
            project(&mut out, true);
            return (out, Vec::new());
        };
        let mut f = scratch::take(x.len());
        project(&mut f, false);
        let mut out = normed(&f, w, self.eps, self.shape.hidden);
        out.iter_mut().zip(x).for_each(|(o, &xv)| *o += xv);
        (out, f)
    }
}

impl CustomOp2 for Stack {
    fn name(&self) -> &'static str {
        "hone-lora-stack"
    }

    fn cpu_fwd(
        &self,
        sx: &CpuStorage,
        lx: &Layout,
        st: &CpuStorage,
        lt: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        scratch::begin_pass((self.rows, self.seq));
        let theta = f32_data(st, lt, "lora_stack theta")?;
        let mut x = f32_data(sx, lx, "lora_stack x")?.to_vec();
        let mut tapes = Vec::with_capacity(if self.save { self.layers.len() } else { 0 });
        for li in 0..self.layers.len() {
            let input = (self.save && self.checkpoint).then(|| copy(&x));
            let (out, tape) = self.layer_forward(li, x, theta)?;
            match input {
                Some(x_in) => {
                    tape.recycle();
                    tapes.push(Saved::Input(x_in));
                }
                None if self.save => tapes.push(Saved::Tape(Box::new(tape))),
                None => tape.recycle(),
            }
            x = out;
        }
        *self.tapes.lock().expect("tape lock") = tapes;
        Ok((CpuStorage::F32(x), lx.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        theta: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        // Taken, not borrowed: each layer's activations go back to the scratch pool as
        // soon as its backward is done (a second backward of the same graph is an error).
        let mut tapes = std::mem::take(&mut *self.tapes.lock().expect("tape lock"));
        if tapes.len() != self.layers.len() {
            bail!("lora_stack: backward without the forward's saved activations (run twice?)");
        }
        let mut g: Vec<f32> = grad.contiguous()?.flatten_all()?.to_vec1()?;
        let mut dtheta = vec![0f32; self.shape.theta_len];
        with_data(theta, "lora_stack theta", |th| {
            let mut rest: &mut [f32] = &mut dtheta;
            for li in (0..self.layers.len()).rev() {
                let (head, mine) =
                    std::mem::take(&mut rest).split_at_mut(self.shape.layer_starts[li]);
                rest = head;
                let need_dx = li > 0 || x.track_op();
                let tape = match tapes.pop().expect("one tape per layer") {
                    Saved::Tape(tape) => *tape,
                    Saved::Input(x_in) => {
                        let (out, tape) = self.layer_forward(li, x_in, th)?;
                        scratch::give(out);
                        tape
                    }
                };
                self.layer_backward(li, &tape, &mut g, (th, mine), need_dx)?;
                tape.recycle();
            }
            Ok(())
        })?;
        let dx = x
            .track_op()
            .then(|| Tensor::from_vec(g, x.shape(), x.device()))
            .transpose()?;
        let dtheta = theta
            .track_op()
            .then(|| Tensor::from_vec(dtheta, theta.shape(), theta.device()))
            .transpose()?;
        Ok((dx, dtheta))
    }
}
