//! Differentiable ops with hand-written backward passes (see architecture.md, "Performance model").
//!
//! Every op here is a candle custom op with a fast f32 CPU forward and a `bwd`, so that
//! `Tensor::backward()` flows through it. They exist because candle's fused ops
//! (`rms_norm`, `softmax_last_dim`, `rope`, `QMatMul`) drop gradients silently, and its
//! differentiable basic-op versions are slow and allocate many temporaries. Frozen inputs
//! (norm weights, base linear weights, RoPE tables) never receive gradients.
//!
//! Each op is tested against a reference built from stock differentiable candle ops, on
//! both the forward and the gradient (autograd and finite differences).
//!
//! Training runs the decoder layers as one op, [`lora_stack`] (`stack.rs`): per layer
//! `h = rms_norm(x)`; `q, k, v = lora(h)` (+ frozen biases, then per-head q/k norms);
//! `x += post_norm(lora_o(rope_attention(q, k, v)))` (the layer's RoPE table, window
//! and score scale); `x += post_norm(lora_down(act(lora_gate(h2)) · lora_up(h2)))` with
//! `h2 = rms_norm(x)` and `act` silu or GELU-tanh ([`glu`]); every optional step is the
//! spec's (`crate::family`). Forward and backward run on plain buffers with the kernels
//! of the single ops below. Then `rms_norm` and `lm_head_cross_entropy(hidden, w_lm,
//! targets, mask, softcap)` on the shifted sequence. The single ops (`lora_linear`,
//! `rope_attention`, `glu`, `rms_norm`, …) stay as
//! tested building blocks: the unfused composition of them is the reference the stack is
//! tested against, and `rope`, `causal_softmax` and `masked_cross_entropy` are the
//! pieces of the references in turn.

mod amx;
mod attention;
pub mod base_weights;
#[cfg(test)]
mod bench;
pub(crate) mod bf16;
mod bf16_pairs;
mod bf16_product;
pub mod bf16_speed;
#[cfg(test)]
mod block_test;
mod causal_softmax;
mod cpu;
mod cross_entropy;
mod frozen_linear;
mod glu;
pub(crate) mod kernel;
mod lm_head_loss;
mod lora_linear;
mod low_rank;
mod packed_product;
pub mod peak;
mod rms_norm;
mod rope;
pub mod scratch;
mod stack;
#[cfg(test)]
mod testutil;

pub use attention::{rope_attention, AttentionSpec};
pub use base_weights::{set_base_weights, BaseWeights, Precision};
pub use bf16::Bf16Kernel;
pub use causal_softmax::causal_softmax;
pub use cross_entropy::{masked_cross_entropy, masked_token_accuracy, TokenAccuracy};
pub use frozen_linear::{frozen_linear, frozen_linear_base};
pub use glu::{glu, silu_mul};
pub use lm_head_loss::{lm_head_cross_entropy, lm_head_cross_entropy_base, lm_head_sequence_nll};
pub use lora_linear::{lora_linear, Dropout};
pub use rms_norm::rms_norm;
pub use rope::{rope, rope_i};
pub use stack::{lora_stack, module_seed, StackLayer, StackSpec};
