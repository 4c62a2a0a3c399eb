//! Test helpers: deterministic random tensors and a gradient checker that compares an op
//! with a reference made of stock differentiable candle ops, and with finite differences.

use candle_core::{Device, Result, Tensor, Var};

/// Deterministic standard-normal-ish values (splitmix64 + Box–Muller).
pub(crate) fn randn(shape: &[usize], seed: u64) -> Tensor {
    let n: usize = shape.iter().product();
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(1);
    let mut next = move || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    };
    let data: Vec<f32> = (0..n)
        .map(|_| {
            let (u1, u2) = (next().max(1e-12), next());
            ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
        })
        .collect();
    Tensor::from_vec(data, shape, &Device::Cpu).expect("shape matches data")
}

fn to_f64(t: &Tensor) -> Vec<f64> {
    let v: Vec<f32> = t
        .flatten_all()
        .and_then(|t| t.to_vec1())
        .expect("f32 tensor");
    v.into_iter().map(f64::from).collect()
}

/// Asserts `max |a - b| <= tol * max(1, max |b|)`.
pub(crate) fn assert_close(a: &Tensor, b: &Tensor, tol: f64, what: &str) {
    assert_eq!(a.dims(), b.dims(), "{what}: shapes differ");
    let (a, b) = (to_f64(a), to_f64(b));
    let scale = b.iter().fold(1.0f64, |m, v| m.max(v.abs()));
    let err = a
        .iter()
        .zip(&b)
        .fold(0.0f64, |m, (x, y)| m.max((x - y).abs()));
    assert!(
        err <= tol * scale,
        "{what}: max abs error {err:e} > {tol:e} × {scale}"
    );
}

fn dot(a: &Tensor, b: &Tensor) -> f64 {
    to_f64(a).iter().zip(to_f64(b)).map(|(x, y)| x * y).sum()
}

/// Checks `ours` against `reference` on `inputs`:
/// - forward outputs agree within `tol`;
/// - for inputs with `diff[i]`, the gradient of `sum(y · r)` (random `r`) agrees with
///   candle's autograd of the reference, and with a central finite difference along a
///   random direction;
/// - for float inputs without `diff[i]`, `ours` leaves no gradient at all.
pub(crate) fn check_op(
    inputs: &[Tensor],
    diff: &[bool],
    ours: impl Fn(&[Tensor]) -> Result<Tensor>,
    reference: impl Fn(&[Tensor]) -> Result<Tensor>,
    tol: f64,
) -> Result<()> {
    let vars: Vec<Tensor> = inputs
        .iter()
        .map(|t| {
            if t.dtype().is_float() {
                Var::from_tensor(t).map(|v| v.as_tensor().clone())
            } else {
                Ok(t.clone())
            }
        })
        .collect::<Result<_>>()?;
    let y = ours(&vars)?;
    let y_ref = reference(&vars)?;
    assert_close(&y, &y_ref, tol, "forward");

    let r = randn(y.dims(), 4242);
    let grads = (&y * &r)?.sum_all()?.backward()?;
    let grads_ref = (&y_ref * &r)?.sum_all()?.backward()?;
    for (i, t) in vars
        .iter()
        .enumerate()
        .filter(|(_, t)| t.dtype().is_float())
    {
        if !diff[i] {
            assert!(grads.get(t).is_none(), "input {i} must get no gradient");
            continue;
        }
        let g = grads.get(t).expect("gradient for a differentiable input");
        let g_ref = grads_ref.get(t).expect("reference gradient");
        assert_close(
            g,
            g_ref,
            tol * 10.0,
            &format!("grad of input {i} vs autograd"),
        );

        // Central finite difference of L(x) = sum(ours(x) · r) along a direction v.
        let v = randn(t.dims(), 777 + i as u64);
        let eps = 1e-2;
        let loss_at = |sign: f64| -> Result<f64> {
            let mut shifted: Vec<Tensor> = inputs.to_vec();
            shifted[i] = (&inputs[i] + (&v * (sign * eps))?)?;
            Ok(dot(&ours(&shifted)?, &r))
        };
        let fd = (loss_at(1.0)? - loss_at(-1.0)?) / (2.0 * eps);
        let analytic = dot(g, &v);
        assert!(
            (fd - analytic).abs() <= 2e-2 * analytic.abs().max(1.0),
            "input {i}: finite difference {fd} vs analytic {analytic}"
        );
    }
    Ok(())
}

/// `n` values in [-1, 1) from a multiplicative hash of the index and `seed`: fixed test
/// data for the slice kernels, without a random generator.
pub(crate) fn hashed(n: usize, seed: u32) -> Vec<f32> {
    (0..n)
        .map(|i| {
            ((i as u32).wrapping_mul(2654435761).wrapping_add(seed) % 1000) as f32 / 500.0 - 1.0
        })
        .collect()
}
