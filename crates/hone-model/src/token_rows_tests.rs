//! Trainable token rows ([`crate::token_rows`]) on the tiny random model, tied and
//! untied (its own LM head): what they change, their gradient, the adapter switch, the
//! PEFT files, merge, and the packed decode step with a batch of mixed adapters.

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};

use crate::kv_cache::Feed;
use crate::lora::{load_peft_adapter, LoraConfig, LoraParams, ADAPTER_CONFIG_FILE};
use crate::ops::masked_cross_entropy;
use crate::testing::{max_abs, tiny_weights, write_tiny_gguf, TinySpec};
use crate::train_forward::TrainOptions;
use crate::train_tests::{all_linear, batch, fd_check, max_diff, randomize_b, tiny};
use crate::{load_model, merge_adapters, ForwardOptions, Llama, TokenRows, WeightPath};
use candle_core::Var;

/// Tokens of [`batch`]'s inputs and trained targets.
const IDS: [u32; 2] = [41, 51];

fn with_rows() -> LoraConfig {
    LoraConfig {
        trainable_tokens: IDS.to_vec(),
        ..all_linear()
    }
}

/// Moves the rows (the embedding's, and an untied head's differently) away from the base
/// rows, deterministically, so that they matter.
fn perturb_rows(params: &LoraParams, scale: f32) {
    let t = params.tokens.as_ref().expect("token rows");
    let shift = |rows: &Var, seed: usize| {
        let (k, h) = rows.dims2().unwrap();
        let d: Vec<f32> = (0..k * h)
            .map(|i| scale * (((i * 37 + seed) % 23) as f32 / 23.0 - 0.5))
            .collect();
        let d = Tensor::from_vec(d, (k, h), &Device::Cpu).unwrap();
        rows.set(&(rows.as_tensor() + d).unwrap()).unwrap();
    };
    shift(&t.rows, 11);
    if let Some(head) = &t.head {
        shift(head, 5);
    }
}

/// The tiny model as [`tiny`] writes it (tied), or untied: the same weights plus an LM
/// head of its own (the embedding scaled, so the two differ). `q4_1`: linear layers
/// Q4_1 and the embedding Q8_0-representable, so the packed and the f32 paths multiply
/// the same weights (as tests/it/packed.rs builds it).
fn tiny_gguf(dir: &std::path::Path, tied: bool, q4_1: bool) -> std::path::PathBuf {
    let spec = TinySpec::default();
    let mut w = tiny_weights(&spec).unwrap();
    if q4_1 {
        for (name, t) in w.iter_mut() {
            if name.contains("embed_tokens") {
                let q = QTensor::quantize(t, GgmlDType::Q8_0).unwrap();
                *t = q.dequantize(&Device::Cpu).unwrap();
            }
        }
    }
    if !tied {
        let embed = &w
            .iter()
            .find(|(n, _)| n.contains("embed_tokens"))
            .unwrap()
            .1;
        let head = embed.affine(-0.7, 0.05).unwrap();
        w.push(("lm_head.weight".into(), head));
    }
    let path = dir.join(format!("tiny-{tied}-{q4_1}.gguf"));
    let dtype = if q4_1 {
        GgmlDType::Q4_1
    } else {
        GgmlDType::F32
    };
    write_tiny_gguf(&path, &spec, &w, dtype).unwrap();
    path
}

/// The tiny f32 model, tied or untied (see [`tiny_gguf`]).
fn tiny_model(tied: bool) -> (tempfile::TempDir, Llama) {
    if tied {
        return tiny();
    }
    let dir = tempfile::tempdir().unwrap();
    let m = load_model(&tiny_gguf(dir.path(), false, false), WeightPath::F32).unwrap();
    assert!(!m.cfg.tie_word_embeddings);
    (dir, m)
}

fn logits(m: &Llama, ids: &[u32], use_adapters: bool) -> Tensor {
    let input = Tensor::new(ids, &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    m.forward_with(&input, 0, None, ForwardOptions { use_adapters })
        .unwrap()
        .squeeze(0)
        .unwrap()
}

#[test]
fn rows_start_as_the_base_and_change_only_their_tokens() {
    for tied in [true, false] {
        rows_change_only_their_tokens(tied);
    }
}

fn rows_change_only_their_tokens(tied: bool) {
    let (_d, mut m) = tiny_model(tied);
    assert_eq!(m.spec.tie_word_embeddings, tied);
    let plain = [1u32, 60, 61, 62, 63];
    let before = logits(&m, &plain, true);
    let params = LoraParams::attach(&mut m, &with_rows(), 3).unwrap();
    // An untied head has rows of its own, a tied one reads the embedding's.
    assert_eq!(params.tokens.as_ref().unwrap().head.is_some(), !tied);
    // The chosen columns are recomputed from the copied rows: equal up to rounding.
    assert!(max_diff(&before, &logits(&m, &plain, true)) < 1e-5);
    perturb_rows(&params, 0.5);
    // No chosen token in the input: only the chosen columns of the head move.
    let after = logits(&m, &plain, true);
    let per_column = (&after - &before)
        .unwrap()
        .abs()
        .unwrap()
        .max(0)
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    for (col, d) in per_column.iter().enumerate() {
        if IDS.contains(&(col as u32)) {
            assert!(*d > 1e-3, "column {col} did not move");
        } else {
            assert_eq!(*d, 0.0, "column {col} moved by {d}");
        }
    }
    // The embedding: exactly the rows at the chosen tokens, the table elsewhere.
    let ids = Tensor::new(&[[60u32, 41, 61, 51]], &Device::Cpu).unwrap();
    let on = m.embed(&ids, true).unwrap().squeeze(0).unwrap();
    let off = m.embed(&ids, false).unwrap().squeeze(0).unwrap();
    let rows = params.tokens.as_ref().unwrap().rows.as_tensor();
    for (pos, want) in [(1, Some(0)), (3, Some(1)), (0, None), (2, None)] {
        let got = on.get(pos).unwrap();
        match want {
            Some(j) => assert_eq!(max_diff(&got, &rows.get(j).unwrap()), 0.0),
            None => assert_eq!(max_diff(&got, &off.get(pos).unwrap()), 0.0),
        }
    }
    // Switched off with the adapter (DPO's reference).
    assert_eq!(max_diff(&before, &logits(&m, &plain, false)), 0.0);
}

#[test]
fn gradient_of_token_rows_matches_finite_differences() {
    for tied in [true, false] {
        let (_d, mut m) = tiny_model(tied);
        let params = LoraParams::attach(&mut m, &with_rows(), 5).unwrap();
        randomize_b(&params, 0.3);
        perturb_rows(&params, 0.3);
        let t = params.tokens.as_ref().unwrap();
        let h = m.cfg.hidden_size;
        // Row 0 (41) and row 1 (51): inputs (embedding side) and targets (head side,
        // through the embedding's rows when tied, the head's own when untied).
        for rows in std::iter::once(&t.rows).chain(&t.head) {
            for idx in [3, 17, h + 5, h + 40] {
                fd_check(rows, idx, &m);
            }
        }
    }
}

/// The fused LM-head loss with rows equals the loss over the materialised patched
/// logits, in value and in both gradients (rows and LoRA).
#[test]
fn fused_loss_with_rows_matches_the_materialised_logits() {
    for tied in [true, false] {
        fused_loss_matches(tied);
    }
}

fn fused_loss_matches(tied: bool) {
    let (_d, mut m) = tiny_model(tied);
    let params = LoraParams::attach(&mut m, &with_rows(), 7).unwrap();
    randomize_b(&params, 0.2);
    perturb_rows(&params, 0.4);
    let (input, targets, mask) = batch();
    let opts = TrainOptions::default();
    let fused = m.train_loss(&input, &targets, &mask, opts).unwrap().loss;
    let z = m.forward_train(&input, opts).unwrap();
    let unfused = masked_cross_entropy(&z, &targets, &mask).unwrap();
    assert!(max_diff(&fused, &unfused) < 1e-5);
    let (gf, gu) = (fused.backward().unwrap(), unfused.backward().unwrap());
    for (name, var) in params.trainable() {
        let (a, b) = (gf.get(var.as_tensor()), gu.get(var.as_tensor()));
        let (a, b) = (a.expect(&name), b.expect(&name));
        assert!(max_diff(a, b) <= 1e-4 * max_abs(b).max(1.0), "{name}");
    }
    // The DPO reference: adapter off, rows off, no gradient to them.
    let off = TrainOptions {
        use_adapters: false,
        ..opts
    };
    let l = m.train_loss(&input, &targets, &mask, off).unwrap().loss;
    let g = l.backward().unwrap();
    for (name, var) in params.trainable() {
        assert!(g.get(var.as_tensor()).is_none(), "{name}");
    }
}

#[test]
fn rows_are_saved_in_peft_layout_and_load_back() {
    for tied in [true, false] {
        saved_rows_load_back(tied);
    }
}

fn saved_rows_load_back(tied: bool) {
    let dir = tempfile::tempdir().unwrap();
    let gguf = tiny_gguf(dir.path(), tied, true);
    let mut m = load_model(&gguf, WeightPath::F32).unwrap();
    let params = LoraParams::attach(&mut m, &with_rows(), 9).unwrap();
    randomize_b(&params, 0.2);
    perturb_rows(&params, 0.5);
    let out = dir.path().join("adapter");
    params.save_peft(&out, "tiny").unwrap();
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join(ADAPTER_CONFIG_FILE)).unwrap())
            .unwrap();
    // PEFT's forms: a list when tied, a map naming both layers when untied.
    let want_cfg = match tied {
        true => serde_json::json!(IDS),
        false => serde_json::json!({"embed_tokens": IDS, "lm_head": IDS}),
    };
    assert_eq!(cfg["trainable_token_indices"], want_cfg);
    let mut names: Vec<String> =
        candle_core::safetensors::load(out.join("adapter_model.safetensors"), &Device::Cpu)
            .unwrap()
            .into_keys()
            .filter(|k| k.contains("token_adapter"))
            .collect();
    names.sort();
    let mut want = vec!["base_model.model.model.embed_tokens.token_adapter.trainable_tokens_delta"];
    if !tied {
        want.insert(
            0,
            "base_model.model.lm_head.token_adapter.trainable_tokens_delta",
        );
    }
    assert_eq!(names, want);

    let text = [1u32, 41, 60, 51, 61];
    let want = logits(&m, &text, true);
    let mut fresh = load_model(&gguf, WeightPath::F32).unwrap();
    load_peft_adapter(&mut fresh, &out).unwrap();
    assert_eq!(max_diff(&want, &logits(&fresh, &text, true)), 0.0);

    // Merge writes the rows into the table and the head: the plain model equals the adapter.
    let stats = merge_adapters(&mut fresh).unwrap();
    assert_eq!(stats.merged_token_rows, 2);
    assert!(fresh.token_rows().is_none());
    let d = max_diff(&want, &logits(&fresh, &text, true));
    assert!(d < 1e-4, "merged differs by {d}");

    // The packed step, one row on the adapter and one on the bare base in one batch,
    // equals the tensor forward of each.
    let packed = load_model(&gguf, WeightPath::Packed).unwrap();
    let mut tuned = packed.clone();
    load_peft_adapter(&mut tuned, &out).unwrap();
    let mut reference = load_model(&gguf, WeightPath::F32).unwrap();
    load_peft_adapter(&mut reference, &out).unwrap();
    let other = [1u32, 51, 70, 41];
    let (mut c1, mut c2) = (tuned.new_cache(), packed.new_cache());
    let mut feeds = [
        Feed {
            model: &tuned,
            ids: &text,
            cache: &mut c1,
        },
        Feed {
            model: &packed,
            ids: &other,
            cache: &mut c2,
        },
    ];
    let got = Llama::step_feeds(&mut feeds, ForwardOptions::default()).unwrap();
    let last = |t: Tensor| t.get(t.dim(0).unwrap() - 1).unwrap();
    let want_tuned = last(logits(&reference, &text, true));
    let want_base = last(logits(&reference, &other, false));
    let as_t = |v: &Vec<f32>| Tensor::new(v.as_slice(), &Device::Cpu).unwrap();
    // Summation order only (tests/it/packed.rs holds the two paths to 1e-3 too).
    assert!(max_diff(&as_t(&got[0]), &want_tuned) < 1e-3);
    assert!(max_diff(&as_t(&got[1]), &want_base) < 1e-3);
    // And the rows did matter to the tuned row.
    assert!(max_diff(&want_tuned, &last(logits(&reference, &text, false))) > 0.1);
}

#[test]
fn bad_token_ids_are_clear_errors() {
    let (_d, mut m) = tiny();
    let vocab = m.cfg.vocab_size as u32;
    for (ids, want) in [
        (vec![vocab], "outside the vocabulary"),
        (vec![5, 5], "listed twice"),
    ] {
        let cfg = LoraConfig {
            trainable_tokens: ids,
            ..all_linear()
        };
        let e = LoraParams::attach(&mut m, &cfg, 1).unwrap_err().to_string();
        assert!(e.contains(want), "{e}");
    }
}

#[test]
fn peft_token_index_forms_are_read_or_refused_clearly() {
    use serde_json::json;
    let base = crate::PeftConfig::from_lora(&LoraConfig::default(), "tiny");
    let with = |v: serde_json::Value| crate::PeftConfig {
        trainable_token_indices: Some(v),
        ..base.clone()
    };
    for (v, want) in [
        (json!([3, 4]), (vec![3, 4], false)),
        (json!({"embed_tokens": [3, 4]}), (vec![3, 4], false)),
        (
            json!({"model.embed_tokens": [3, 4], "lm_head": [3, 4]}),
            (vec![3, 4], true),
        ),
    ] {
        assert_eq!(with(v.clone()).token_ids().unwrap(), want, "{v}");
    }
    for (v, want) in [
        (json!({"embed_tokens": [3], "lm_head": [4]}), "differ"),
        (json!({"lm_head": [4]}), "without `embed_tokens`"),
        (json!({"q_proj": [1]}), "not supported"),
    ] {
        let e = with(v.clone()).token_ids().unwrap_err().to_string();
        assert!(e.contains(want), "{v}: {e}");
    }
}

/// Embedding rows alone on an untied model (PEFT's list form) leave the head's columns
/// as they are; a tied model refuses head rows of its own.
#[test]
fn head_rows_follow_the_model_s_tying() {
    let (_d, untied) = tiny_model(false);
    let rows = untied.embedding_rows(&IDS).unwrap();
    let only_embed = TokenRows::new(&untied.cfg, IDS.to_vec(), rows.clone(), None).unwrap();
    assert!(only_embed.head_rows().is_none());
    let z = Tensor::ones(
        (2, untied.cfg.vocab_size),
        candle_core::DType::F32,
        &Device::Cpu,
    )
    .unwrap();
    let hidden = Tensor::ones(
        (2, untied.cfg.hidden_size),
        candle_core::DType::F32,
        &Device::Cpu,
    )
    .unwrap();
    assert_eq!(
        max_diff(&only_embed.patch_logits(&z, &hidden).unwrap(), &z),
        0.0
    );
    // The untied head's base rows are its own, not the embedding's.
    let head = untied.head_rows(&IDS).unwrap();
    assert!(max_diff(&head, &rows) > 0.1);

    let (_d, tied) = tiny_model(true);
    let e = TokenRows::new(&tied.cfg, IDS.to_vec(), rows.clone(), Some(rows))
        .unwrap_err()
        .to_string();
    assert!(e.contains("ties its LM head"), "{e}");
}
