//! AdamW with state we own, so that a checkpoint can save and restore it exactly.
//!
//! candle-nn's AdamW keeps its moments private, so a resumed run could not continue the
//! same trajectory. This one follows PyTorch's `torch.optim.AdamW` (single-tensor path)
//! operation for operation in f32, and keeps the moments as plain `Vec<f32>`: a restored
//! optimizer produces bit-identical parameters.

use crate::error::{Result, TrainError};
use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};
use std::collections::{HashMap, HashSet};

/// Hyperparameters (not state: they come from the job's configuration).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Decoupled weight decay: `p ← p · (1 − lr · weight_decay)` before the Adam update.
    pub weight_decay: f64,
    /// Clip the global gradient L2 norm to this value (PyTorch `clip_grad_norm_`).
    pub max_grad_norm: Option<f64>,
}

impl Default for AdamWConfig {
    /// PyTorch's defaults, except weight decay 0 (peft/TRL's usual LoRA setting) and
    /// clipping at 1.0 (the Hugging Face Trainer's default).
    fn default() -> Self {
        AdamWConfig {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            max_grad_norm: Some(1.0),
        }
    }
}

/// What one step did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepStats {
    /// The global gradient L2 norm before clipping.
    pub grad_norm: f64,
    /// Whether the gradients were scaled down by clipping.
    pub clipped: bool,
}

struct Param {
    name: String,
    var: Var,
    exp_avg: Vec<f32>,
    exp_avg_sq: Vec<f32>,
}

pub struct AdamW {
    config: AdamWConfig,
    params: Vec<Param>,
    step: u64,
}

const STEP_KEY: &str = "adamw.step";

impl AdamW {
    /// An optimizer over named f32 parameters. Names key the saved state, so they must be
    /// unique and stable across runs (use the adapter's tensor names).
    pub fn new(params: Vec<(String, Var)>, config: AdamWConfig) -> Result<Self> {
        let mut seen = HashSet::new();
        let mut out = Vec::with_capacity(params.len());
        for (name, var) in params {
            if !seen.insert(name.clone()) {
                return Err(TrainError::Optimizer(format!(
                    "duplicate parameter name `{name}`"
                )));
            }
            if var.dtype() != DType::F32 {
                return Err(TrainError::Optimizer(format!(
                    "parameter `{name}` is {:?}, not f32",
                    var.dtype()
                )));
            }
            let n = var.elem_count();
            out.push(Param {
                name,
                var,
                exp_avg: vec![0.0; n],
                exp_avg_sq: vec![0.0; n],
            });
        }
        Ok(AdamW {
            config,
            params: out,
            step: 0,
        })
    }

    pub fn config(&self) -> &AdamWConfig {
        &self.config
    }

    /// Number of steps taken (restored by [`AdamW::load_state`]).
    pub fn steps_taken(&self) -> u64 {
        self.step
    }

    /// One step from a `backward()` result. Every parameter must have a gradient: a
    /// missing one means an op dropped it, which is an error rather than a silent no-op.
    pub fn step(&mut self, grads: &GradStore, lr: f64) -> Result<StepStats> {
        let grads = self
            .params
            .iter()
            .map(|p| {
                grads
                    .get(p.var.as_tensor())
                    .cloned()
                    .ok_or_else(|| TrainError::MissingGradient(p.name.clone()))
            })
            .collect::<Result<Vec<_>>>()?;
        self.step_with_grads(&grads, lr)
    }

    /// One step with explicit gradients, in the order the parameters were given (e.g.
    /// gradients accumulated over micro-batches). A non-finite gradient norm is an error
    /// and leaves parameters and state untouched.
    pub fn step_with_grads(&mut self, grads: &[Tensor], lr: f64) -> Result<StepStats> {
        if grads.len() != self.params.len() {
            return Err(TrainError::Optimizer(format!(
                "{} gradients for {} parameters",
                grads.len(),
                self.params.len()
            )));
        }
        let mut flat = Vec::with_capacity(grads.len());
        for (p, g) in self.params.iter().zip(grads) {
            if g.dims() != p.var.dims() {
                return Err(TrainError::Optimizer(format!(
                    "gradient for `{}` has shape {:?}, expected {:?}",
                    p.name,
                    g.dims(),
                    p.var.dims()
                )));
            }
            flat.push(g.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?);
        }
        let stats = clip_global_norm(&mut flat, self.config.max_grad_norm)?;
        self.step += 1;
        for (p, g) in self.params.iter_mut().zip(&flat) {
            update(&self.config, p, g, lr, self.step)?;
        }
        Ok(stats)
    }

    /// The state to checkpoint: per parameter `<name>.exp_avg` and `<name>.exp_avg_sq`
    /// (shaped like the parameter), and `adamw.step` (i64, shape `(1)`).
    pub fn state_tensors(&self) -> Result<HashMap<String, Tensor>> {
        let mut state = HashMap::new();
        for p in &self.params {
            let shape = p.var.shape();
            state.insert(
                format!("{}.exp_avg", p.name),
                Tensor::from_slice(&p.exp_avg, shape, &Device::Cpu)?,
            );
            state.insert(
                format!("{}.exp_avg_sq", p.name),
                Tensor::from_slice(&p.exp_avg_sq, shape, &Device::Cpu)?,
            );
        }
        state.insert(
            STEP_KEY.into(),
            Tensor::from_slice(&[self.step as i64], 1, &Device::Cpu)?,
        );
        Ok(state)
    }

    /// Restores state saved by [`AdamW::state_tensors`]. Every parameter's moments must be
    /// present with the right shape; nothing is changed on error.
    pub fn load_state(&mut self, state: &HashMap<String, Tensor>) -> Result<()> {
        let get = |key: &str| {
            state
                .get(key)
                .ok_or_else(|| TrainError::Optimizer(format!("state has no `{key}`")))
        };
        let step = get(STEP_KEY)?
            .to_dtype(DType::I64)?
            .flatten_all()?
            .to_vec1::<i64>()?;
        let step = match step.as_slice() {
            [s] if *s >= 0 => *s as u64,
            _ => return Err(TrainError::Optimizer(format!("bad `{STEP_KEY}`: {step:?}"))),
        };
        let mut moments = Vec::with_capacity(self.params.len());
        for p in &self.params {
            let mut pair = Vec::with_capacity(2);
            for suffix in ["exp_avg", "exp_avg_sq"] {
                let key = format!("{}.{suffix}", p.name);
                let t = get(&key)?;
                if t.dims() != p.var.dims() || t.dtype() != DType::F32 {
                    return Err(TrainError::Optimizer(format!(
                        "`{key}` is {:?} {:?}, expected f32 {:?}",
                        t.dtype(),
                        t.dims(),
                        p.var.dims()
                    )));
                }
                pair.push(t.flatten_all()?.to_vec1::<f32>()?);
            }
            moments.push(pair);
        }
        for (p, mut pair) in self.params.iter_mut().zip(moments) {
            p.exp_avg_sq = pair.pop().unwrap_or_default();
            p.exp_avg = pair.pop().unwrap_or_default();
        }
        self.step = step;
        Ok(())
    }

    /// The state as a safetensors file's bytes (for a checkpoint directory).
    pub fn state_bytes(&self) -> Result<Vec<u8>> {
        let state = self.state_tensors()?;
        let mut entries: Vec<(&String, &Tensor)> = state.iter().collect();
        entries.sort_by(|a, b| a.0.cmp(b.0));
        Ok(safetensors::serialize(entries, None)?)
    }

    /// Restores state from [`AdamW::state_bytes`].
    pub fn load_state_bytes(&mut self, bytes: &[u8]) -> Result<()> {
        let state = candle_core::safetensors::load_buffer(bytes, &Device::Cpu)?;
        self.load_state(&state)
    }
}

/// Scales the gradients in place so their global L2 norm is at most `max_norm`, as
/// PyTorch's `clip_grad_norm_` (coefficient `max_norm / (norm + 1e-6)`).
fn clip_global_norm(grads: &mut [Vec<f32>], max_norm: Option<f64>) -> Result<StepStats> {
    let sum_sq: f64 = grads
        .iter()
        .flatten()
        .map(|&g| (g as f64) * (g as f64))
        .sum();
    let grad_norm = sum_sq.sqrt();
    if !grad_norm.is_finite() {
        return Err(TrainError::NonFiniteGradient(grad_norm));
    }
    let coef = max_norm.map(|m| m / (grad_norm + 1e-6)).unwrap_or(1.0);
    let clipped = coef < 1.0;
    if clipped {
        let coef = coef as f32;
        grads.iter_mut().flatten().for_each(|g| *g *= coef);
    }
    Ok(StepStats { grad_norm, clipped })
}

/// PyTorch's single-tensor AdamW update, in the same order of f32 operations.
fn update(cfg: &AdamWConfig, p: &mut Param, grad: &[f32], lr: f64, step: u64) -> Result<()> {
    let mut values = p.var.as_tensor().flatten_all()?.to_vec1::<f32>()?;
    let decay = (1.0 - lr * cfg.weight_decay) as f32;
    let (b1, b2) = (cfg.beta1 as f32, cfg.beta2 as f32);
    let bias1 = 1.0 - cfg.beta1.powi(step as i32);
    let bias2_sqrt = ((1.0 - cfg.beta2.powi(step as i32)).sqrt()) as f32;
    let step_size = (lr / bias1) as f32;
    let eps = cfg.eps as f32;
    let it = values
        .iter_mut()
        .zip(grad)
        .zip(p.exp_avg.iter_mut().zip(p.exp_avg_sq.iter_mut()));
    for ((x, &g), (m, v)) in it {
        *x *= decay;
        *m += (1.0 - b1) * (g - *m);
        *v = *v * b2 + (1.0 - b2) * g * g;
        let denom = v.sqrt() / bias2_sqrt + eps;
        *x -= step_size * (*m / denom);
    }
    p.var
        .set(&Tensor::from_vec(values, p.var.shape(), &Device::Cpu)?)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn var(values: &[f32], shape: &[usize]) -> Var {
        Var::from_tensor(&Tensor::from_slice(values, shape, &Device::Cpu).unwrap()).unwrap()
    }

    fn grad_at(step: usize, n: usize) -> Tensor {
        let v: Vec<f32> = (0..n)
            .map(|i| ((step * 31 + i * 17) % 13) as f32 / 5.0 - 1.2)
            .collect();
        Tensor::from_vec(v, n, &Device::Cpu).unwrap()
    }

    fn params() -> Vec<(String, Var)> {
        vec![
            ("a".into(), var(&[0.5, -1.0, 2.0, 0.0], &[4])),
            ("b".into(), var(&[1.0, 1.0, -3.0], &[3])),
        ]
    }

    fn values(opt: &AdamW) -> Vec<Vec<f32>> {
        opt.params
            .iter()
            .map(|p| p.var.as_tensor().to_vec1::<f32>().unwrap())
            .collect()
    }

    fn run(opt: &mut AdamW, steps: std::ops::Range<usize>) {
        for s in steps {
            let grads = [grad_at(s, 4), grad_at(s + 100, 3)];
            opt.step_with_grads(&grads, 1e-2).unwrap();
        }
    }

    #[test]
    fn hand_computed_first_and_second_step() -> Result<()> {
        let cfg = AdamWConfig {
            beta1: 0.9,
            beta2: 0.99,
            eps: 1e-8,
            weight_decay: 0.1,
            max_grad_norm: None,
        };
        let mut opt = AdamW::new(vec![("w".into(), var(&[1.0], &[1]))], cfg)?;
        let lr = 0.1f64;
        opt.step_with_grads(&[Tensor::from_slice(&[0.5f32], 1, &Device::Cpu)?], lr)?;
        // Step 1: decay 1·(1 − 0.01) = 0.99; m = 0.05, v = 0.0025; m̂ = 0.5, v̂ = 0.25.
        // p = 0.99 − 0.1 · 0.5 / (0.5 + 1e-8).
        let p1 = 0.99 - 0.1 * 0.5 / (0.5 + 1e-8);
        assert!((values(&opt)[0][0] as f64 - p1).abs() < 1e-6);
        opt.step_with_grads(&[Tensor::from_slice(&[-1.0f32], 1, &Device::Cpu)?], lr)?;
        let (m, v) = (0.9 * 0.05 - 0.1, 0.99 * 0.0025 + 0.01);
        let (mh, vh) = (m / (1.0 - 0.81), v / (1.0 - 0.9801f64));
        let p2 = p1 * 0.99 - lr * mh / (vh.sqrt() + 1e-8);
        assert!(
            (values(&opt)[0][0] as f64 - p2).abs() < 1e-6,
            "{} vs {p2}",
            values(&opt)[0][0]
        );
        assert_eq!(opt.steps_taken(), 2);
        Ok(())
    }

    #[test]
    fn save_and_reload_halfway_is_bit_identical() -> Result<()> {
        let cfg = AdamWConfig {
            weight_decay: 0.01,
            max_grad_norm: Some(0.5),
            ..Default::default()
        };
        let mut straight = AdamW::new(params(), cfg)?;
        run(&mut straight, 0..20);

        let mut first = AdamW::new(params(), cfg)?;
        run(&mut first, 0..10);
        let bytes = first.state_bytes()?;
        let saved_params: Vec<(String, Var)> = first
            .params
            .iter()
            .map(|p| {
                (
                    p.name.clone(),
                    var(&p.var.as_tensor().to_vec1::<f32>().unwrap(), p.var.dims()),
                )
            })
            .collect();
        drop(first);
        let mut resumed = AdamW::new(saved_params, cfg)?;
        resumed.load_state_bytes(&bytes)?;
        assert_eq!(resumed.steps_taken(), 10);
        run(&mut resumed, 10..20);

        let bits = |o: &AdamW| {
            values(o)
                .concat()
                .iter()
                .map(|v| v.to_bits())
                .collect::<Vec<_>>()
        };
        assert_eq!(bits(&straight), bits(&resumed));
        Ok(())
    }

    #[test]
    fn clipping_reports_the_pre_clip_norm() -> Result<()> {
        let cfg = AdamWConfig {
            max_grad_norm: Some(1.0),
            ..Default::default()
        };
        let mut opt = AdamW::new(vec![("w".into(), var(&[0.0, 0.0], &[2]))], cfg)?;
        let stats =
            opt.step_with_grads(&[Tensor::from_slice(&[3.0f32, 4.0], 2, &Device::Cpu)?], 0.1)?;
        assert!((stats.grad_norm - 5.0).abs() < 1e-9);
        assert!(stats.clipped);
        let mut flat = vec![vec![3.0f32, 4.0]];
        clip_global_norm(&mut flat, Some(1.0))?;
        let norm: f32 = flat[0].iter().map(|g| g * g).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5);
        Ok(())
    }

    #[test]
    fn non_finite_gradient_is_rejected_without_changes() -> Result<()> {
        let mut opt = AdamW::new(
            vec![("w".into(), var(&[1.0], &[1]))],
            AdamWConfig::default(),
        )?;
        let err = opt.step_with_grads(&[Tensor::from_slice(&[f32::NAN], 1, &Device::Cpu)?], 0.1);
        assert!(matches!(err, Err(TrainError::NonFiniteGradient(_))));
        assert_eq!(values(&opt)[0], vec![1.0]);
        assert_eq!(opt.steps_taken(), 0);
        Ok(())
    }

    #[test]
    fn missing_gradient_is_an_error() -> Result<()> {
        let a = var(&[1.0, 2.0], &[2]);
        let b = var(&[3.0], &[1]);
        let mut opt = AdamW::new(
            vec![("a".into(), a.clone()), ("b".into(), b)],
            AdamWConfig::default(),
        )?;
        let grads = a.as_tensor().sqr()?.sum_all()?.backward()?;
        assert!(matches!(opt.step(&grads, 0.1), Err(TrainError::MissingGradient(n)) if n == "b"));
        Ok(())
    }

    #[test]
    fn load_state_rejects_wrong_shapes() -> Result<()> {
        let mut small = AdamW::new(
            vec![("w".into(), var(&[1.0], &[1]))],
            AdamWConfig::default(),
        )?;
        let big = AdamW::new(
            vec![("w".into(), var(&[1.0, 2.0], &[2]))],
            AdamWConfig::default(),
        )?;
        assert!(small.load_state(&big.state_tensors()?).is_err());
        Ok(())
    }
}
