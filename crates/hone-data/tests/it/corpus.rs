//! The bad-file corpus in tests/data: every file gives exactly the expected
//! codes on the expected lines.

use std::path::PathBuf;

use hone_data::{validate_file, Code, Method, ValidateOptions};

fn data(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

/// Errors of `name` as (code, line), sorted.
fn errors(name: &str, method: Option<Method>) -> (Vec<(Code, Option<usize>)>, hone_data::Report) {
    let opts = ValidateOptions {
        method,
        ..ValidateOptions::default()
    };
    let r = validate_file(&data(name), &opts, None).unwrap();
    let mut e: Vec<_> = r.errors.iter().map(|i| (i.code, i.line)).collect();
    e.sort();
    e.dedup();
    (e, r)
}

#[test]
fn mixed_errors_crlf() {
    let (e, r) = errors("mixed_errors_crlf.jsonl", None);
    assert_eq!(
        e,
        vec![
            (Code::DataType, Some(8)),
            (Code::UnrecognizedRole, Some(6)),
            (Code::ExampleMissingAssistantMessage, Some(4)),
            (Code::InvalidJson, Some(2)),
            (Code::InvalidWeight, Some(10)),
        ]
    );
    assert_eq!(r.n_examples, 10);
    assert_eq!(r.stats.n_lines, 15);
}

#[test]
fn bom_crlf_no_final_newline_is_clean() {
    let (e, r) = errors("bom_crlf_no_final_newline.jsonl", None);
    assert!(e.is_empty(), "{e:?}");
    assert_eq!((r.n_examples, r.method), (10, Method::Sft));
}

#[test]
fn nul_bytes() {
    let (e, _) = errors("nul_bytes.jsonl", None);
    assert_eq!(
        e,
        vec![(Code::InvalidJson, Some(3)), (Code::InvalidJson, Some(5))]
    );
}

#[test]
fn invalid_utf8() {
    let (e, r) = errors("invalid_utf8.jsonl", None);
    assert_eq!(
        e,
        vec![(Code::InvalidUtf8, Some(1)), (Code::InvalidUtf8, Some(7))]
    );
    // Detection skipped the undecodable first line.
    assert_eq!(r.method, Method::Sft);
}

#[test]
fn deep_nesting() {
    let (e, r) = errors("deep_nesting.jsonl", None);
    assert_eq!(
        e,
        vec![(Code::InvalidJson, Some(4)), (Code::InvalidJson, Some(6))]
    );
    assert!(
        r.errors[0].text.contains("recursion limit"),
        "{}",
        r.errors[0].text
    );
}

#[test]
fn truncated_last_line() {
    let (e, r) = errors("truncated_last_line.jsonl", None);
    assert_eq!(e, vec![(Code::InvalidJson, Some(11))]);
    assert_eq!(r.n_examples, 10);
}

#[test]
fn dpo_errors() {
    let (e, r) = errors("dpo_errors.jsonl", None);
    assert_eq!(r.method, Method::Dpo);
    assert_eq!(
        e,
        vec![
            (Code::DpoMissingOutput, Some(5)),
            (Code::DpoIdenticalOutputs, Some(3))
        ]
    );
    assert_eq!(r.n_examples, 10);
}

#[test]
fn sft_with_dpo_line_gets_a_hint() {
    let (e, r) = errors("sft_with_dpo_line.jsonl", None);
    assert_eq!(e, vec![(Code::MissingMessagesList, Some(9))]);
    assert!(r.errors[0].text.contains("--method dpo"));
}
