//! The library API end to end: parse, stats, auto, estimate, split, convert,
//! and the JSON shape the server stores.

use std::fs;

use hone_data::estimate::{default_hosted_prices, estimate, EstimateInput, Throughput};
use hone_data::hparams::{resolve_auto, AutoInput, Overrides};
use hone_data::split::split_file;
use hone_data::{detect_method, parse_preference_file, parse_sft_file, DataError, Method};

use crate::common::{dpo_line, sft_line, validate, validate_with_tokens};

fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.path().join(name);
    fs::write(&p, text).unwrap();
    p
}

#[test]
fn parse_files_into_typed_examples() {
    let dir = tempfile::tempdir().unwrap();
    let sft: String = (0..12).map(|i| sft_line(i) + "\n").collect();
    let p = write(&dir, "train.jsonl", &sft);
    let examples = parse_sft_file(&p).unwrap();
    assert_eq!(examples.len(), 12);
    assert_eq!(
        examples[3].messages[2].content,
        "Answer 3: go to the login page, click 'Forgot password' and follow the link we email you."
    );
    // The same file as DPO fails with every line reported.
    match parse_preference_file(&p) {
        Err(DataError::Invalid(r)) => {
            let missing: Vec<_> = r
                .errors
                .iter()
                .filter(|e| e.code == hone_data::Code::DpoMissingInput)
                .collect();
            assert_eq!(missing.len(), 12);
            assert!(missing[0].text.contains("--method sft"));
        }
        other => panic!("{other:?}"),
    }
    let dpo: String = (0..12).map(|i| dpo_line(i) + "\n").collect();
    let p = write(&dir, "dpo.jsonl", &dpo);
    let pairs = parse_preference_file(&p).unwrap();
    assert_eq!(pairs.len(), 12);
    assert_ne!(pairs[0].preferred, pairs[0].non_preferred);
    assert_eq!(
        detect_method(std::io::BufReader::new(fs::File::open(&p).unwrap())),
        Some(Method::Dpo)
    );
}

#[test]
fn json_report_has_the_documented_shape() {
    let mut text: String = (0..11).map(|i| sft_line(i) + "\n").collect();
    text.push_str(
        "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"},{\"role\":\"assistant\"}]}\n",
    );
    let r = validate(text.as_bytes(), None);
    let v = serde_json::to_value(&r).unwrap();
    for key in ["ok", "n_examples", "errors", "warnings", "stats"] {
        assert!(v.get(key).is_some(), "missing {key}");
    }
    assert_eq!(v["ok"], false);
    let e = &v["errors"][0];
    assert_eq!(
        (e["line"].as_u64(), e["message"].as_u64()),
        (Some(12), Some(2))
    );
    assert_eq!(e["code"], "message_missing_key");
    assert!(e["text"].as_str().unwrap().contains("content"));
    // Round trip, for the server's status_details.
    let back: hone_data::Report = serde_json::from_value(v).unwrap();
    assert_eq!(back, r);
}

#[test]
fn token_stats_feed_auto_and_the_estimate() {
    let text: String = (0..120).map(|i| sft_line(i) + "\n").collect();
    let r = validate_with_tokens(text.as_bytes(), None, None);
    let t = r.stats.tokens.as_ref().unwrap();
    // WordCounter: system 6+4, user 9+4, assistant 17+4 = 44 total, 21 trained.
    assert_eq!(
        (
            t.total_tokens_per_example.min,
            t.total_tokens_per_example.max
        ),
        (44, 44)
    );
    assert_eq!(t.trained_tokens_per_example.median, 21);
    assert_eq!(
        (t.total_tokens, t.total_trained_tokens),
        (120 * 44, 120 * 21)
    );
    let hp = resolve_auto(
        &AutoInput {
            method: r.method,
            n_examples: r.n_examples,
            mean_tokens_per_example: Some(t.total_tokens_per_example.mean),
            model: Some(hone_data::hparams::ModelSize {
                params: 135_000_000,
                tape_bytes_per_token: 829_440,
            }),
        },
        &Overrides::default(),
    )
    .unwrap();
    assert_eq!((hp.n_epochs, hp.batch_size), (3, 4));
    let e = estimate(&EstimateInput {
        method: r.method,
        n_examples: r.n_examples,
        total_tokens: t.total_tokens,
        trained_tokens: t.total_trained_tokens,
        hyperparameters: hp,
        throughput: Throughput::default(),
        price_per_hour: 0.5,
        hosted_prices: default_hosted_prices(),
    });
    assert_eq!((e.steps_per_epoch, e.total_steps), (30, 90));
    assert_eq!(e.trained_tokens_total, 3 * 120 * 21);
    assert!((e.hosted[0].usd - 3.0 * 3.0 * 120.0 * 44.0 / 1e6).abs() < 1e-12);
}

#[test]
fn split_is_deterministic_and_complete() {
    let dir = tempfile::tempdir().unwrap();
    let text: String = (0..50).map(|i| sft_line(i) + "\r\n").collect::<String>() + "\n";
    let input = write(&dir, "all.jsonl", &text);
    let (t1, v1) = (dir.path().join("t1.jsonl"), dir.path().join("v1.jsonl"));
    let (t2, v2) = (dir.path().join("t2.jsonl"), dir.path().join("v2.jsonl"));
    let s = split_file(&input, &t1, &v1, 0.1, 42).unwrap();
    split_file(&input, &t2, &v2, 0.1, 42).unwrap();
    assert_eq!((s.n_train, s.n_valid, s.n_blank_skipped), (45, 5, 1));
    assert_eq!(fs::read(&t1).unwrap(), fs::read(&t2).unwrap());
    assert_eq!(fs::read(&v1).unwrap(), fs::read(&v2).unwrap());
    let mut all: Vec<String> = fs::read_to_string(&t1)
        .unwrap()
        .lines()
        .chain(fs::read_to_string(&v1).unwrap().lines())
        .map(String::from)
        .collect();
    all.sort();
    let mut want: Vec<String> = (0..50).map(sft_line).collect();
    want.sort();
    assert_eq!(all, want);
    assert!(split_file(&input, &t1, &v1, 1.5, 42).is_err());
}

/// Near-duplicate prompts (same text up to case, punctuation and spacing) must not
/// land on both sides, or validation would score copies of training prompts.
#[test]
fn split_keeps_near_duplicate_prompts_on_one_side() {
    let dir = tempfile::tempdir().unwrap();
    let line = |q: &str, a: &str| {
        format!(
            "{{\"messages\":[{{\"role\":\"user\",\"content\":\"{q}\"}},{{\"role\":\"assistant\",\"content\":\"{a}\"}}]}}\n"
        )
    };
    let mut text = String::new();
    for i in 0..30 {
        text += &line(&format!("Question number {i}?"), &format!("Answer {i}."));
        text += &line(
            &format!("question Number {i}!!"),
            &format!("Another answer {i}."),
        );
    }
    text += "not json\n";
    let input = write(&dir, "dups.jsonl", &text);
    let (t, v) = (dir.path().join("t.jsonl"), dir.path().join("v.jsonl"));
    for seed in 0..10 {
        let s = split_file(&input, &t, &v, 0.2, seed).unwrap();
        assert_eq!(s.n_kept_with_duplicate_prompt, 30);
        assert_eq!(s.n_train + s.n_valid, 61);
        let valid = fs::read_to_string(&v).unwrap();
        let train = fs::read_to_string(&t).unwrap();
        for i in 0..30 {
            let key = format!("umber {i}");
            let needle = |s: &str| {
                s.lines()
                    .filter(|l| l.contains(&format!("{key}?")) || l.contains(&format!("{key}!!")))
                    .count()
            };
            let (nv, nt) = (needle(&valid), needle(&train));
            assert!(nv == 0 || nt == 0, "seed {seed}: prompt {i} on both sides");
            assert_eq!(nv + nt, 2);
        }
    }
}

#[test]
fn converted_files_validate() {
    let rows: String = (0..12)
        .map(|i| format!("{{\"instruction\":\"What are your opening hours on day {i}?\",\"response\":\"We are open from nine in the morning until six in the evening on day {i}.\"}}\n"))
        .collect();
    let mut out = Vec::new();
    let r = hone_data::convert::convert(
        rows.as_bytes(),
        &mut out,
        hone_data::convert::SourceFormat::Instruction,
        Some("You are the shop assistant."),
    )
    .unwrap();
    assert_eq!((r.n_converted, r.failures.len()), (12, 0));
    let report = validate(&out, None);
    assert!(report.ok, "{:#?}", report.errors);
    assert_eq!(report.n_examples, 12);
}
