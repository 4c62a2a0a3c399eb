//! The job builder both front ends call: files in, a ready run out, with typed errors
//! that say which file and why, and warnings for what tokenisation cut.

use std::path::Path;

use hone_data::Method;
use hone_train::{
    BaseModel, DataFile, DataProblem, JobOptions, MaxSeqLen, NoteKind, TrainData, TrainJob,
    TrainJobError, VecSink,
};

use crate::common::{fixture, Fixture};

fn chats(path: &Path, n: usize, answer_words: usize) {
    let lines: Vec<String> = (0..n)
        .map(|i| {
            let answer = vec![format!("w{i}"); answer_words].join(" ");
            serde_json::json!({"messages": [
                {"role": "user", "content": format!("question {i}?")},
                {"role": "assistant", "content": answer},
            ]})
            .to_string()
        })
        .collect();
    std::fs::write(path, lines.join("\n")).unwrap();
}

fn base(f: &Fixture) -> BaseModel<'_> {
    BaseModel {
        id: "tiny",
        config: &f.model.cfg,
        tokenizer: &f.tok,
    }
}

#[test]
fn a_job_is_built_and_trains_with_the_resolved_settings() {
    let mut f = fixture();
    let dir = tempfile::tempdir().unwrap();
    let (train, valid) = (dir.path().join("t.jsonl"), dir.path().join("v.jsonl"));
    chats(&train, 12, 3);
    chats(&valid, 2, 3);
    let mut opts = JobOptions::new(Method::Sft);
    opts.overrides.n_epochs = Some(1);
    opts.overrides.batch_size = Some(4);
    let data = TrainData::read(Method::Sft, &train, Some(&valid)).unwrap();
    let job = TrainJob::build(&opts, data, base(&f)).unwrap();
    assert!(job.notes.is_empty(), "{:?}", job.notes);
    assert_eq!((job.config.epochs, job.config.batch_size), (1, 4));
    // Auto learning rate for SFT on a small model: 1e-3 (multiplier 1).
    assert!((job.config.learning_rate - 1e-3).abs() < 1e-12);
    assert_eq!(job.config.base_model, "tiny");
    assert_eq!(job.config.pad_id, f.tok.tokenizer.eos_id());
    assert_eq!(
        job.config.max_seq_len,
        1024.min(f.model.cfg.max_position_embeddings)
    );
    assert_eq!((job.steps_per_epoch(), job.has_validation()), (3, true));
    assert_eq!(job.beta, None);
    let out = dir.path().join("out");
    let summary = job
        .run(
            &mut f.model,
            &out,
            &mut VecSink::default(),
            &Default::default(),
        )
        .unwrap();
    assert_eq!(summary.steps, 3);
    // The run records the mode `auto` resolved to on this CPU; the rest is the job's.
    let resolved = hone_train::TrainConfig {
        base_weights: hone_model::ops::BaseWeights::Auto.resolved(),
        ..job.config.clone()
    };
    assert_eq!(summary.config, resolved);
}

#[test]
fn what_tokenisation_cuts_is_noted_and_nothing_left_is_an_error_naming_the_file() {
    let f = fixture();
    let dir = tempfile::tempdir().unwrap();
    let (train, valid) = (dir.path().join("t.jsonl"), dir.path().join("v.jsonl"));
    chats(&train, 12, 40);
    chats(&valid, 2, 3);
    let user: hone_data::ChatMessage =
        serde_json::from_value(serde_json::json!({"role": "user", "content": "question 0?"}))
            .unwrap();
    let prompt_len = f.tok.encode_prompt(&[user], None).unwrap().len();
    // Long answers are cut, but each keeps some trained tokens.
    let mut opts = JobOptions::new(Method::Sft);
    opts.max_seq_len = MaxSeqLen::Exactly(prompt_len + 8);
    let data = TrainData::read(Method::Sft, &train, Some(&valid)).unwrap();
    let job = TrainJob::build(&opts, data, base(&f)).unwrap();
    let cut = job
        .notes
        .iter()
        .find(|n| n.kind == NoteKind::Truncated && n.file == DataFile::Training)
        .unwrap();
    assert_eq!(cut.count, 12);
    assert!(cut.to_string().contains("12 training example(s) were cut"));
    // Shorter than every prompt: nothing to train, and the error says which file.
    opts.max_seq_len = MaxSeqLen::Exactly(4);
    let data = TrainData::read(Method::Sft, &train, Some(&valid)).unwrap();
    match TrainJob::build(&opts, data, base(&f)).unwrap_err() {
        TrainJobError::Data(e) => {
            assert_eq!(e.file, DataFile::Training);
            assert!(matches!(
                *e.problem,
                DataProblem::NothingToTrain { max_seq_len: 4 }
            ));
        }
        other => panic!("{other}"),
    }
    // Beyond the model's context: refused, naming the model and its window.
    let context = f.model.cfg.max_position_embeddings;
    opts.max_seq_len = MaxSeqLen::Exactly(context + 1);
    let data = TrainData::read(Method::Sft, &train, None).unwrap();
    let e = TrainJob::build(&opts, data, base(&f)).unwrap_err();
    assert!(matches!(e, TrainJobError::BeyondContext { .. }), "{e}");
    assert!(
        e.to_string().contains(&format!("tiny ({context} tokens)")),
        "{e}"
    );
}

#[test]
fn data_of_the_other_method_is_refused() {
    let f = fixture();
    let dir = tempfile::tempdir().unwrap();
    let train = dir.path().join("t.jsonl");
    chats(&train, 12, 3);
    let data = TrainData::read(Method::Sft, &train, None).unwrap();
    let e = TrainJob::build(&JobOptions::new(Method::Dpo), data, base(&f)).unwrap_err();
    assert!(matches!(e, TrainJobError::Options(_)), "{e}");
    let e = TrainData::read(Method::Dpo, &train, None).unwrap_err();
    assert_eq!(e.file, DataFile::Training);
    assert!(matches!(*e.problem, DataProblem::Rejected(_)));
}
