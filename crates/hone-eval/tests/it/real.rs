//! The real default model on the bundled support cases. Needs the GGUF in
//! `HONE_TEST_GGUF`, so it is ignored in a plain `cargo test`.

use std::path::{Path, PathBuf};

use hone_eval::{run_eval, EvalSpec};

#[test]
#[ignore = "needs HONE_TEST_GGUF"]
fn base_model_on_the_support_cases_produces_a_table() {
    let gguf = PathBuf::from(std::env::var("HONE_TEST_GGUF").expect("HONE_TEST_GGUF"));
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/support");
    let spec = EvalSpec {
        model: Some(gguf.display().to_string()),
        max_tokens: 48,
        chat_file: Some(root.join("valid.jsonl")),
        ..EvalSpec::new(root.join("eval.jsonl"))
    };
    let r = run_eval(&spec).unwrap();
    assert_eq!(r.runs.len(), 1);
    let run = &r.runs[0];
    assert_eq!(run.summary.total, 15);
    assert!(
        run.results.iter().all(|x| x.error.is_none()),
        "{:?}",
        run.results
    );
    assert!(run.results.iter().all(|x| !x.output.trim().is_empty()));
    // The base model does not know the house style (the fine-tune's job).
    assert!(run.summary.pass_rate < 0.5, "{}", r.render_table());
    let loss = run.chat_loss.as_ref().unwrap();
    assert!(loss.loss > 0.5 && loss.loss < 10.0, "{loss:?}");
    let table = r.render_table();
    assert!(
        table.contains("pass rate") && table.contains("validation loss"),
        "{table}"
    );
    println!("{table}");
}
