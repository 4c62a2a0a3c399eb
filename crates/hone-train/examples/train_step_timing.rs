//! Times the pieces of one training step on the real model (bench batch 4×256):
//! `cargo run --release -p hone-train --example train_step_timing -- MODEL.gguf BATCH.json`.

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use hone_model::{load_model, LoraConfig, LoraParams, TrainOptions, WeightPath};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let mut model = load_model(std::path::Path::new(&args[1]), WeightPath::F32)?;
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&args[2])?)?;
    let rows: Vec<Vec<u32>> = serde_json::from_value(v["input_ids"].clone())?;
    let (b, t) = (rows.len(), rows[0].len() - 1);
    let dev = Device::Cpu;
    let input: Vec<u32> = rows.iter().flat_map(|r| r[..t].to_vec()).collect();
    let target: Vec<u32> = rows.iter().flat_map(|r| r[1..].to_vec()).collect();
    let input = Tensor::from_vec(input, (b, t), &dev)?;
    let target = Tensor::from_vec(target, (b, t), &dev)?;
    let mask = Tensor::ones((b, t), DType::F32, &dev)?;
    let targets = std::env::var("TARGETS").unwrap_or_else(|_| "all-linear".into());
    let lora = LoraConfig {
        target_modules: LoraConfig::parse_target_modules(&targets)?,
        ..Default::default()
    };
    LoraParams::attach(&mut model, &lora, 0)?;
    for i in 0..3 {
        let t0 = Instant::now();
        let _ = model.forward(&input, 0, None)?;
        let inf = t0.elapsed().as_secs_f64();
        let t0 = Instant::now();
        let h = model.forward_train_hidden(&input, TrainOptions::default())?;
        let hid = t0.elapsed().as_secs_f64();
        let logits = model.train_logits(&h)?;
        let head = t0.elapsed().as_secs_f64() - hid;
        let loss = hone_model::ops::masked_cross_entropy(&logits, &target, &mask)?;
        let fwd = t0.elapsed().as_secs_f64();
        let _g = loss.backward()?;
        let all = t0.elapsed().as_secs_f64();
        println!(
            "run {i}: inference fwd {inf:.2}s | train: body {hid:.2}s head {head:.2}s fwd {fwd:.2}s, fwd+bwd {all:.2}s = {:.0} tok/s",
            (b * t) as f64 / all
        );
    }
    Ok(())
}
