//! `hone export`: a model (adapters merged) as a llama.cpp GGUF file, the adapter alone as
//! a llama.cpp LoRA GGUF, and an Ollama `Modelfile` for either.
//!
//! Why GGUF: llama.cpp, Ollama, LM Studio and llama-cpp-python read it, so a fine-tuned
//! model leaves hone as one file with its tokenizer and chat template inside.
//!
//! - **Tensors** get llama.cpp's names from the model's
//!   [`DecoderSpec`](crate::family::DecoderSpec) ([`WeightFormat::Gguf`]); Llama's Q/K rows
//!   are permuted back into llama.cpp's interleaved-RoPE order; norm weights are written
//!   as the multiplier hone holds (Gemma's `1 + w`, as llama.cpp's converter stores it);
//!   Llama 3 RoPE scaling becomes the `rope_freqs.weight` divisors llama.cpp expects.
//! - **Types** ([`GgufType`]): f16, bf16, q8_0, q4_1, and q4_k_m, llama.cpp's mix
//!   (see [`quant`]). Quantization is candle's (`QTensor::quantize`, the ggml block
//!   formats and k-quant `from_float`). 1-D tensors (norms, biases) stay f32.
//! - **Metadata** ([`metadata`]): the architecture keys written from the spec, plus, from
//!   a GGUF source, its `tokenizer.*` keys (vocabulary, merges, special tokens, chat
//!   template) and descriptive `general.*` keys; from an HF directory, the same
//!   `tokenizer.*` keys built from its `tokenizer.json` ([`tokenizer_json`]). The written file is read back with
//!   hone's own GGUF parser and must give the model's spec, or nothing is published:
//!   a model llama.cpp's keys cannot express is an error, never a misread file.
//!
//! Every write is atomic with mode 0644 ([`crate::atomic_file`]).

use std::path::Path;

use candle_core::quantized::QTensor;
use candle_core::{DType, Tensor};

use crate::atomic_file;
use crate::error::{ModelError, Result};
use crate::family::{RopeScaling, TensorRole};
use crate::llama::Llama;
use crate::load::permute_rope_rows;
use crate::merge::{block_tensor, model_tensor};
use file::{io, write_file};

pub mod file;
pub mod lora_gguf;
pub mod metadata;
pub mod modelfile;
pub mod quant;
pub mod tokenizer_json;

pub use file::{ggml_type_name, read_gguf_content, ExportStats};
pub use lora_gguf::write_lora_gguf;
pub use metadata::TokenizerSource;
pub use modelfile::modelfile;
pub use quant::GgufType;
pub use tokenizer_json::tokenizer_keys;

/// Writes `model` (adapters merged or none attached) as a GGUF of type `ty` at `out`,
/// with the tokenizer metadata of `tokenizer`. Needs dense f32 weights (load with
/// [`crate::WeightPath::F32`]). Refuses a model with attached adapters: merge first.
pub fn write_gguf(
    model: &Llama,
    tokenizer: &TokenizerSource<'_>,
    ty: GgufType,
    out: &Path,
) -> Result<ExportStats> {
    if lora_gguf::has_adapters(model) {
        return Err(ModelError::Adapter(
            "the model has adapters attached: merge them (merge_adapters) before export".into(),
        ));
    }
    let spec = metadata::gguf_spec(&model.spec)?;
    let md = metadata::gguf_metadata(&spec, tokenizer, ty)?;
    let named = gguf_tensors(model, &spec)?;
    let n_layers = spec.dims.num_layers;
    let mut qtensors = Vec::with_capacity(named.len());
    for (name, role, layer, t) in &named {
        let dtype = quant::tensor_type(ty, *role, *layer, n_layers, t, spec.tie_word_embeddings);
        let q = QTensor::quantize(t, dtype)
            .map_err(|e| ModelError::Config(format!("quantizing {name} as {dtype:?}: {e}")))?;
        qtensors.push((name.clone(), q));
    }
    let types = quant::type_counts(qtensors.iter().map(|(_, q)| q.dtype()));
    atomic_file::write_with(
        out,
        |tmp| {
            write_file(tmp, &md, &qtensors)?;
            metadata::check_round_trip(tmp, &spec)
        },
        io(out),
    )?;
    let bytes = std::fs::metadata(out).map_err(io(out))?.len();
    Ok(ExportStats {
        tensors: qtensors.len(),
        bytes,
        types,
    })
}

/// A tensor of the export: its GGUF name, role, layer (`None` for model-level) and f32 data.
type NamedTensor = (String, TensorRole, Option<usize>, Tensor);

/// Every tensor of the GGUF, f32, with its name, role and layer, in llama.cpp's order
/// (model-level first, then per layer).
fn gguf_tensors(model: &Llama, spec: &crate::family::DecoderSpec) -> Result<Vec<NamedTensor>> {
    let mut out = Vec::new();
    for role in spec.model_roles() {
        let Some(name) = spec.tensor_name(role, None) else {
            continue;
        };
        let t = match role {
            TensorRole::RopeFreqs => rope_freqs(spec)?,
            other => model_tensor(model, other)?,
        };
        out.push((name, role, None, t));
    }
    let (heads, kv_heads) = (spec.dims.num_heads, spec.dims.num_kv_heads);
    let interleaved = spec.qk_rows == crate::family::QkRows::Interleaved;
    for (i, blk) in model.layers.iter().enumerate() {
        for role in spec.layer_roles() {
            let Some(name) = spec.tensor_name(role, Some(i)) else {
                continue;
            };
            let t = block_tensor(blk, role)?
                .ok_or_else(|| ModelError::Config(format!("layer {i} has no {role:?} weight")))?;
            let t = t.to_dtype(DType::F32)?;
            let t = match role {
                TensorRole::Q if interleaved => permute_rope_rows(&t, heads)?,
                TensorRole::K if interleaved => permute_rope_rows(&t, kv_heads)?,
                _ => t,
            };
            out.push((name, role, Some(i), t));
        }
    }
    out.into_iter()
        .map(|(n, r, l, t)| Ok((n, r, l, t.to_dtype(DType::F32)?.contiguous()?)))
        .collect()
}

/// llama.cpp's `rope_freqs.weight`: the divisor of each inverse frequency.
fn rope_freqs(spec: &crate::family::DecoderSpec) -> Result<Tensor> {
    let RopeScaling::FreqFactors(f) = &spec.rope_full.scaling else {
        return Err(ModelError::Config(
            "rope_freqs.weight is only written for per-frequency RoPE scaling".into(),
        ));
    };
    Ok(Tensor::new(f.as_slice(), &candle_core::Device::Cpu)?)
}
