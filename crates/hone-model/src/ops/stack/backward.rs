//! The stack's backward, one layer at a time in reverse: each layer's tape (saved by
//! the forward) and the gradient of its output give the gradient of its input and its
//! adapters' `(dA, dB)` (split out of `stack.rs` to keep both files short).

use super::layout::{DOWN, GATE, K, O, Q, UP, V};
use super::{normed_bwd, recycle, LayerTape, Stack};
use crate::ops::glu::{glu_bwd_into, glu_into};
use crate::ops::lora_linear::LoraGrads;
use crate::ops::rms_norm::rms_norm_rows_bwd;
use crate::ops::scratch;
use candle_core::Result;

impl Stack {
    /// One layer backward: `g` holds the gradient of the layer's output and becomes that
    /// of its input (when `need_dx`); `dtheta` is this layer's share of `theta`'s
    /// gradient.
    pub(super) fn layer_backward(
        &self,
        li: usize,
        tape: &LayerTape,
        g: &mut [f32],
        (theta, dtheta): (&[f32], &mut [f32]),
        need_dx: bool,
    ) -> Result<()> {
        let (n, hd, im) = (self.rows, self.shape.hidden, self.shape.intermediate);
        let (qw, kvw, head_dim) = (self.shape.q_width, self.shape.kv_width, self.shape.head_dim);
        let mut dab = self.split_grads(li, dtheta);
        self.with_layer(li, |ld| {
            let kern = |m: usize| self.kernel(li, m, ld.weights[m], theta);
            let xa = |m: usize| Some(tape.xa[m].as_slice()).filter(|x| !x.is_empty());
            // MLP: the post-feed-forward norm, down, the gate, gate and up, then the
            // pre-feed-forward norm into `g`.
            let d_down = ld
                .post_ffn_norm
                .map(|w| normed_bwd(&tape.down, w, g, self.eps, hd));
            let act = if self.layers[li].adapters[DOWN].is_some() {
                let mut act = scratch::take(n * im);
                glu_into(self.activation, &tape.gate, &tape.up, &mut act);
                act
            } else {
                Vec::new()
            };
            let mut d_act = scratch::take(n * im);
            let dy_down = d_down.as_deref().unwrap_or(g);
            kern(DOWN).backward(
                &act,
                xa(DOWN),
                dy_down,
                grads(Some(&mut d_act), dab[DOWN].take()),
            );
            scratch::give(act);
            d_down.into_iter().for_each(scratch::give);
            let (mut d_gate, mut d_up) = (scratch::take(n * im), scratch::take(n * im));
            let inputs = (tape.gate.as_slice(), tape.up.as_slice());
            glu_bwd_into(self.activation, inputs, &d_act, &mut d_gate, &mut d_up);
            scratch::give(d_act);
            let mut dh = scratch::take(n * hd);
            kern(GATE).backward(
                &tape.h2,
                xa(GATE),
                &d_gate,
                grads(Some(&mut dh), dab[GATE].take()),
            );
            let acc = LoraGrads {
                dx: Some((&mut dh, true)),
                dab: dab[UP].take(),
            };
            kern(UP).backward(&tape.h2, xa(UP), &d_up, acc);
            rms_norm_rows_bwd(&tape.x_mid, ld.post_norm, &dh, self.eps, (g, true), hd);
            recycle([d_gate, d_up, dh]);
            // Attention: the post-attention norm, o_proj, attention, the q/k norms,
            // q/k/v, then the input norm into `g`.
            let d_o = ld
                .post_attn_norm
                .map(|w| normed_bwd(&tape.o, w, g, self.eps, hd));
            let mut dy = scratch::take(n * qw);
            let dy_o = d_o.as_deref().unwrap_or(g);
            kern(O).backward(&tape.y, xa(O), dy_o, grads(Some(&mut dy), dab[O].take()));
            d_o.into_iter().for_each(scratch::give);
            let mut dqkv = scratch::take(n * (qw + 2 * kvw));
            self.attention[li].backward(&tape.q, &tape.k, &tape.v, &dy, &mut dqkv);
            scratch::give(dy);
            let (dq, dkv) = dqkv.split_at_mut(n * qw);
            let (dk, dv) = dkv.split_at_mut(n * kvw);
            if let Some([wq, wk]) = ld.qk_norm {
                let dq_raw = normed_bwd(&tape.q_raw, wq, dq, self.eps, head_dim);
                let dk_raw = normed_bwd(&tape.k_raw, wk, dk, self.eps, head_dim);
                dq.copy_from_slice(&dq_raw);
                dk.copy_from_slice(&dk_raw);
                recycle([dq_raw, dk_raw]);
            }
            let mut dh = need_dx.then(|| scratch::take(n * hd));
            for (m, d, acc) in [(Q, &*dq, false), (K, &*dk, true), (V, &*dv, true)] {
                let out = LoraGrads {
                    dx: dh.as_deref_mut().map(|x| (x, acc)),
                    dab: dab[m].take(),
                };
                kern(m).backward(&tape.h1, xa(m), d, out);
            }
            if let Some(dh) = dh {
                rms_norm_rows_bwd(&tape.x_in, ld.input_norm, &dh, self.eps, (g, true), hd);
                scratch::give(dh);
            }
            scratch::give(dqkv);
            Ok(())
        })
    }

    /// This layer's gradient slice split into per-module `(dA, dB)`.
    fn split_grads<'a>(
        &self,
        li: usize,
        mut rest: &'a mut [f32],
    ) -> [Option<(&'a mut [f32], &'a mut [f32])>; 7] {
        let mut out: [Option<(&mut [f32], &mut [f32])>; 7] = Default::default();
        for (m, slot) in out.iter_mut().enumerate() {
            let Some((r, _)) = self.layers[li].adapters[m] else {
                continue;
            };
            let (o, i) = self.shape.io(m);
            let (mine, tail) = std::mem::take(&mut rest).split_at_mut(r * (i + o));
            *slot = Some(mine.split_at_mut(r * i));
            rest = tail;
        }
        out
    }
}

/// Where a projection's backward writes: `dx` overwritten, and the adapter's grads.
fn grads<'a>(
    dx: Option<&'a mut Vec<f32>>,
    dab: Option<(&'a mut [f32], &'a mut [f32])>,
) -> LoraGrads<'a> {
    LoraGrads {
        dx: dx.map(|x| (x.as_mut_slice(), false)),
        dab,
    }
}
