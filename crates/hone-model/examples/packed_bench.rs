//! Throughput of the packed kernels on the shapes of SmolLM2-135M, for one
//! activation row: `HONE_THREADS=2 cargo run --release -p hone-model --example packed_bench`.
use std::time::Instant;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use hone_model::decode::{team, PackedMatrix};

fn main() -> hone_model::Result<()> {
    let shapes = [
        (576usize, 576usize, GgmlDType::Q4_1),
        (1536, 576, GgmlDType::Q4_1),
        (576, 1536, GgmlDType::Q4_1),
        (49152, 576, GgmlDType::Q8_0),
    ];
    let threads = team::global().threads();
    for (rows, cols, dt) in shapes {
        let w = Tensor::randn(0f32, 1., (rows, cols), &Device::Cpu)?;
        let p = PackedMatrix::from_qtensor(&QTensor::quantize(&w, dt)?)?;
        let x: Vec<f32> = (0..cols).map(|i| (i as f32).sin()).collect();
        // Enough calls to stream ~2 GB of weights.
        let reps = (2_000_000_000 / p.bytes()).max(10);
        let t0 = Instant::now();
        for _ in 0..reps {
            std::hint::black_box(p.matmul(&x, 1)?);
        }
        let t = t0.elapsed().as_secs_f64();
        println!(
            "{rows}x{cols} {dt:?} threads {threads}: {:.1} us/call, {:.2} GB/s",
            t / reps as f64 * 1e6,
            p.bytes() as f64 * reps as f64 / t / 1e9
        );
    }
    Ok(())
}
