//! Distinct LoRA adapters for `hone bench serve --adapters N`: made once per
//! run, with `hone train`'s default shape (rank, alpha, all linear
//! projections), so that serving them costs what serving fine-tunes costs.
//! Their B matrices are filled (a freshly attached adapter has B = 0 and
//! changes nothing), each with its own values, so the adapters really
//! differ: every row of a mixed batch applies its own LoRA.

use std::path::{Path, PathBuf};

use anyhow::Context;
use hone_model::candle_core::Tensor;
use hone_model::{LoraConfig, LoraParams, WeightPath};
use hone_train::job::{DEFAULT_LORA_ALPHA, DEFAULT_LORA_R, DEFAULT_TARGET_MODULES};

/// Writes `n` PEFT adapters for the GGUF `gguf` (base id `base`) under
/// `dir`, named `adapter-0` … `adapter-{n-1}`; returns (name, directory)
/// pairs for `hone serve --adapter NAME=DIR`.
pub(super) fn write(
    gguf: &Path,
    base: &str,
    n: usize,
    dir: &Path,
) -> anyhow::Result<Vec<(String, PathBuf)>> {
    let mut model = hone_model::load_model(gguf, WeightPath::F32)
        .with_context(|| format!("loading {} to shape the adapters", gguf.display()))?;
    let cfg = LoraConfig {
        r: DEFAULT_LORA_R,
        alpha: DEFAULT_LORA_ALPHA,
        dropout: 0.0,
        target_modules: LoraConfig::parse_target_modules(DEFAULT_TARGET_MODULES)?,
        trainable_tokens: Vec::new(),
    };
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let lora = LoraParams::attach(&mut model, &cfg, i as u64)?;
        for m in &lora.modules {
            m.b.set(&filled_b(m.b.as_tensor(), i)?)?;
        }
        let name = format!("adapter-{i}");
        let path = dir.join(&name);
        lora.save_peft(&path, base)
            .with_context(|| format!("writing {}", path.display()))?;
        out.push((name, path));
    }
    Ok(out)
}

/// A B matrix of the shape of `b` with small values that depend on the
/// position and on `which` adapter (deterministic: no RNG needed).
fn filled_b(b: &Tensor, which: usize) -> anyhow::Result<Tensor> {
    let n = b.elem_count();
    let v: Vec<f32> = (0..n)
        .map(|j| (((j * 31 + which * 17) % 23) as f32 - 11.0) * 1e-3)
        .collect();
    Ok(Tensor::from_vec(v, b.dims(), b.device())?)
}
