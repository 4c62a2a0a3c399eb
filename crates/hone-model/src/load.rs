//! Loading a [`Llama`] of any supported family from a GGUF file or an HF
//! directory (`config.json` + `model.safetensors`, or the shards listed in
//! `model.safetensors.index.json`), every tensor read by the
//! role its [`DecoderSpec`] lists. For f32, any GGUF block type candle
//! dequantizes (Q4_K, Q5_K, Q6_K, Q8_0, F16, BF16, …) is read.

use std::collections::HashMap;
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::quantized::{ggml_file::qtensor_from_ggml, gguf_file, GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};

use crate::decode::{Activations, PackedKind, PackedMatrix};
use crate::error::{ModelError, Result};
use crate::family::{DecoderSpec, Family, QkRows, Switch, TensorRole};
use crate::linear::{BaseWeight, Linear};
use crate::llama::{Attention, Block, Embedding, Llama, LmHead, Mlp, WeightPath};

/// Loads a model's weights (no tokenizer) from a GGUF file or an HF
/// directory, whichever `path` is: for callers that need only the network,
/// such as training tests. Front ends open a model through
/// [`crate::registry::ResolvedModel::open`], which reads the tokenizer too.
pub fn load_model(path: &Path, weights: WeightPath) -> Result<Llama> {
    let mut file = WeightFile::open(path)?;
    let spec = file.spec()?;
    file.load(spec, weights)
}

/// A model file whose header is read but whose weights are not: a GGUF file
/// (header, metadata and tensor index read, the file kept open) or an HF
/// directory (`config.json` + `model.safetensors`).
pub(crate) enum WeightFile {
    Gguf(GgufSource),
    HfDir(PathBuf),
}

impl WeightFile {
    pub(crate) fn open(path: &Path) -> Result<Self> {
        if !path.exists() {
            return Err(ModelError::NotFound(path.to_path_buf()));
        }
        if path.is_dir() {
            Ok(WeightFile::HfDir(path.to_path_buf()))
        } else {
            Ok(WeightFile::Gguf(GgufSource::open(path)?))
        }
    }

    /// The GGUF header (metadata, with the tokenizer), for a GGUF file.
    pub(crate) fn gguf_content(&self) -> Option<&gguf_file::Content> {
        match self {
            WeightFile::Gguf(src) => Some(&src.content),
            WeightFile::HfDir(_) => None,
        }
    }

    /// The model's [`DecoderSpec`], without reading weights (for a GGUF
    /// file with `rope_freqs.weight`, that one small tensor is read).
    pub(crate) fn spec(&mut self) -> Result<DecoderSpec> {
        match self {
            WeightFile::Gguf(src) => {
                DecoderSpec::from_gguf(&src.content, &mut src.reader).map_err(|e| match e {
                    ModelError::Candle(c) => self_corrupt(&src.path, c),
                    other => other,
                })
            }
            WeightFile::HfDir(dir) => {
                let cfg_path = dir.join("config.json");
                let text = std::fs::read_to_string(&cfg_path).map_err(|e| io_err(&cfg_path, e))?;
                DecoderSpec::from_hf_config(&text)
            }
        }
    }

    /// Reads the weights into a [`Llama`] of `spec` (from [`WeightFile::spec`]).
    pub(crate) fn load(self, spec: DecoderSpec, weights: WeightPath) -> Result<Llama> {
        match self {
            WeightFile::Gguf(mut src) => build(&mut src, spec, weights),
            WeightFile::HfDir(dir) => {
                let tensors = read_hf_weights(&dir)?;
                build(&mut HfSource { tensors }, spec, weights)
            }
        }
    }
}

/// The single weights file of an HF directory.
pub const HF_WEIGHTS_FILE: &str = "model.safetensors";
/// The index of a sharded HF checkpoint: `weight_map` from tensor name to
/// shard file (`model-00001-of-00002.safetensors`, …).
pub const HF_WEIGHTS_INDEX_FILE: &str = "model.safetensors.index.json";

/// Every tensor of an HF directory: `model.safetensors`, or the shards that
/// `model.safetensors.index.json` lists (as transformers writes checkpoints
/// above its shard size). A tensor the index maps to a shard must be in that
/// shard, so a wrong index fails here rather than loading a stale tensor.
fn read_hf_weights(dir: &Path) -> Result<HashMap<String, Tensor>> {
    let single = dir.join(HF_WEIGHTS_FILE);
    let index = dir.join(HF_WEIGHTS_INDEX_FILE);
    if !index.exists() {
        if !single.exists() {
            return Err(ModelError::NotFound(single));
        }
        return read_safetensors(&single);
    }
    let text = std::fs::read_to_string(&index).map_err(|e| io_err(&index, e))?;
    let bad = |msg: String| ModelError::CorruptSafetensors {
        path: index.clone(),
        msg,
    };
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| bad("no `weight_map` object".into()))?;
    let mut by_shard: std::collections::BTreeMap<&str, Vec<&str>> = Default::default();
    for (name, file) in map {
        let file = file
            .as_str()
            .ok_or_else(|| bad(format!("`{name}` maps to {file}, not a file name")))?;
        // Shards are files of this directory, never paths elsewhere.
        if file.contains('/') || file.contains('\\') || file.starts_with('.') {
            return Err(bad(format!(
                "shard `{file}` is not a file name in the directory"
            )));
        }
        by_shard.entry(file).or_default().push(name);
    }
    let mut tensors = HashMap::new();
    for (file, names) in by_shard {
        let path = dir.join(file);
        if !path.exists() {
            return Err(ModelError::NotFound(path));
        }
        let mut shard = read_safetensors(&path)?;
        for name in names {
            let t = shard
                .remove(name)
                .ok_or_else(|| ModelError::CorruptSafetensors {
                    path: path.clone(),
                    msg: format!("the index puts `{name}` in this shard, which lacks it"),
                })?;
            tensors.insert(name.to_string(), t);
        }
    }
    Ok(tensors)
}

fn read_safetensors(path: &Path) -> Result<HashMap<String, Tensor>> {
    candle_core::safetensors::load(path, &Device::Cpu).map_err(|e| ModelError::CorruptSafetensors {
        path: path.to_path_buf(),
        msg: e.to_string(),
    })
}

fn io_err(path: &Path, source: std::io::Error) -> ModelError {
    if source.kind() == std::io::ErrorKind::NotFound {
        ModelError::NotFound(path.to_path_buf())
    } else {
        ModelError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// How a projection's rows are stored in the source.
#[derive(Clone, Copy, PartialEq)]
enum Rows {
    Plain,
    /// llama.cpp's Q/K permutation for interleaved RoPE, with this many heads.
    RopeInterleaved(usize),
}

/// A source of weights addressed by the names of its own format
/// ([`DecoderSpec::tensor_name`]).
trait WeightSource {
    /// The tensor as f32, rows in HF order.
    fn dense(&mut self, name: &str, rows: Rows) -> Result<Tensor>;
    /// The tensor as blocks the packed kernels read: Q4_1 or Q8_0 as stored,
    /// anything else re-quantized to Q8_0.
    fn quantized(&mut self, name: &str, rows: Rows) -> Result<QTensor>;
}

/// The switches the packed decode step implements (see [`crate::decode`]):
/// all of today's; a new one is refused on this path until it is added here.
pub const PACKED_SWITCHES: &[Switch] = &[
    Switch::QkvBias,
    Switch::QkNorm,
    Switch::PostAttentionNorm,
    Switch::PostFfnNorm,
    Switch::GeluTanh,
    Switch::EmbeddingScale,
    Switch::AttentionScale,
    Switch::FinalLogitSoftcap,
    Switch::SlidingWindow,
    Switch::PerLayerRope,
    Switch::RopeScaling,
];

/// Reads every tensor `spec` lists by role into a [`Llama`]: norms get the
/// spec's weight offset (once, here), Q/K rows are un-permuted only for
/// llama.cpp's interleaved files, biases and extra norms are read when the
/// spec has them.
fn build(src: &mut dyn WeightSource, spec: DecoderSpec, wp: WeightPath) -> Result<Llama> {
    if wp == WeightPath::Packed {
        spec.require("packed decode", PACKED_SWITCHES, "use --weights f32")?;
    }
    let mut layers = Vec::with_capacity(spec.dims.num_layers);
    for i in 0..spec.dims.num_layers {
        layers.push(build_block(src, &spec, wp, i)?);
    }
    let act = set_decode_activations(&mut layers);
    let mut r = Reader { src, spec: &spec };
    let norm_w = r.norm(TensorRole::FinalNorm, None)?;
    let emb = r.name(TensorRole::Embed, None)?;
    let vocab_h = r.spec.tensor_shape(TensorRole::Embed);
    let head_name = (!spec.tie_word_embeddings)
        .then(|| r.name(TensorRole::LmHead, None))
        .transpose()?;
    let src = r.src;
    let (embed, lm_head) = if wp == WeightPath::F32 {
        let e = checked(src.dense(&emb, Rows::Plain)?, &emb, vocab_h.clone())?;
        let head = match &head_name {
            None => e.clone(),
            Some(n) => checked(src.dense(n, Rows::Plain)?, n, vocab_h)?,
        };
        (Embedding::Dense(e), LmHead::Dense(head))
    } else {
        let e = src.quantized(&emb, Rows::Plain)?;
        check_shape(e.shape().dims(), &emb, vocab_h.clone())?;
        let packed = |q: &QTensor| -> Result<Arc<PackedMatrix>> {
            let mut m = PackedMatrix::from_qtensor(q)?;
            m.set_default_activations(act);
            Ok(Arc::new(m))
        };
        let table = packed(&e)?;
        let head = match &head_name {
            None => table.clone(),
            Some(n) => {
                let t = src.quantized(n, Rows::Plain)?;
                check_shape(t.shape().dims(), n, vocab_h)?;
                packed(&t)?
            }
        };
        (Embedding::Packed(table), LmHead::Packed(head))
    };
    Llama::from_parts(spec, embed, layers, norm_w, lm_head, wp, &Device::Cpu)
}

/// Sets the packed products' default activations for the whole model (see
/// [`Activations`]): f32 when its layers hold Q4_1 blocks (SmolLM2's file:
/// 8-bit activations moved its logits by 1.4-1.6 and changed a greedy answer),
/// else the fastest on this CPU. Returns the choice, for the embedding and
/// head built after the layers. Dense (f32-path) layers have nothing to set.
fn set_decode_activations(layers: &mut [Block]) -> Activations {
    let q4_1 = layers
        .iter_mut()
        .flat_map(Block::linears_mut)
        .any(|(_, l)| matches!(l.base(), BaseWeight::Packed(p) if p.kind() == PackedKind::Q4_1));
    let act = if q4_1 {
        Activations::F32
    } else {
        Activations::fastest_on_this_cpu()
    };
    for (_, l) in layers.iter_mut().flat_map(Block::linears_mut) {
        if let Some(m) = l.packed_mut() {
            m.set_default_activations(act);
        }
    }
    act
}

/// Reads tensors of one model by role.
struct Reader<'a> {
    src: &'a mut dyn WeightSource,
    spec: &'a DecoderSpec,
}

impl Reader<'_> {
    fn name(&self, role: TensorRole, layer: Option<usize>) -> Result<String> {
        self.spec.tensor_name(role, layer).ok_or_else(|| {
            ModelError::Config(format!("{role:?} has no tensor in this model's format"))
        })
    }

    /// A norm weight as its multiplier: the stored weight plus the spec's offset.
    fn norm(&mut self, role: TensorRole, layer: Option<usize>) -> Result<Tensor> {
        let name = self.name(role, layer)?;
        let t = checked(
            self.src.dense(&name, Rows::Plain)?,
            &name,
            self.spec.tensor_shape(role),
        )?;
        let offset = self.spec.norm.weight_offset;
        Ok(if offset != 0.0 {
            (t + offset as f64)?
        } else {
            t
        })
    }

    fn opt_norm(&mut self, on: bool, role: TensorRole, layer: usize) -> Result<Option<Tensor>> {
        on.then(|| self.norm(role, Some(layer))).transpose()
    }

    fn bias(&mut self, role: TensorRole, layer: usize) -> Result<Option<Tensor>> {
        if !self.spec.qkv_bias {
            return Ok(None);
        }
        let name = self.name(role, Some(layer))?;
        let t = self.src.dense(&name, Rows::Plain)?;
        Ok(Some(checked(t, &name, self.spec.tensor_shape(role))?))
    }

    fn linear(&mut self, wp: WeightPath, role: TensorRole, layer: usize) -> Result<Linear> {
        let name = self.name(role, Some(layer))?;
        let d = &self.spec.dims;
        let rows = match (self.spec.qk_rows, role) {
            (QkRows::Interleaved, TensorRole::Q) => Rows::RopeInterleaved(d.num_heads),
            (QkRows::Interleaved, TensorRole::K) => Rows::RopeInterleaved(d.num_kv_heads),
            _ => Rows::Plain,
        };
        let shape = self.spec.tensor_shape(role);
        load_linear(self.src, wp, &name, shape[0], shape[1], rows)
    }
}

fn build_block(
    src: &mut dyn WeightSource,
    spec: &DecoderSpec,
    wp: WeightPath,
    i: usize,
) -> Result<Block> {
    use TensorRole::*;
    let mut r = Reader { src, spec };
    let self_attn = Attention {
        q_proj: r.linear(wp, Q, i)?,
        k_proj: r.linear(wp, K, i)?,
        v_proj: r.linear(wp, V, i)?,
        o_proj: r.linear(wp, O, i)?,
        q_bias: r.bias(QBias, i)?,
        k_bias: r.bias(KBias, i)?,
        v_bias: r.bias(VBias, i)?,
        q_norm: r.opt_norm(spec.qk_norm, QNorm, i)?,
        k_norm: r.opt_norm(spec.qk_norm, KNorm, i)?,
    };
    let mlp = Mlp {
        gate_proj: r.linear(wp, Gate, i)?,
        up_proj: r.linear(wp, Up, i)?,
        down_proj: r.linear(wp, Down, i)?,
    };
    Ok(Block {
        input_layernorm: r.norm(AttnNorm, Some(i))?,
        self_attn,
        post_attention_layernorm: r.norm(FfnNorm, Some(i))?,
        mlp,
        post_attn_norm: r.opt_norm(spec.post_attention_norm, PostAttnNorm, i)?,
        post_ffn_norm: r.opt_norm(spec.post_ffn_norm, PostFfnNorm, i)?,
    })
}

fn load_linear(
    src: &mut dyn WeightSource,
    wp: WeightPath,
    name: &str,
    out: usize,
    inp: usize,
    rows: Rows,
) -> Result<Linear> {
    let base = match wp {
        WeightPath::F32 => BaseWeight::Dense(checked(src.dense(name, rows)?, name, (out, inp))?),
        WeightPath::Packed => {
            let q = src.quantized(name, rows)?;
            check_shape(q.shape().dims(), name, (out, inp))?;
            BaseWeight::Packed(Arc::new(PackedMatrix::from_qtensor(&q)?))
        }
    };
    Ok(Linear::new(base, out, inp))
}

fn checked<S: Into<candle_core::Shape>>(t: Tensor, name: &str, want: S) -> Result<Tensor> {
    check_shape(t.dims(), name, want)?;
    Ok(t)
}

fn check_shape<S: Into<candle_core::Shape>>(found: &[usize], name: &str, want: S) -> Result<()> {
    let want: candle_core::Shape = want.into();
    if found != want.dims() {
        return Err(ModelError::TensorShape {
            name: name.to_string(),
            found: found.to_vec(),
            expected: want.dims().to_vec(),
        });
    }
    Ok(())
}

/// Maps an HF tensor name of a Llama model to llama.cpp's GGUF name (names
/// not in the map are returned unchanged); used to write Llama test GGUFs.
/// The map itself is [`TensorRole::hf_to_gguf`].
pub fn gguf_name(hf: &str) -> String {
    TensorRole::hf_to_gguf(Family::Llama, hf).unwrap_or_else(|| hf.to_string())
}

/// Undoes llama.cpp's Q/K permutation on an f32 `[out, in]` weight:
/// GGUF rows are `(head, half_dim, 2)`, HF rows `(head, 2, half_dim)`.
pub fn unpermute_rope_rows(w: &Tensor, n_heads: usize) -> Result<Tensor> {
    let (out, inp) = w.dims2()?;
    let hd = out / n_heads;
    Ok(w.reshape((n_heads, hd / 2, 2, inp))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((out, inp))?)
}

/// Applies llama.cpp's Q/K permutation (HF → GGUF), the inverse of
/// [`unpermute_rope_rows`]; used to write GGUF test models.
pub fn permute_rope_rows(w: &Tensor, n_heads: usize) -> Result<Tensor> {
    let (out, inp) = w.dims2()?;
    let hd = out / n_heads;
    Ok(w.reshape((n_heads, 2, hd / 2, inp))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((out, inp))?)
}

/// The HF row index each GGUF row moves to (for quantized rows, moved as bytes).
fn unpermuted_row_order(out: usize, n_heads: usize) -> Vec<usize> {
    let hd = out / n_heads;
    let half = hd / 2;
    // HF row (h, i, j) comes from GGUF row (h, j, i).
    let mut src_of = vec![0; out];
    for h in 0..n_heads {
        for i in 0..2 {
            for j in 0..half {
                src_of[h * hd + i * half + j] = h * hd + j * 2 + i;
            }
        }
    }
    src_of
}

fn unpermute_quantized(q: &QTensor, n_heads: usize) -> Result<QTensor> {
    let dims = q.shape().dims().to_vec();
    let out = dims[0];
    let data = q.data()?;
    let row_bytes = data.len() / out;
    let mut bytes = Vec::with_capacity(data.len());
    for src in unpermuted_row_order(out, n_heads) {
        bytes.extend_from_slice(&data[src * row_bytes..(src + 1) * row_bytes]);
    }
    Ok(qtensor_from_ggml(q.dtype(), &bytes, dims, &Device::Cpu)?)
}

pub(crate) struct GgufSource {
    path: PathBuf,
    content: gguf_file::Content,
    reader: BufReader<File>,
}

impl GgufSource {
    fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| io_err(path, e))?;
        let mut reader = BufReader::new(file);
        let content = gguf_file::Content::read(&mut reader).map_err(|e| self_corrupt(path, e))?;
        Ok(Self {
            path: path.to_path_buf(),
            content,
            reader,
        })
    }

    fn raw(&mut self, name: &str) -> Result<QTensor> {
        if !self.content.tensor_infos.contains_key(name) {
            return Err(ModelError::MissingTensor(name.to_string()));
        }
        self.content
            .tensor(&mut self.reader, name, &Device::Cpu)
            .map_err(|e| self_corrupt(&self.path, e))
    }
}

fn self_corrupt(path: &Path, e: candle_core::Error) -> ModelError {
    ModelError::CorruptGguf {
        path: path.to_path_buf(),
        msg: e.to_string(),
    }
}

impl WeightSource for GgufSource {
    fn dense(&mut self, name: &str, rows: Rows) -> Result<Tensor> {
        let t = self.raw(name)?.dequantize(&Device::Cpu)?;
        match rows {
            Rows::Plain => Ok(t),
            Rows::RopeInterleaved(n) => unpermute_rope_rows(&t, n),
        }
    }

    fn quantized(&mut self, name: &str, rows: Rows) -> Result<QTensor> {
        let raw = self.raw(name)?;
        // The block types the packed kernels read (PackedKind) stay as stored.
        let keep = crate::decode::PackedKind::from_ggml(raw.dtype()).is_some();
        let q = match (keep, rows) {
            (true, Rows::Plain) => raw,
            (true, Rows::RopeInterleaved(n)) => unpermute_quantized(&raw, n)?,
            (false, _) => {
                let t = raw.dequantize(&Device::Cpu)?;
                let t = match rows {
                    Rows::Plain => t,
                    Rows::RopeInterleaved(n) => unpermute_rope_rows(&t, n)?,
                };
                QTensor::quantize(&t, GgmlDType::Q8_0)?
            }
        };
        Ok(q)
    }
}

struct HfSource {
    tensors: HashMap<String, Tensor>,
}

impl WeightSource for HfSource {
    fn dense(&mut self, name: &str, _rows: Rows) -> Result<Tensor> {
        let t = self
            .tensors
            .get(name)
            .ok_or_else(|| ModelError::MissingTensor(name.to_string()))?;
        Ok(t.to_dtype(DType::F32)?)
    }

    fn quantized(&mut self, name: &str, rows: Rows) -> Result<QTensor> {
        let t = self.dense(name, rows)?;
        Ok(QTensor::quantize(&t, GgmlDType::Q8_0)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rope_row_permutation_round_trips() -> Result<()> {
        let w = Tensor::arange(0f32, 8. * 3., &Device::Cpu)?.reshape((8, 3))?;
        let back = unpermute_rope_rows(&permute_rope_rows(&w, 2)?, 2)?;
        assert_eq!(back.to_vec2::<f32>()?, w.to_vec2::<f32>()?);
        // The byte-level order agrees with the tensor version.
        let perm = permute_rope_rows(&w, 2)?.to_vec2::<f32>()?;
        let order = unpermuted_row_order(8, 2);
        let w = w.to_vec2::<f32>()?;
        for (hf_row, src) in order.iter().enumerate() {
            assert_eq!(perm[*src], w[hf_row]);
        }
        Ok(())
    }

    #[test]
    fn gguf_names_follow_llama_cpp() {
        assert_eq!(
            gguf_name("model.layers.3.self_attn.o_proj.weight"),
            "blk.3.attn_output.weight"
        );
        assert_eq!(
            gguf_name("model.layers.0.post_attention_layernorm.weight"),
            "blk.0.ffn_norm.weight"
        );
        assert_eq!(gguf_name("model.embed_tokens.weight"), "token_embd.weight");
    }
}
