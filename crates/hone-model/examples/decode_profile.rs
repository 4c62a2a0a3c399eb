//! Where decode time goes in the tensor forward pass (layers against LM
//! head): `cargo run --release -p hone-model --example decode_profile --
//! MODEL.gguf [f32|packed]` (packed runs its weights through the tensor pass
//! here, not through the packed decode step).

use std::time::Instant;

use candle_core::{Device, Tensor};
use hone_model::{load_model, ForwardOptions, TensorKvCache, WeightPath};

fn main() -> hone_model::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let wp = match args.get(2).map(String::as_str) {
        Some("packed") => WeightPath::Packed,
        _ => WeightPath::F32,
    };
    let m = load_model(std::path::Path::new(&args[1]), wp)?;
    let prompt: Vec<u32> = (0..40).map(|i| 100 + i).collect();
    let n = 100;
    let x = Tensor::new(prompt.as_slice(), &Device::Cpu)?.unsqueeze(0)?;
    let mut cache = TensorKvCache::new(&m.cfg);
    m.forward_hidden(&x, 0, Some(&mut cache), ForwardOptions::default())?;
    let tok = Tensor::new(&[42u32], &Device::Cpu)?.unsqueeze(0)?;
    let t = Instant::now();
    let mut h = None;
    for i in 0..n {
        h = Some(m.forward_hidden(&tok, 40 + i, Some(&mut cache), ForwardOptions::default())?);
    }
    let layers = t.elapsed().as_secs_f64() / n as f64;
    let h = h.unwrap();
    let t = Instant::now();
    for _ in 0..n {
        m.logits(&h)?.to_vec3::<f32>()?;
    }
    let head = t.elapsed().as_secs_f64() / n as f64;
    println!(
        "{wp:?}: layers {:.2} ms/token, lm_head {:.2} ms/token => {:.1} tok/s",
        layers * 1e3,
        head * 1e3,
        1.0 / (layers + head)
    );
    Ok(())
}
