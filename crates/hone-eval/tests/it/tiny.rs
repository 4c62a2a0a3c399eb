//! `run_eval` end to end on a tiny random model with a random adapter.

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use hone_eval::{run_eval, Baseline, CaseResult, EvalError, EvalSpec, ShotPick};
use hone_model::testing::{write_tiny_model, TinySpec};
use hone_model::{load_model, LoraConfig, LoraParams, TrainOptions, WeightPath};
use hone_text::{ChatMessage, ChatTokenizer, Role};

struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
    gguf: PathBuf,
    adapter: PathBuf,
    /// A tiny random sentence-transformers BERT: the embedding model of the
    /// rag baselines and the similar few-shot picks.
    embedder: PathBuf,
}

/// A tiny model and an adapter with random (non-zero) B, so that the
/// fine-tuned model really differs from its base.
fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let (gguf, _) = write_tiny_model(&root, &TinySpec::default()).unwrap();
    let mut model = load_model(&gguf, WeightPath::F32).unwrap();
    let cfg = LoraConfig {
        r: 4,
        alpha: 8.0,
        dropout: 0.0,
        target_modules: LoraConfig::parse_target_modules("all-linear").unwrap(),
        trainable_tokens: Vec::new(),
    };
    let lora = LoraParams::attach(&mut model, &cfg, 3).unwrap();
    for (i, m) in lora.modules.iter().enumerate() {
        let shape = m.b.as_tensor().shape().clone();
        let b = Tensor::randn(0f32, 0.5, shape, &Device::Cpu).unwrap();
        let b = (b * (1.0 + i as f64 * 0.01)).unwrap();
        m.b.set(&b).unwrap();
    }
    let adapter = root.join("adapter");
    lora.save_peft(&adapter, "tiny-base-not-installed").unwrap();
    let embedder = root.join("tiny-bert");
    hone_model::embed::testing::TinyBert::default()
        .write(&embedder)
        .unwrap();
    Fixture {
        _dir: dir,
        root,
        gguf,
        adapter,
        embedder,
    }
}

fn write(path: &Path, lines: &[String]) {
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

const QUESTIONS: [&str; 4] = ["Hello", "Hi there", "What is the capital?", "Paris"];

fn case(q: &str, checks: &str) -> String {
    format!(
        r#"{{"messages": [{{"role": "user", "content": {}}}], {checks}}}"#,
        serde_json::json!(q)
    )
}

fn spec(f: &Fixture, cases: &Path) -> EvalSpec {
    EvalSpec {
        model: Some(f.gguf.display().to_string()),
        max_tokens: 10,
        weights: WeightPath::F32,
        embedding_model: f.embedder.display().to_string(),
        corpus: hone_retrieve::CorpusOptions {
            cache_dir: Some(f.root.join("embedding-cache")),
            ..Default::default()
        },
        ..EvalSpec::new(cases)
    }
}

#[test]
fn tuned_and_base_share_one_load_and_compare_case_by_case() {
    let f = fixture();
    // 1. The base model alone: every case passes (nothing forbidden appears).
    let cases = f.root.join("probe.jsonl");
    let lines: Vec<String> = QUESTIONS
        .iter()
        .map(|q| case(q, r#""forbidden_patterns": ["As an AI language model"]"#))
        .collect();
    write(&cases, &lines);
    let base_alone = run_eval(&spec(&f, &cases)).unwrap();
    assert_eq!(base_alone.runs.len(), 1, "no adapter, no baseline");
    let base_out: Vec<String> = base_alone.runs[0]
        .results
        .iter()
        .map(|r| r.output.clone())
        .collect();
    assert!(base_alone.runs[0].results.iter().all(|r| r.passed));
    assert!(base_out.iter().any(|o| !o.is_empty()));

    // 2. Cases that expect exactly the base's answers.
    let exact: Vec<String> = QUESTIONS
        .iter()
        .zip(&base_out)
        .map(|(q, o)| {
            let re = format!("re:^{}$", regex::escape(o));
            case(
                q,
                &format!(r#""expected_patterns": [{}]"#, serde_json::json!(re)),
            )
        })
        .collect();
    write(&cases, &exact);
    let mut s = spec(&f, &cases);
    s.adapter = Some(f.adapter.clone());
    let r = run_eval(&s).unwrap();
    assert_eq!(r.runs.len(), 2);
    let (tuned, base) = (&r.runs[0], &r.runs[1]);
    assert_eq!(
        (tuned.label.as_str(), base.label.as_str()),
        ("fine-tuned", "base")
    );
    // The adapter switched off is exactly the base model loaded alone.
    assert_eq!(base.summary.passed, QUESTIONS.len(), "{:?}", base.results);
    // The random adapter changes at least one answer.
    assert!(tuned.summary.passed < QUESTIONS.len());
    let c = r.comparison.as_ref().unwrap();
    let failed: Vec<usize> = tuned
        .results
        .iter()
        .filter(|x| !x.passed)
        .map(|x| x.line)
        .collect();
    assert_eq!(c.pass_to_fail, failed);
    assert!(c.fail_to_pass.is_empty());
    assert!(tuned.results.iter().all(|x| x.output_tokens <= 10));
    assert!(r
        .warnings
        .iter()
        .any(|w| w.contains("tiny-base-not-installed")));

    // 3. Without --model, an adapter whose base cannot be resolved is a clear error.
    s.model = None;
    let e = run_eval(&s).unwrap_err().to_string();
    assert!(e.contains("--model"), "{e}");

    // 4. --baseline none evaluates the fine-tuned model only.
    s.model = Some(f.gguf.display().to_string());
    s.baselines = vec![Baseline::None];
    let r = run_eval(&s).unwrap();
    assert_eq!(r.runs.len(), 1);
    assert_eq!(untimed(&r.runs[0].results), untimed(&tuned.results));
}

/// Results without their wall times (which differ from run to run).
fn untimed(results: &[CaseResult]) -> Vec<CaseResult> {
    results
        .iter()
        .map(|r| CaseResult {
            latency_seconds: 0.0,
            ..r.clone()
        })
        .collect()
}

fn chat(q: &str, a: &str) -> String {
    serde_json::json!({"messages": [
        {"role": "user", "content": q},
        {"role": "assistant", "content": a}
    ]})
    .to_string()
}

#[test]
fn validation_loss_matches_the_training_loss_and_pairs_are_scored() {
    let f = fixture();
    let cases = f.root.join("cases.jsonl");
    write(&cases, &[case("Hello", r#""expected_patterns": ["re:."]"#)]);
    let chats = f.root.join("valid.jsonl");
    write(&chats, &[chat("Hello world", "Hi, the capital is Paris.")]);
    let prefs = f.root.join("dpo.jsonl");
    let pair = |q: &str, good: &str, bad: &str| {
        serde_json::json!({
            "input": {"messages": [{"role": "user", "content": q}]},
            "preferred_output": [{"role": "assistant", "content": good}],
            "non_preferred_output": [{"role": "assistant", "content": bad}]
        })
        .to_string()
    };
    write(
        &prefs,
        &[
            pair("Hello", "Hi there, friend.", "No."),
            pair("Capital?", "Paris", "The capital is Paris, of course."),
            pair("Is it?", "Yes it is.", "Yes it is!"),
        ],
    );
    let mut s = spec(&f, &cases);
    s.adapter = Some(f.adapter.clone());
    s.chat_file = Some(chats);
    s.preference_file = Some(prefs);
    let r = run_eval(&s).unwrap();
    for run in &r.runs {
        let l = run.chat_loss.as_ref().unwrap();
        assert_eq!(l.examples, 1);
        assert!(l.tokens > 10 && l.loss > 0.0);
        assert!((l.perplexity - l.loss.exp()).abs() < 1e-9);
        let p = run.pair_accuracy.as_ref().unwrap();
        assert_eq!(p.pairs, 3);
        assert!((0.0..=1.0).contains(&p.accuracy));
        // Accuracy is a share of three pairs.
        assert!(((p.accuracy * 3.0).round() - p.accuracy * 3.0).abs() < 1e-9);
    }
    let (tl, bl) = (
        r.runs[0].chat_loss.as_ref().unwrap().loss,
        r.runs[1].chat_loss.as_ref().unwrap().loss,
    );
    assert!((tl - bl).abs() > 1e-4, "the adapter changes the loss");

    // The same number from the trainer's own loss (same masking, f32 weights).
    let tok = ChatTokenizer::from_gguf(&f.gguf).unwrap();
    let msgs = [
        ChatMessage::new(Role::User, "Hello world"),
        ChatMessage::new(Role::Assistant, "Hi, the capital is Paris."),
    ];
    let enc = tok.encode_chat(&msgs, None).unwrap();
    let n = enc.ids.len();
    let dev = Device::Cpu;
    let input = Tensor::new(&enc.ids[..n - 1], &dev)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let targets = Tensor::new(&enc.ids[1..], &dev)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let mask: Vec<f32> = enc.loss_mask[1..].iter().map(|&m| m as u8 as f32).collect();
    let mask = Tensor::new(mask.as_slice(), &dev)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let mut model = load_model(&f.gguf, WeightPath::F32).unwrap();
    hone_model::load_peft_adapter(&mut model, &f.adapter).unwrap();
    for (use_adapters, want) in [(true, tl), (false, bl)] {
        let opts = TrainOptions {
            use_adapters,
            ..TrainOptions::default()
        };
        let out = model.train_loss(&input, &targets, &mask, opts).unwrap();
        let train = out.loss.to_scalar::<f32>().unwrap() as f64;
        assert!(
            (train - want).abs() < 1e-3 * train.max(1.0),
            "{train} vs {want}"
        );
    }
}

#[test]
fn bad_inputs_fail_before_the_model_loads() {
    let f = fixture();
    let cases = f.root.join("bad.jsonl");
    write(
        &cases,
        &[
            case("Hello", r#""expected_patterns": ["re:(("]"#),
            "{oops".to_string(),
        ],
    );
    let mut s = spec(&f, &cases);
    // A model that does not exist: the case errors must come first.
    s.model = Some(f.root.join("missing.gguf").display().to_string());
    match run_eval(&s) {
        Err(EvalError::InvalidCases { errors, .. }) => {
            assert_eq!(
                errors.iter().map(|e| e.line).collect::<Vec<_>>(),
                vec![1, 2]
            );
            assert!(errors[0].message.contains("invalid regex"));
        }
        other => panic!("{other:?}"),
    }
    let good = f.root.join("good.jsonl");
    write(&good, &[case("Hello", r#""expected_patterns": ["x"]"#)]);
    let mut s = spec(&f, &good);
    s.chat_file = Some(f.root.join("nope.jsonl"));
    match run_eval(&s) {
        Err(e @ EvalError::Io { .. }) => assert!(e.to_string().contains("nope.jsonl")),
        other => panic!("{other:?}"),
    }
}

/// Held-out files go through hone-data's validation without its
/// 10-example minimum: every problem is reported, with its line.
#[test]
fn held_out_files_are_validated_and_may_be_small() {
    let f = fixture();
    let cases = f.root.join("cases.jsonl");
    write(&cases, &[case("Hello", r#""expected_patterns": ["x"]"#)]);
    let chats = f.root.join("bad_valid.jsonl");
    write(
        &chats,
        &[
            chat("Hello", "Hi."),
            r#"{"messages": [{"role": "wizard", "content": "x"}]}"#.to_string(),
            "{oops".to_string(),
        ],
    );
    let mut s = spec(&f, &cases);
    // Checked before the model loads: this model does not exist.
    s.model = Some(f.root.join("missing.gguf").display().to_string());
    s.chat_file = Some(chats.clone());
    match run_eval(&s) {
        Err(EvalError::Data { path, message }) => {
            assert_eq!(path, chats);
            assert!(message.contains("line 2"), "{message}");
            assert!(message.contains("line 3"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    let prefs = f.root.join("bad_dpo.jsonl");
    write(&prefs, &[chat("Hello", "Hi.")]);
    s.chat_file = None;
    s.preference_file = Some(prefs.clone());
    match run_eval(&s) {
        Err(EvalError::Data { path, .. }) => assert_eq!(path, prefs),
        other => panic!("{other:?}"),
    }
    // Two valid chats (fewer than 10) are fine.
    let two = f.root.join("two.jsonl");
    write(&two, &[chat("Hello", "Hi."), chat("Bye", "Goodbye.")]);
    let mut s = spec(&f, &cases);
    s.chat_file = Some(two);
    let r = run_eval(&s).unwrap();
    assert_eq!(r.runs[0].chat_loss.as_ref().unwrap().examples, 2);
}

/// Cases decoded in batches (each with its own KV cache) give exactly the
/// outputs of one-at-a-time decoding, for the fine-tuned and the base model.
#[test]
fn batch_size_changes_no_output() {
    let f = fixture();
    let cases = f.root.join("batch.jsonl");
    let lines: Vec<String> = QUESTIONS
        .iter()
        .map(|q| case(q, r#""expected_patterns": ["x"]"#))
        .collect();
    write(&cases, &lines);
    let mut s = spec(&f, &cases);
    s.adapter = Some(f.adapter.clone());
    let outputs = |batch: usize| {
        let mut s = s.clone();
        s.batch = batch;
        let r = run_eval(&s).unwrap();
        assert_eq!(r.generation.batch, batch);
        r.runs
            .iter()
            .map(|run| {
                run.results
                    .iter()
                    .map(|x| (x.output.clone(), x.output_tokens))
                    .collect::<Vec<_>>()
            })
            .collect::<Vec<_>>()
    };
    let one = outputs(1);
    assert_eq!(one.len(), 2);
    assert_ne!(one[0], one[1], "the adapter changes answers");
    for batch in [2, 3, QUESTIONS.len() + 4] {
        assert_eq!(outputs(batch), one, "batch {batch}");
    }
    s.batch = 0;
    assert!(run_eval(&s).is_err());
}

/// `prompt:FILE` and `few-shot:K` run on the base (adapter off) with the
/// longer prompts they build; the fine-tune's training cost is estimated
/// from the training file (this adapter has no summary.json), and every
/// baseline gets a verdict.
#[test]
fn prompt_and_few_shot_baselines_beside_the_fine_tune() {
    let f = fixture();
    let cases = f.root.join("cases.jsonl");
    write(
        &cases,
        &[
            case(
                "Hello",
                r#""forbidden_patterns": ["As an AI language model"]"#,
            ),
            case("Paris", r#""expected_patterns": ["re:^never$"]"#),
        ],
    );
    let prompt = f.root.join("sys.txt");
    std::fs::write(&prompt, "Answer in one short sentence.\n").unwrap();
    let train = f.root.join("train.jsonl");
    let examples: Vec<String> = ["Hello", "Bonjour", "Ciao", "Hola", "Hallo"]
        .iter()
        .map(|q| chat(q, "Hi!"))
        .collect();
    write(&train, &examples);
    let mut s = spec(&f, &cases);
    s.adapter = Some(f.adapter.clone());
    s.baselines = vec![
        Baseline::Base,
        Baseline::Prompt(prompt),
        Baseline::FewShot { k: 2, file: None },
        Baseline::FineTuned,
    ];
    s.train_file = Some(train.clone());
    let r = run_eval(&s).unwrap();
    let labels: Vec<&str> = r.runs.iter().map(|x| x.label.as_str()).collect();
    assert_eq!(
        labels,
        ["fine-tuned", "base", "prompt:sys.txt", "few-shot:2"]
    );
    let p = |i: usize| r.runs[i].summary.mean_prompt_tokens;
    assert_eq!(p(0), p(1));
    assert!(p(2) > p(1) && p(3) > p(1), "{} {} {}", p(1), p(2), p(3));
    assert!(r
        .runs
        .iter()
        .all(|x| x.results.iter().all(|c| c.error.is_none())));
    let e = r.economics.as_ref().unwrap();
    let t = e.training.as_ref().unwrap();
    assert_eq!(t.source, hone_eval::CostSource::Estimated);
    assert!(t.usd > 0.0 && t.detail.contains("train.jsonl"), "{t:?}");
    assert_eq!(e.verdict.len(), 3);
    assert!(e.verdict[2].starts_with("few-shot:2 "), "{:?}", e.verdict);

    // Picks by similarity (the default) are the same on every run:
    // identical outputs; so are random picks with the same seed.
    assert_eq!(r.generation.few_shot_pick, "similar");
    assert_eq!(r.generation.embedding_model.as_deref(), Some("tiny-bert"));
    let again = run_eval(&s).unwrap();
    assert_eq!(untimed(&again.runs[3].results), untimed(&r.runs[3].results));
    s.few_shot_pick = ShotPick::Random;
    let random = run_eval(&s).unwrap();
    assert_eq!(
        random.generation.embedding_model, None,
        "not loaded for random picks"
    );
    let again = run_eval(&s).unwrap();
    assert_eq!(
        untimed(&again.runs[3].results),
        untimed(&random.runs[3].results)
    );

    // A pool too small once the eval cases are left out ("Hello" is one).
    s.baselines = vec![Baseline::FewShot { k: 5, file: None }];
    let e = run_eval(&s).unwrap_err().to_string();
    assert!(e.contains("has 4 usable (1 left out as identical"), "{e}");
}

/// `--json-schema-from-case` decodes with the case's schema, so even a
/// random model answers with valid JSON; without it the schema-valid rate
/// shows that it does not.
#[test]
fn json_schema_from_case_constrains_decoding() {
    let f = fixture();
    let cases = f.root.join("schema.jsonl");
    let schema = r#""expected_schema": {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"], "additionalProperties": false}"#;
    write(&cases, &[case("Hello", schema), case("Paris", schema)]);
    let mut s = spec(&f, &cases);
    s.max_tokens = 32;
    let free = run_eval(&s).unwrap();
    assert_eq!(free.runs[0].summary.schema_cases, 2);
    assert_eq!(free.runs[0].summary.schema_valid_rate, Some(0.0));
    s.json_schema_from_case = true;
    let r = run_eval(&s).unwrap();
    assert!(r.generation.json_schema_from_case);
    let sum = &r.runs[0].summary;
    assert_eq!(
        (sum.schema_valid, sum.schema_valid_rate),
        (2, Some(1.0)),
        "{:?}",
        r.runs[0].results
    );
    assert_eq!(sum.passed, 2);
}

/// A docs directory: three topics, and a binary `.md` that is skipped.
fn docs(root: &Path) -> PathBuf {
    let d = root.join("docs");
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("paris.md"), "Paris is the capital of France.").unwrap();
    std::fs::write(d.join("tea.txt"), "Green tea is brewed at 80 degrees.").unwrap();
    std::fs::write(d.join("ships.md"), "Ships sail the sea at night.").unwrap();
    std::fs::write(d.join("blob.md"), b"\x00\x01bin").unwrap();
    d
}

/// `rag:DIR:K` runs the base and `fine-tuned+rag:DIR:K` the adapter, both
/// with each case's retrieved chunks in the system message; the skipped
/// binary file is named; the fine-tune with retrieval gets a verdict but no
/// break-even (it has no training of its own to repay).
#[test]
fn rag_baselines_beside_the_fine_tune() {
    let f = fixture();
    let cases = f.root.join("cases.jsonl");
    write(
        &cases,
        &[
            case(
                "What is the capital?",
                r#""forbidden_patterns": ["As an AI"]"#,
            ),
            case(
                "How hot is tea brewed?",
                r#""forbidden_patterns": ["As an AI"]"#,
            ),
        ],
    );
    let dir = docs(&f.root);
    let mut s = spec(&f, &cases);
    s.adapter = Some(f.adapter.clone());
    s.training_cost = Some(1.0);
    s.baselines = vec![
        Baseline::Base,
        Baseline::Rag {
            dir: dir.clone(),
            k: 2,
        },
        Baseline::FineTunedRag {
            dir: dir.clone(),
            k: 2,
        },
    ];
    let r = run_eval(&s).unwrap();
    let labels: Vec<&str> = r.runs.iter().map(|x| x.label.as_str()).collect();
    assert_eq!(
        labels,
        ["fine-tuned", "base", "rag:docs:2", "fine-tuned+rag:docs:2"]
    );
    assert!(r.runs[3].adapter.is_some() && r.runs[2].adapter.is_none());
    let p = |i: usize| r.runs[i].summary.mean_prompt_tokens;
    assert_eq!(p(0), p(1));
    assert!(
        p(2) > p(1) + 20.0,
        "two chunks and the header: {} vs {}",
        p(2),
        p(1)
    );
    assert_eq!(
        p(2),
        p(3),
        "the same retrieved prompts, with and without the adapter"
    );
    assert!(r
        .runs
        .iter()
        .all(|x| x.results.iter().all(|c| c.error.is_none())));
    assert!(
        r.warnings
            .iter()
            .any(|w| w == "--baseline rag:docs:2: skipped 1 binary file(s): blob.md"),
        "{:?}",
        r.warnings
    );
    let e = r.economics.as_ref().unwrap();
    assert_eq!(e.verdict.len(), 3);
    assert_eq!(e.break_even.len(), 2, "base and rag, not fine-tuned+rag");
    assert!(e.verdict[2].ends_with("(the same fine-tune, so no training cost to repay)"));
    // The documents' vectors were written to the cache (hone-retrieve's
    // tests show a second load reading them back).
    let cache = f.root.join("embedding-cache");
    assert!(std::fs::read_dir(&cache).unwrap().count() > 0);
}

/// Every problem with a rag baseline is an error before any generation.
#[test]
fn rag_bad_inputs_are_clear_errors() {
    let f = fixture();
    let cases = f.root.join("cases.jsonl");
    write(
        &cases,
        &[case(
            "What is the capital?",
            r#""expected_patterns": ["x"]"#,
        )],
    );
    let dir = docs(&f.root);
    let err = |s: &EvalSpec| run_eval(s).unwrap_err().to_string();
    let mut s = spec(&f, &cases);

    s.baselines = vec![Baseline::Rag {
        dir: f.root.join("nope"),
        k: 2,
    }];
    let e = err(&s);
    assert!(
        e.contains("rag:nope:2") && e.contains("does not exist"),
        "{e}"
    );

    let empty = f.root.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    std::fs::write(empty.join("scan.md"), b"\x00\x00").unwrap();
    std::fs::write(empty.join("notes.pdf"), b"%PDF").unwrap();
    s.baselines = vec![Baseline::Rag { dir: empty, k: 1 }];
    let e = err(&s);
    assert!(
        e.contains("no text to retrieve from") && e.contains("1 binary and 1 other"),
        "{e}"
    );

    s.baselines = vec![Baseline::Rag {
        dir: dir.clone(),
        k: 9,
    }];
    let e = err(&s);
    assert!(
        e.contains("K is 9, but") && e.contains("only 3 chunk(s)"),
        "{e}"
    );

    s.baselines = vec![Baseline::FineTunedRag {
        dir: dir.clone(),
        k: 1,
    }];
    assert!(err(&s).contains("fine-tuned+rag:docs:1 needs --adapter DIR"));

    s.baselines = vec![Baseline::Rag {
        dir: dir.clone(),
        k: 1,
    }];
    s.embedding_model = f.root.join("no-such-model").display().to_string();
    let e = err(&s);
    assert!(
        e.contains("needs the embedding model") && e.contains("--embedding-model"),
        "{e}"
    );
    // A chat model is not an embedding model.
    s.embedding_model = f.gguf.display().to_string();
    assert!(err(&s).contains("--embedding-model"));

    // Chunks that push the prompt past the context are refused, not cut:
    // the plain prompt fits with these max_tokens, the retrieved one not.
    let mut s = spec(&f, &cases);
    let plain = run_eval(&s).unwrap().runs[0].results[0].prompt_tokens;
    s.max_tokens = 256 - plain - 5;
    s.baselines = vec![Baseline::Rag { dir, k: 3 }];
    let e = err(&s);
    assert!(
        e.contains("do not fit the model's 256-token context") && e.contains("chunks"),
        "{e}"
    );
}

/// The embedding model is loaded only after every input is checked, and
/// only when a baseline needs it: with an embedding model that cannot load
/// (and a chat model that does not exist), a bad few-shot pool or bad
/// documents are what is reported; with good inputs, the embedding model.
#[test]
fn the_embedding_model_loads_after_the_input_checks_and_only_when_needed() {
    let f = fixture();
    let cases = f.root.join("cases.jsonl");
    write(&cases, &[case("Hello", r#""expected_patterns": ["x"]"#)]);
    let train = f.root.join("train.jsonl");
    let examples: Vec<String> = ["Bonjour", "Ciao", "Hola"]
        .iter()
        .map(|q| chat(q, "Hi!"))
        .collect();
    write(&train, &examples);
    let mut s = spec(&f, &cases);
    s.model = Some(f.root.join("missing.gguf").display().to_string());
    s.embedding_model = f.root.join("no-such-model").display().to_string();
    s.train_file = Some(train);
    let err = |s: &EvalSpec| run_eval(s).unwrap_err().to_string();

    assert_eq!(s.few_shot_pick, ShotPick::Similar);
    s.baselines = vec![Baseline::FewShot { k: 5, file: None }];
    let e = err(&s);
    assert!(e.contains("few-shot:5 needs 5 examples"), "{e}");
    s.baselines = vec![Baseline::Rag {
        dir: f.root.join("nope"),
        k: 1,
    }];
    let e = err(&s);
    assert!(e.contains("does not exist"), "{e}");
    s.baselines = vec![Baseline::Rag {
        dir: docs(&f.root),
        k: 9,
    }];
    let e = err(&s);
    assert!(e.contains("K is 9, but"), "{e}");

    // Good inputs: now the embedding model is what fails, still before the
    // chat model (which does not exist either).
    s.baselines = vec![Baseline::FewShot { k: 2, file: None }];
    let e = err(&s);
    assert!(
        e.contains("needs the embedding model") && !e.contains("missing.gguf"),
        "{e}"
    );

    // Random picks need no embedding model: the broken one is never loaded.
    s.few_shot_pick = ShotPick::Random;
    s.model = Some(f.gguf.display().to_string());
    let r = run_eval(&s).unwrap();
    assert_eq!(r.runs.len(), 2);
    assert_eq!(r.generation.embedding_model, None);
}
