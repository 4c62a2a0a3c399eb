//! The GGUF file itself: candle's writer and reader, the I/O error mapping and ggml's
//! type names, shared by the model export (`write_gguf`) and the LoRA export
//! (`lora_gguf`).

use std::path::Path;

use candle_core::quantized::gguf_file::{self, Content, Value};
use candle_core::quantized::{GgmlDType, QTensor};

use crate::error::{ModelError, Result};

/// What [`write_gguf`] wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportStats {
    pub tensors: usize,
    pub bytes: u64,
    /// How many tensors of each ggml type, e.g. `[("q4_K", 120), ("q6_K", 31), …]`.
    pub types: Vec<(String, usize)>,
}

/// candle's GGUF writer (format version 2, which llama.cpp reads).
pub(crate) fn write_file(
    path: &Path,
    md: &[(String, Value)],
    tensors: &[(String, QTensor)],
) -> Result<()> {
    let md_refs: Vec<(&str, &Value)> = md.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let t_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).map_err(io(path))?);
    gguf_file::write(&mut f, &md_refs, &t_refs)?;
    std::io::Write::flush(&mut f).map_err(io(path))?;
    Ok(())
}

/// The GGUF metadata of `path` (header only; tensors are not read).
pub fn read_gguf_content(path: &Path) -> Result<Content> {
    let mut f = std::fs::File::open(path).map_err(io(path))?;
    Content::read(&mut f).map_err(|e| ModelError::Config(format!("{}: {e}", path.display())))
}

/// Maps an I/O error to one that names `path`.
pub(crate) fn io(path: &Path) -> impl Fn(std::io::Error) -> ModelError {
    let path = path.to_path_buf();
    move |source| ModelError::Io {
        path: path.clone(),
        source,
    }
}

/// The ggml type name llama.cpp prints (`q4_K`, `f16`, …).
pub fn ggml_type_name(t: GgmlDType) -> &'static str {
    match t {
        GgmlDType::F32 => "f32",
        GgmlDType::F16 => "f16",
        GgmlDType::BF16 => "bf16",
        GgmlDType::Q4_0 => "q4_0",
        GgmlDType::Q4_1 => "q4_1",
        GgmlDType::Q5_0 => "q5_0",
        GgmlDType::Q5_1 => "q5_1",
        GgmlDType::Q8_0 => "q8_0",
        GgmlDType::Q8_1 => "q8_1",
        GgmlDType::Q2K => "q2_K",
        GgmlDType::Q3K => "q3_K",
        GgmlDType::Q4K => "q4_K",
        GgmlDType::Q5K => "q5_K",
        GgmlDType::Q6K => "q6_K",
        GgmlDType::Q8K => "q8_K",
    }
}
