//! Tests of the job builder ([`super`]).

use super::*;

#[test]
fn contradictory_options_are_refused_before_any_file_is_read() {
    let mut o = JobOptions::new(Method::Sft);
    assert!(o.check().is_ok());
    o.overrides.beta = Some(0.2);
    assert!(o.check().unwrap_err().to_string().contains("dpo only"));
    let mut o = JobOptions::new(Method::Dpo);
    o.packing = true;
    assert!(o.check().unwrap_err().to_string().contains("sft only"));
    let mut o = JobOptions::new(Method::Sft);
    o.max_seq_len = MaxSeqLen::Exactly(1);
    assert!(o.check().unwrap_err().to_string().contains("at least 2"));
    let mut o = JobOptions::new(Method::Sft);
    o.overrides.n_epochs = Some(0);
    assert!(matches!(o.check(), Err(TrainJobError::Hyperparameters(_))));
}

#[test]
fn an_explicit_max_seq_len_must_fit_the_context_and_a_default_is_capped() {
    assert_eq!(MaxSeqLen::UpTo(1024).resolve(256, "m").unwrap(), 256);
    assert_eq!(MaxSeqLen::UpTo(100).resolve(256, "m").unwrap(), 100);
    assert_eq!(MaxSeqLen::Exactly(256).resolve(256, "m").unwrap(), 256);
    let e = MaxSeqLen::Exactly(300).resolve(256, "m").unwrap_err();
    assert!(e.to_string().contains("context window of m (256"), "{e}");
}

/// An adapter directory of shape r=4, alpha 8, q_proj+v_proj on base "tiny".
fn adapter_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let lora = hone_model::LoraConfig {
        r: 4,
        alpha: 8.0,
        dropout: 0.0,
        target_modules: vec!["q_proj".into(), "v_proj".into()],
        trainable_tokens: Vec::new(),
    };
    let peft = hone_model::PeftConfig::from_lora(&lora, "tiny");
    let cfg = dir.path().join(hone_model::lora::ADAPTER_CONFIG_FILE);
    std::fs::write(cfg, serde_json::to_vec(&peft).unwrap()).unwrap();
    let weights = dir.path().join(hone_model::lora::ADAPTER_WEIGHTS_FILE);
    std::fs::write(weights, b"").unwrap();
    dir
}

#[test]
fn a_continued_run_trains_its_parents_shape_and_refuses_a_conflicting_one() {
    let dir = adapter_dir();
    let mut o = JobOptions::new(Method::Dpo);
    let shape = o.continue_from(dir.path(), &FixedLora::default()).unwrap();
    assert_eq!((o.lora_r, o.lora_alpha), (4, 8.0));
    assert_eq!(o.target_modules, vec!["q_proj", "v_proj"]);
    assert_eq!(o.init_adapter.as_deref(), Some(dir.path()));
    assert_eq!(shape.base_model, "tiny");
    // Fixing the parent's own values is fine; a different one is named.
    let same = FixedLora {
        r: Some(4),
        alpha: Some(8.0),
        target_modules: Some(vec!["v_proj".into(), "q_proj".into()]),
    };
    assert!(JobOptions::new(Method::Sft)
        .continue_from(dir.path(), &same)
        .is_ok());
    let cases = [
        (
            FixedLora {
                r: Some(16),
                ..FixedLora::default()
            },
            "lora_r",
        ),
        (
            FixedLora {
                alpha: Some(32.0),
                ..FixedLora::default()
            },
            "lora_alpha",
        ),
        (
            FixedLora {
                target_modules: Some(vec!["q_proj".into()]),
                ..FixedLora::default()
            },
            "target_modules",
        ),
    ];
    for (fixed, want) in cases {
        let mut o = JobOptions::new(Method::Sft);
        match o.continue_from(dir.path(), &fixed) {
            Err(TrainJobError::Parent { param, message }) => {
                assert_eq!(param, want);
                assert!(message.contains("conflicts with the adapter"), "{message}");
            }
            other => panic!("{want}: {other:?}"),
        }
        assert_eq!(o, JobOptions::new(Method::Sft), "unchanged on error");
    }
    let missing = dir.path().join("nope");
    let e = JobOptions::new(Method::Sft)
        .continue_from(&missing, &FixedLora::default())
        .unwrap_err();
    assert!(
        matches!(
            e,
            TrainJobError::Parent {
                param: "init_adapter",
                ..
            }
        ),
        "{e:?}"
    );
}

#[test]
fn the_sft_stage_of_sft_then_dpo_keeps_the_settings_but_not_beta() {
    let mut o = JobOptions::new(Method::Dpo);
    o.overrides.beta = Some(0.3);
    o.overrides.n_epochs = Some(2);
    o.seed = 7;
    let s = o.sft_stage();
    assert_eq!(s.method, Method::Sft);
    assert_eq!(s.overrides.beta, None);
    assert_eq!((s.overrides.n_epochs, s.seed), (Some(2), 7));
    assert!(s.check().is_ok());
}
