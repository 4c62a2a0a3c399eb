//! The adapter alone as a llama.cpp LoRA GGUF (`llama-cli --lora`, Ollama's `ADAPTER`),
//! laid out as llama.cpp's `convert_lora_to_gguf.py` writes it: `general.type = adapter`,
//! `adapter.type = lora`, `adapter.lora.alpha`, and per adapted weight
//! `<gguf weight name>.lora_a` (`[r, in]`, ggml `ne = [in, r]`) and `.lora_b`
//! (`[out, r]`). llama.cpp scales by `alpha / r` as PEFT does. For Llama, B's rows are
//! permuted like the base's Q/K rows (interleaved RoPE order); A is not.
//! Written in f32, so the adapter is exactly the trained one.

use std::path::Path;

use candle_core::quantized::gguf_file::Value;
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::DType;

use super::file::{io, write_file, ExportStats};
use super::metadata::gguf_spec;
use super::quant;
use crate::atomic_file;
use crate::error::{ModelError, Result};
use crate::family::{QkRows, TensorRole};
use crate::linear::Linear;
use crate::llama::{Block, Llama};
use crate::load::permute_rope_rows;

/// The GGUF tensor name suffixes llama.cpp reads.
pub const LORA_A_SUFFIX: &str = ".lora_a";
pub const LORA_B_SUFFIX: &str = ".lora_b";

/// Writes the adapters attached to `model` (PEFT's `lora_alpha` = `alpha`) as a LoRA
/// GGUF at `out`. An error when no adapter is attached, or when the adapter replaces
/// token rows: llama.cpp's LoRA format has no replaced rows (its own
/// `convert_lora_to_gguf.py` stops at PEFT's `trainable_tokens_delta` as "not a lora_A
/// or lora_B tensor"), and leaving them out would export a different model.
pub fn write_lora_gguf(model: &Llama, alpha: f64, out: &Path) -> Result<ExportStats> {
    if let Some(rows) = model.token_rows() {
        return Err(ModelError::Unsupported(format!(
            "the adapter trains {} token row(s) (trainable_token_indices {:?}), which a llama.cpp \
             LoRA GGUF cannot hold; export the merged model instead (without --lora)",
            rows.ids().len(),
            rows.ids()
        )));
    }
    let spec = gguf_spec(&model.spec)?;
    let interleaved = spec.qk_rows == QkRows::Interleaved;
    let (heads, kv_heads) = (spec.dims.num_heads, spec.dims.num_kv_heads);
    let mut tensors = Vec::new();
    for (i, blk) in model.layers.iter().enumerate() {
        for (role, lin) in adaptable(blk) {
            let Some(ad) = lin.adapter() else { continue };
            let name = spec.tensor_name(role, Some(i)).ok_or_else(|| {
                ModelError::Config(format!("{role:?} has no GGUF name in layer {i}"))
            })?;
            let a = ad.a.to_dtype(DType::F32)?.contiguous()?;
            let b = ad.b.to_dtype(DType::F32)?;
            let b = match role {
                TensorRole::Q if interleaved => permute_rope_rows(&b, heads)?,
                TensorRole::K if interleaved => permute_rope_rows(&b, kv_heads)?,
                _ => b.contiguous()?,
            };
            tensors.push((
                format!("{name}{LORA_A_SUFFIX}"),
                QTensor::quantize(&a, GgmlDType::F32)?,
            ));
            tensors.push((
                format!("{name}{LORA_B_SUFFIX}"),
                QTensor::quantize(&b, GgmlDType::F32)?,
            ));
        }
    }
    if tensors.is_empty() {
        return Err(ModelError::Adapter(
            "no adapter is attached: nothing to export".into(),
        ));
    }
    let arch = spec.family.gguf_architecture();
    let md = vec![
        (
            "general.architecture".to_string(),
            Value::String(arch.into()),
        ),
        ("general.type".into(), Value::String("adapter".into())),
        (
            "general.name".into(),
            Value::String("hone LoRA adapter".into()),
        ),
        ("adapter.type".into(), Value::String("lora".into())),
        ("adapter.lora.alpha".into(), Value::F32(alpha as f32)),
    ];
    atomic_file::write_with(out, |tmp| write_file(tmp, &md, &tensors), io(out))?;
    Ok(ExportStats {
        tensors: tensors.len(),
        bytes: std::fs::metadata(out).map_err(io(out))?.len(),
        types: quant::type_counts(tensors.iter().map(|(_, q)| q.dtype())),
    })
}

/// The linears LoRA can adapt in a block, with their roles.
fn adaptable(b: &Block) -> [(TensorRole, &Linear); 7] {
    let (a, m) = (&b.self_attn, &b.mlp);
    [
        (TensorRole::Q, &a.q_proj),
        (TensorRole::K, &a.k_proj),
        (TensorRole::V, &a.v_proj),
        (TensorRole::O, &a.o_proj),
        (TensorRole::Gate, &m.gate_proj),
        (TensorRole::Up, &m.up_proj),
        (TensorRole::Down, &m.down_proj),
    ]
}

/// Whether any linear of `model` has an adapter attached.
pub(crate) fn has_adapters(model: &Llama) -> bool {
    model.token_rows().is_some()
        || model
            .layers
            .iter()
            .any(|b| adaptable(b).iter().any(|(_, l)| l.adapter().is_some()))
}
