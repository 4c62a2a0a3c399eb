//! Builders for test files.

use hone_data::tokens::WordCounter;
use hone_data::{validate_reader, Code, Issue, Method, Report, ValidateOptions};

/// A valid SFT line, distinct for each `i`, with no warnings.
pub fn sft_line(i: usize) -> String {
    format!(
        r#"{{"messages":[{{"role":"system","content":"You are a helpful support agent."}},{{"role":"user","content":"Question number {i}: how do I reset my password?"}},{{"role":"assistant","content":"Answer {i}: go to the login page, click 'Forgot password' and follow the link we email you."}}]}}"#
    )
}

/// A valid DPO line, distinct for each `i`, with no warnings.
pub fn dpo_line(i: usize) -> String {
    format!(
        r#"{{"input":{{"messages":[{{"role":"system","content":"You are a weather assistant."}},{{"role":"user","content":"How cold is it in city number {i} today?"}}]}},"preferred_output":[{{"role":"assistant","content":"In city {i} it is mild today: a high near 20 C and a low around 14 C, with clouds clearing by noon."}}],"non_preferred_output":[{{"role":"assistant","content":"It is not particularly cold in city {i} today, I think."}}]}}"#
    )
}

/// `n` good lines with `bad` placed at 1-based line `at`.
pub fn file_with(n: usize, at: usize, bad: &str, method: Method) -> String {
    let mut lines: Vec<String> = (0..n)
        .map(|i| match method {
            Method::Sft => sft_line(i),
            Method::Dpo => dpo_line(i),
        })
        .collect();
    lines.insert(at - 1, bad.to_string());
    lines.join("\n") + "\n"
}

pub fn validate(text: &[u8], method: Option<Method>) -> Report {
    let opts = ValidateOptions {
        method,
        ..ValidateOptions::default()
    };
    validate_reader(text, &opts, None)
}

pub fn validate_with_tokens(
    text: &[u8],
    method: Option<Method>,
    max_seq_len: Option<usize>,
) -> Report {
    let opts = ValidateOptions {
        method,
        max_seq_len,
        ..ValidateOptions::default()
    };
    let counter = WordCounter {
        context_length: 2048,
    };
    validate_reader(text, &opts, Some(&counter))
}

/// The issues with `code`.
pub fn of_code(r: &Report, code: Code) -> Vec<Issue> {
    r.with_code(code).cloned().collect()
}
