//! `hone bench train`: the real LoRA training step, timed.
//!
//! Mirrors the PyTorch reference (`shared/bench/pytorch/bench_train.py`): the same 4×256
//! token batch (for the default model, PyTorch's own ids, vendored in testdata/; for any
//! other model, the same chats tokenized by that model, as the script does with
//! `HONE_BENCH_GGUF`), labels = inputs shifted by one, so the loss is the
//! causal-LM cross-entropy over all `batch·(seq−1)` predicted positions; LoRA r=8, alpha
//! 16, no dropout; AdamW at lr 1e-4 with torch's weight decay 0.01 and no clipping. The
//! timed region is forward + loss + backward + optimizer step, as there. Tokens/s counts
//! `batch·seq` tokens per step, as there.

use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context};
use hone_model::candle_core::{DType, Device, Tensor};
use hone_model::ops::base_weights::{self, BaseWeights};
use hone_model::ops::{peak, Bf16Kernel, Precision};
use hone_model::registry::DEFAULT_MODEL_ID;
use hone_model::{Config, LoraConfig, LoraParams, OpenModel, TrainOptions};
use hone_text::ChatMessage;
use hone_train::optim::{AdamW, AdamWConfig};

use super::{loadavg, round2};

/// The exact token batch the PyTorch benchmark trains on (4 rows of 256 ids).
const BATCH_JSON: &str = include_str!("../../../../../testdata/train_batch_4x256.json");

/// The 100 chats that batch was rendered from (`shared/bench/pytorch/data/chat100.jsonl`).
const CHATS_JSONL: &str = include_str!("chat100.jsonl");

#[derive(clap::Args)]
pub struct TrainBenchArgs {
    /// Model id or path to a GGUF file or HF directory.
    #[arg(long, env = "HONE_MODEL", default_value = DEFAULT_MODEL_ID)]
    pub model: String,
    /// Sequences per step.
    #[arg(long, default_value_t = 4)]
    pub batch: usize,
    /// Tokens per sequence.
    #[arg(long, default_value_t = 256)]
    pub seq: usize,
    /// LoRA targets: q_proj,v_proj (PyTorch config A), all-linear (config B) or a list.
    #[arg(long, default_value = "q_proj,v_proj")]
    pub targets: String,
    /// Measured steps (after the warm-up).
    #[arg(long, default_value_t = 10)]
    pub steps: usize,
    /// Warm-up steps, not measured.
    #[arg(long, default_value_t = 3)]
    pub warmup: usize,
    /// Compute threads (sets RAYON_NUM_THREADS; default: all cores).
    #[arg(long, env = "HONE_THREADS")]
    pub threads: Option<usize>,
    /// LoRA rank.
    #[arg(long, default_value_t = 8)]
    pub lora_r: usize,
    /// LoRA alpha.
    #[arg(long, default_value_t = 16.0)]
    pub lora_alpha: f64,
    /// Do not save the result to $HONE_HOME/bench/train.json.
    #[arg(long)]
    pub no_save: bool,
    /// How the frozen base is held and multiplied: auto (bf16 where bf16 products
    /// measure faster than f32 on this CPU, else f32), f32, bf16, q8_0 or native
    /// (docs/train.md).
    #[arg(long, env = "HONE_BASE_WEIGHTS", default_value = "auto", value_parser = BaseWeights::parse)]
    pub base_weights: BaseWeights,
    /// Recompute each layer's activations in the backward (`hone train
    /// --gradient-checkpointing`).
    #[arg(long)]
    pub gradient_checkpointing: bool,
}

pub fn run(args: TrainBenchArgs) -> anyhow::Result<ExitCode> {
    if args.batch == 0 || args.seq < 2 || args.steps == 0 {
        bail!("--batch must be at least 1, --seq at least 2 and --steps at least 1");
    }
    if let Some(t) = args.threads.filter(|t| *t > 0) {
        // Read by rayon and candle when they first build their pools, i.e. after this.
        std::env::set_var("RAYON_NUM_THREADS", t.to_string());
    }
    // Training uses every core for candle's matmuls and hone's ops (measured on
    // free cores: 138 against 120 tokens/s with one); `CANDLE_NUM_THREADS` overrides.
    let targets = LoraConfig::parse_target_modules(&args.targets)?;
    base_weights::set_base_weights(args.base_weights);
    let products = args.base_weights.resolve();
    eprintln!(
        "base weights: {:?} -> {} products (cpu: {})",
        args.base_weights,
        products.describe(),
        base_weights::cpu_flags().join(" ")
    );
    let t0 = Instant::now();
    let resolved = hone_model::registry::resolve(&args.model)?;
    let loading = || format!("loading {}", resolved.source.path().display());
    let open = resolved.open().with_context(loading)?;
    let ids = if resolved.id == DEFAULT_MODEL_ID {
        reference_ids()?
    } else {
        chat_ids(&open)?
    };
    let mode = args.base_weights.resolved();
    let mut model = open
        .load(hone_train::base::weight_path(mode))
        .with_context(loading)?
        .model;
    hone_train::base::fit_model(&mut model, mode)?;
    let base_bytes = hone_train::base::base_bytes(&model);
    let load_s = t0.elapsed().as_secs_f64();
    let lora = LoraConfig {
        r: args.lora_r,
        alpha: args.lora_alpha,
        dropout: 0.0,
        target_modules: targets.clone(),
        trainable_tokens: Vec::new(),
    };
    let params = LoraParams::attach(&mut model, &lora, 0)?;
    let batch = Batch::new(&ids, args.batch, args.seq, model.cfg.vocab_size)?;
    let cfg = AdamWConfig {
        weight_decay: 0.01,
        max_grad_norm: None,
        ..AdamWConfig::default()
    };
    let mut opt = AdamW::new(params.trainable(), cfg)?;
    let mut step = || -> anyhow::Result<f32> {
        let out = model.train_loss(
            &batch.input,
            &batch.targets,
            &batch.mask,
            TrainOptions {
                gradient_checkpointing: args.gradient_checkpointing,
                ..TrainOptions::default()
            },
        )?;
        let loss = out.loss.to_scalar::<f32>()?;
        let grads = out.loss.backward()?;
        opt.step(&grads, 1e-4)?;
        Ok(loss)
    };
    let mut losses = Vec::new();
    for _ in 0..args.warmup {
        losses.push(step()?);
    }
    let share = CpuShare::start();
    let mut times = Vec::with_capacity(args.steps);
    for _ in 0..args.steps {
        let t = Instant::now();
        losses.push(step()?);
        times.push(t.elapsed().as_secs_f64());
    }
    let (self_cores, other_cores) = share.finish();
    let tokens = (args.batch * args.seq) as f64;
    let mean = times.iter().sum::<f64>() / times.len() as f64;
    let mut sorted = times.clone();
    sorted.sort_by(f64::total_cmp);
    let peak = peak_rss_bytes();
    let flops = step_flops(&model.cfg, &lora, args.batch, args.seq);
    let step_gflops = flops / mean / 1e9;
    let bf16_copies = base_weights::cache_bytes();
    // Measured after the steps, so the probe's buffers do not count in the peak RSS.
    let rates = PeakRates::measure(products)?;
    let out = serde_json::json!({
        "bench": "train",
        "model": resolved.id,
        "targets": args.targets,
        "target_modules": targets,
        "batch": args.batch,
        "seq": args.seq,
        "tokens_per_second": round2(tokens / mean),
        "tokens_per_second_median": round2(tokens / sorted[sorted.len() / 2]),
        "mean_step_ms": round2(mean * 1e3),
        "min_step_ms": round2(sorted[0] * 1e3),
        "base_weights": args.base_weights.as_str(),
        "base_weights_resolved": args.base_weights.resolved().as_str(),
        "products": products.describe(),
        // The step's useful work: recomputed forwards are not counted in the GFLOP.
        "gradient_checkpointing": args.gradient_checkpointing,
        "cpu_flags": base_weights::cpu_flags(),
        // What `auto` measured: the AVX512_BF16 kernel's speed over the f32 gemm.
        "avx512_bf16_speedup": hone_model::ops::bf16_speed::speedup(Bf16Kernel::Avx512Bf16).map(round2),
        "step_gflop": round2(flops / 1e9),
        "gflops_per_second": round2(step_gflops),
        "peak_product_gflops": round2(rates.products),
        "peak_f32_gemm_gflops": round2(rates.f32),
        "fraction_of_peak": round4(step_gflops / rates.products),
        "fraction_of_f32_peak": round4(step_gflops / rates.f32),
        "peak_rss_bytes": peak,
        "base_weight_mb": base_bytes / (1024 * 1024),
        "bf16_copies_mb": bf16_copies / (1024 * 1024),
        "peak_rss_mb": peak.map(|b| b / (1024 * 1024)),
        "threads": hone_model::compute_threads(),
        "candle_num_threads": std::env::var("CANDLE_NUM_THREADS").ok(),
        "steps": args.steps,
        "warmup": args.warmup,
        "trainable_params": params.num_params(),
        "loss_first": losses.first().map(|l| round4(*l as f64)),
        "loss_last": losses.last().map(|l| round4(*l as f64)),
        "self_cores": round2(self_cores),
        "other_cores": round2(other_cores),
        "loadavg_1m": loadavg(),
        "load_s": round2(load_s),
        "step_ms": times.iter().map(|t| (t * 1e3).round()).collect::<Vec<_>>(),
    });
    println!("{out}");
    if !args.no_save {
        let path = hone_model::registry::hone_home()
            .join("bench")
            .join("train.json");
        save_atomic(&path, &out).with_context(|| format!("saving {}", path.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// The floating-point operations of one step (multiply-adds count 2), from the shapes:
/// the frozen projections and the LM head forward and backward-to-activations (2 + 2
/// per weight per token), causal attention (`q·kᵀ` and `p·v` over half the sequence on
/// average, forward and twice that backward), and the adapters (forward, and their
/// four backward products). Norms, activations and the optimizer are left out (a few
/// percent).
fn step_flops(cfg: &Config, lora: &LoraConfig, batch: usize, seq: usize) -> f64 {
    let (h, q, kv) = (
        cfg.hidden_size as f64,
        (cfg.num_attention_heads * cfg.head_dim) as f64,
        (cfg.num_key_value_heads * cfg.head_dim) as f64,
    );
    let im = cfg.intermediate_size as f64;
    let io = |m: &str| match m {
        "q_proj" => (h, q),
        "k_proj" | "v_proj" => (h, kv),
        "o_proj" => (q, h),
        "gate_proj" | "up_proj" => (h, im),
        _ => (im, h),
    };
    let modules = [
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    ];
    let frozen: f64 = modules.iter().map(|m| io(m).0 * io(m).1).sum();
    let adapters: f64 = lora
        .target_modules
        .iter()
        .map(|m| (io(m).0 + io(m).1) * lora.r as f64)
        .sum();
    let tokens = (batch * seq) as f64;
    let layers = cfg.num_hidden_layers as f64;
    let attention = 3.0 * 2.0 * 2.0 * (seq as f64 / 2.0) * q;
    let per_token_layer = 4.0 * frozen + 2.0 * 3.0 * adapters + attention;
    let head = 4.0 * cfg.vocab_size as f64 * h * (seq - 1) as f64 / seq as f64;
    tokens * (layers * per_token_layer + head)
}

/// The machine's measured peak rates (GFLOP/s) of the products the step ran on and of
/// the f32 gemm (`hone_model::ops::peak`, also behind the `mm_probe` example).
struct PeakRates {
    products: f64,
    f32: f64,
}

impl PeakRates {
    fn measure(precision: Precision) -> anyhow::Result<Self> {
        let f32 = peak::peak_product_rate(Precision::F32)?;
        let products = match precision {
            Precision::F32 => f32,
            other => peak::peak_product_rate(other)?,
        };
        eprintln!(
            "peak product rate: {products:.1} GFLOP/s on {}, f32 gemm {f32:.1} GFLOP/s",
            precision.describe()
        );
        Ok(Self { products, f32 })
    }
}

fn round4(x: f64) -> f64 {
    (x * 1e4).round() / 1e4
}

/// Inputs, next-token targets and the loss mask of one step.
struct Batch {
    input: Tensor,
    targets: Tensor,
    mask: Tensor,
}

impl Batch {
    /// `batch × seq` ids from `flat` (the token stream), row-major, repeated if more are
    /// needed (as the PyTorch script repeats its token stream). The target of position
    /// `i` is token `i+1` of the same row; the last position of each row has none
    /// (mask 0), as in transformers' shifted causal-LM loss.
    fn new(flat: &[u32], batch: usize, seq: usize, vocab: usize) -> anyhow::Result<Self> {
        if flat.is_empty() {
            bail!("the benchmark's token stream is empty");
        }
        if let Some(bad) = flat.iter().find(|&&id| id as usize >= vocab) {
            bail!("the benchmark batch holds token id {bad}, beyond this model's vocabulary of {vocab}: its tokenizer and weights disagree");
        }
        let ids: Vec<u32> = flat.iter().copied().cycle().take(batch * seq).collect();
        let mut targets = vec![0u32; batch * seq];
        let mut mask = vec![0f32; batch * seq];
        for r in 0..batch {
            for i in 0..seq - 1 {
                targets[r * seq + i] = ids[r * seq + i + 1];
                mask[r * seq + i] = 1.0;
            }
        }
        let dev = Device::Cpu;
        Ok(Self {
            input: Tensor::from_vec(ids, (batch, seq), &dev)?,
            targets: Tensor::from_vec(targets, (batch, seq), &dev)?,
            mask: Tensor::from_vec(mask, (batch, seq), &dev)?.to_dtype(DType::F32)?,
        })
    }
}

/// The benchmark chats as `model` sees them, as bench_train.py builds its batch: each
/// chat rendered with the chat template (no generation prompt), the texts concatenated,
/// tokenized without added special tokens.
fn chat_ids(model: &OpenModel) -> anyhow::Result<Vec<u32>> {
    let mut text = String::new();
    for (i, line) in CHATS_JSONL.lines().enumerate() {
        #[derive(serde::Deserialize)]
        struct Chat {
            messages: Vec<ChatMessage>,
        }
        let chat: Chat = serde_json::from_str(line)
            .with_context(|| format!("benchmark chat {} is not a chat", i + 1))?;
        text += &model
            .tokenizer
            .template
            .render(&chat.messages, false, None)?;
    }
    Ok(model.tokenizer.tokenizer.encode(&text)?)
}

/// PyTorch's batch for the default model, flattened.
fn reference_ids() -> anyhow::Result<Vec<u32>> {
    let v: serde_json::Value = serde_json::from_str(BATCH_JSON)?;
    let rows: Vec<Vec<u32>> = serde_json::from_value(v["input_ids"].clone())?;
    Ok(rows.into_iter().flatten().collect())
}

/// Peak resident memory (VmHWM) in bytes, from /proc/self/status.
fn peak_rss_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// How many cores this process and the rest of the machine used over a region (as the
/// PyTorch script's `CpuShare`): the machine is shared, so a figure needs its context.
struct CpuShare {
    t0: Instant,
    self0: Option<u64>,
    machine0: Option<u64>,
}

/// Clock ticks per second of /proc's counters (USER_HZ, 100 on Linux).
const TICKS: f64 = 100.0;

impl CpuShare {
    fn start() -> Self {
        Self {
            t0: Instant::now(),
            self0: self_ticks(),
            machine0: machine_busy_ticks(),
        }
    }

    /// `(self_cores, other_cores)`; zeros when /proc is unreadable.
    fn finish(self) -> (f64, f64) {
        let wall = self.t0.elapsed().as_secs_f64().max(1e-9);
        let (Some(s0), Some(m0), Some(s1), Some(m1)) = (
            self.self0,
            self.machine0,
            self_ticks(),
            machine_busy_ticks(),
        ) else {
            return (0.0, 0.0);
        };
        let me = s1.saturating_sub(s0) as f64 / TICKS;
        let all = m1.saturating_sub(m0) as f64 / TICKS;
        (me / wall, ((all - me) / wall).max(0.0))
    }
}

/// utime + stime of this process (fields 14 and 15 of /proc/self/stat).
fn self_ticks() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name may hold spaces; fields restart after its closing parenthesis.
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// Busy (non-idle, non-iowait) ticks of the whole machine, from /proc/stat.
fn machine_busy_ticks() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/stat").ok()?;
    let v: Vec<u64> = s
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let idle = v.get(3)? + v.get(4)?;
    Some(v.iter().sum::<u64>() - idle)
}

/// Writes `value` to `path` crash-safely, with the umask's mode
/// ([`hone_data::atomic_file`]), so `hone data estimate` never reads a half-written result.
fn save_atomic(path: &Path, value: &serde_json::Value) -> anyhow::Result<()> {
    let json = serde_json::to_string_pretty(value)?;
    hone_data::atomic_file::write(path, json.as_bytes())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The saved figures are read by other users' tools too: the umask's mode, not 0600.
    #[cfg(unix)]
    #[test]
    fn saved_results_get_the_umask_mode() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bench/train.json");
        save_atomic(&path, &serde_json::json!({"steps": 3})).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o666 & !hone_data::atomic_file::umask());
        let back: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(back["steps"], 3);
    }

    #[test]
    fn batch_mirrors_the_pytorch_reference_with_shifted_targets() {
        let b = Batch::new(&reference_ids().unwrap(), 4, 256, 49152).unwrap();
        let ids = b.input.to_vec2::<u32>().unwrap();
        let v: serde_json::Value = serde_json::from_str(BATCH_JSON).unwrap();
        let want: Vec<Vec<u32>> = serde_json::from_value(v["input_ids"].clone()).unwrap();
        assert_eq!(ids, want);
        let t = b.targets.to_vec2::<u32>().unwrap();
        let m = b.mask.to_vec2::<f32>().unwrap();
        assert_eq!(t[2][10], ids[2][11]);
        assert_eq!(m[3][254], 1.0);
        assert_eq!(m[3][255], 0.0);
        let trained: f32 = m.iter().flatten().sum();
        assert_eq!(trained, (4 * 255) as f32);
        assert!(
            Batch::new(&reference_ids().unwrap(), 1, 8, 100).is_err(),
            "ids beyond a tiny vocabulary"
        );
    }

    /// Another model's batch is the benchmark chats in its own tokens: here a tiny
    /// byte-level model, whose ids are the text's bytes (shifted past its 3 specials).
    #[test]
    fn other_models_tokenize_the_benchmark_chats_themselves() {
        let dir = tempfile::tempdir().unwrap();
        let (gguf, _) = hone_model::testing::write_tiny_model(
            dir.path(),
            &hone_model::testing::TinySpec::default(),
        )
        .unwrap();
        let open = OpenModel::open_path(&gguf).unwrap();
        let ids = chat_ids(&open).unwrap();
        let first: Vec<ChatMessage> = serde_json::from_value(
            serde_json::from_str::<serde_json::Value>(CHATS_JSONL.lines().next().unwrap()).unwrap()
                ["messages"]
                .clone(),
        )
        .unwrap();
        let want = open.tokenizer.template.render(&first, false, None).unwrap();
        assert!(want.starts_with("<|im_start|>system\nYou are"), "{want:?}");
        let head = open.tokenizer.tokenizer.encode(&want).unwrap();
        assert_eq!(&ids[..head.len()], head.as_slice());
        assert_eq!(ids[0], 1, "<|im_start|> is one special token");
        assert!(ids.len() > 4 * 256, "enough for the default batch");
        let b = Batch::new(&ids, 4, 256, open.config.vocab_size).unwrap();
        assert_eq!(b.input.dims(), &[4, 256]);
    }

    #[test]
    fn proc_counters_are_readable() {
        assert!(self_ticks().is_some());
        assert!(machine_busy_ticks().is_some());
        assert!(peak_rss_bytes().unwrap() > 0);
    }
}
