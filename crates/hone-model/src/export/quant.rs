//! Which ggml type each tensor of an export gets.
//!
//! f16, bf16, q8_0 and q4_1 put every 2-D weight in that type. q4_k_m is llama.cpp's
//! `Q4_K_M` mix (`llama_tensor_get_type` in llama.cpp's `llama-quant.cpp`): q4_K, with
//! q6_K for the output matrix (the embedding when tied) and for `attn_v` and `ffn_down`
//! in the layers `use_more_bits` picks. q4_1 also keeps the output matrix at q6_K, as
//! llama.cpp's quantizer does for every 4-bit type. A k-quant needs rows of a multiple of
//! 256; otherwise llama.cpp's fallbacks apply (q4_K → q5_0, q6_K → q8_0), and a 32-block
//! type needs rows of a multiple of 32, else f16. 1-D tensors (norms, biases,
//! `rope_freqs`) stay f32, as llama.cpp keeps them.

use std::collections::BTreeMap;

use candle_core::quantized::GgmlDType;
use candle_core::Tensor;

use crate::error::{ModelError, Result};
use crate::family::TensorRole;

/// The file types `hone export` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GgufType {
    F16,
    Bf16,
    Q8_0,
    Q4KM,
    Q4_1,
}

impl GgufType {
    pub const ALL: [GgufType; 5] = [Self::F16, Self::Bf16, Self::Q8_0, Self::Q4KM, Self::Q4_1];

    /// `f16`, `bf16`, `q8_0`, `q4_k_m`, `q4_1` (case-insensitive).
    pub fn parse(s: &str) -> Result<Self> {
        let s = s.trim().to_ascii_lowercase();
        Self::ALL
            .into_iter()
            .find(|t| t.name() == s)
            .ok_or_else(|| {
                ModelError::Config(format!(
                    "unknown GGUF type `{s}`; valid: {}",
                    Self::ALL.map(|t| t.name()).join(", ")
                ))
            })
    }

    /// The name in file names and flags.
    pub fn name(self) -> &'static str {
        match self {
            Self::F16 => "f16",
            Self::Bf16 => "bf16",
            Self::Q8_0 => "q8_0",
            Self::Q4KM => "q4_k_m",
            Self::Q4_1 => "q4_1",
        }
    }

    /// llama.cpp's `general.file_type` (`llama_ftype`).
    pub fn file_type(self) -> u32 {
        match self {
            Self::F16 => 1,
            Self::Q4_1 => 3,
            Self::Q8_0 => 7,
            Self::Q4KM => 15,
            Self::Bf16 => 32,
        }
    }

    /// Whether the weights are block-quantized (then `general.quantization_version`).
    pub fn is_quantized(self) -> bool {
        !matches!(self, Self::F16 | Self::Bf16)
    }
}

/// llama.cpp's choice of layers that get more bits in the `_M` mixes.
fn use_more_bits(i: usize, n: usize) -> bool {
    i < n / 8 || i >= 7 * n / 8 || (i as i64 - (n / 8) as i64) % 3 == 2
}

/// The ggml type of one tensor (see the module doc). `layer` is `None` for model-level
/// tensors; `tied` says the embedding is also the output matrix.
pub fn tensor_type(
    ty: GgufType,
    role: TensorRole,
    layer: Option<usize>,
    n_layers: usize,
    t: &Tensor,
    tied: bool,
) -> GgmlDType {
    if t.rank() < 2 {
        return GgmlDType::F32;
    }
    let is_output = role == TensorRole::LmHead || (tied && role == TensorRole::Embed);
    let want = match ty {
        GgufType::F16 => GgmlDType::F16,
        GgufType::Bf16 => GgmlDType::BF16,
        GgufType::Q8_0 => GgmlDType::Q8_0,
        GgufType::Q4_1 if is_output => GgmlDType::Q6K,
        GgufType::Q4_1 => GgmlDType::Q4_1,
        GgufType::Q4KM if is_output => GgmlDType::Q6K,
        GgufType::Q4KM => match (role, layer) {
            (TensorRole::V | TensorRole::Down, Some(i)) if use_more_bits(i, n_layers) => {
                GgmlDType::Q6K
            }
            _ => GgmlDType::Q4K,
        },
    };
    let cols = t.dims().last().copied().unwrap_or(0);
    fits(want, cols)
}

/// llama.cpp's fallback when the rows do not fill the type's blocks.
fn fits(want: GgmlDType, cols: usize) -> GgmlDType {
    let t = if cols.is_multiple_of(want.block_size()) {
        want
    } else {
        match want {
            GgmlDType::Q4K => GgmlDType::Q5_0,
            GgmlDType::Q5K => GgmlDType::Q5_1,
            GgmlDType::Q6K => GgmlDType::Q8_0,
            other => other,
        }
    };
    if cols.is_multiple_of(t.block_size()) {
        t
    } else {
        GgmlDType::F16
    }
}

/// How many tensors of each type, by llama.cpp's type name, most common first.
pub fn type_counts(types: impl Iterator<Item = GgmlDType>) -> Vec<(String, usize)> {
    let mut m: BTreeMap<&'static str, usize> = BTreeMap::new();
    for t in types {
        *m.entry(super::file::ggml_type_name(t)).or_default() += 1;
    }
    let mut v: Vec<(String, usize)> = m.into_iter().map(|(k, n)| (k.to_string(), n)).collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    v
}

/// A warning when most of the export's weights get the block type most of the base's
/// layer weights already have (`q4_1` from a Q4_1 base, `q4_k_m` from a Q4_K_M one).
///
/// Why: the base's weights sit exactly on that type's grid, and a LoRA change is usually
/// smaller than half a grid step, so re-quantizing `W + ΔW` to the same grid rounds most
/// of `ΔW` back to `W` and the export behaves like the base. Measured on SmolLM2 (Q4_1
/// base, scripts/interop.sh): the q4_1 export kept the fine-tune in 0 of 15 answers, the
/// q8_0 and q4_k_m exports (other grids) kept it in all. `base` and `written` are
/// [`type_counts`] of the base's layer weights and of the written file, most common first.
pub fn same_grid_warning(base: &[(String, usize)], written: &[(String, usize)]) -> Option<String> {
    let (b, _) = base.first()?;
    let (w, _) = written.first()?;
    let unquantized = ["f32", "f16", "bf16"];
    (b == w && !unquantized.contains(&b.as_str())).then(|| {
        format!(
            "warning: most weights are written as {w}, the type the base already stores them in; \
             re-rounding to the same grid loses most of a LoRA change (the export behaves like \
             the base model). Prefer another --type (q8_0 is the default) or the LoRA GGUF with \
             the base (Modelfile.adapter)"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn t(rows: usize, cols: usize) -> Tensor {
        Tensor::zeros((rows, cols), candle_core::DType::F32, &Device::Cpu).unwrap()
    }

    #[test]
    fn q4_k_m_follows_llama_cpps_mix_and_fallbacks() {
        let n = 24;
        let ty =
            |role, layer, w: &Tensor, tied| tensor_type(GgufType::Q4KM, role, layer, n, w, tied);
        let w = t(512, 512);
        assert_eq!(ty(TensorRole::Q, Some(5), &w, false), GgmlDType::Q4K);
        assert_eq!(ty(TensorRole::V, Some(0), &w, false), GgmlDType::Q6K);
        assert_eq!(ty(TensorRole::V, Some(4), &w, false), GgmlDType::Q4K);
        // (i - n/8) % 3 == 2: layer 5 of 24.
        assert_eq!(ty(TensorRole::Down, Some(5), &w, false), GgmlDType::Q6K);
        assert_eq!(ty(TensorRole::Down, Some(23), &w, false), GgmlDType::Q6K);
        assert_eq!(ty(TensorRole::LmHead, None, &w, false), GgmlDType::Q6K);
        assert_eq!(ty(TensorRole::Embed, None, &w, true), GgmlDType::Q6K);
        assert_eq!(ty(TensorRole::Embed, None, &w, false), GgmlDType::Q4K);
        // SmolLM2's 576-wide rows: q5_0 and q8_0 instead.
        let w = t(576, 576);
        assert_eq!(ty(TensorRole::Q, Some(5), &w, false), GgmlDType::Q5_0);
        assert_eq!(ty(TensorRole::Embed, None, &w, true), GgmlDType::Q8_0);
        // 1-D tensors and rows no block fits.
        let norm = Tensor::zeros(576, candle_core::DType::F32, &Device::Cpu).unwrap();
        assert_eq!(
            ty(TensorRole::AttnNorm, Some(0), &norm, false),
            GgmlDType::F32
        );
        assert_eq!(
            tensor_type(GgufType::Q8_0, TensorRole::Q, Some(0), n, &t(8, 40), false),
            GgmlDType::F16
        );
    }

    #[test]
    fn names_parse_back_and_file_types_are_llama_cpps() {
        for ty in GgufType::ALL {
            assert_eq!(GgufType::parse(&ty.name().to_uppercase()).unwrap(), ty);
        }
        assert!(GgufType::parse("q3_k")
            .unwrap_err()
            .to_string()
            .contains("q4_k_m"));
        assert_eq!(GgufType::Q4KM.file_type(), 15);
    }

    #[test]
    fn re_quantizing_to_the_bases_own_block_type_is_warned() {
        let c = |v: &[(&str, usize)]| -> Vec<(String, usize)> {
            v.iter().map(|(k, n)| (k.to_string(), *n)).collect()
        };
        let base = c(&[("q4_1", 210), ("q6_K", 1)]);
        assert!(same_grid_warning(&base, &c(&[("q4_1", 210), ("f32", 61)])).is_some());
        assert!(same_grid_warning(&base, &c(&[("q8_0", 211)])).is_none());
        assert!(same_grid_warning(&base, &c(&[("q5_0", 180), ("q8_0", 31)])).is_none());
        // An unquantized base re-rounded to its own float type keeps the change.
        assert!(same_grid_warning(&c(&[("f16", 9)]), &c(&[("f16", 9)])).is_none());
        assert!(same_grid_warning(&[], &c(&[("q4_1", 1)])).is_none());
    }
}
