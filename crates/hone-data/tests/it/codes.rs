//! One bad line per code: the code is reported, on the right line and
//! message, and the good lines around it stay clean.

use hone_data::{Code, Method, Severity};

use crate::common::{file_with, of_code, validate, validate_with_tokens};

/// Puts `bad` at line 4 of 12 good lines and checks that `code` is reported
/// exactly there, with message number `message`.
fn expect(method: Method, bad: &str, code: Code, message: Option<usize>) {
    let text = file_with(12, 4, bad, method);
    let r = validate(text.as_bytes(), Some(method));
    let found = of_code(&r, code);
    assert!(
        !found.is_empty(),
        "{code} not reported for {bad}; got {:#?}",
        r.errors
    );
    assert!(found.iter().all(|i| i.line == Some(4)), "{code}: {found:?}");
    assert_eq!(found[0].message, message, "{code}: {found:?}");
    assert_eq!(r.ok, code.severity() == Severity::Warning, "{code}");
    // No other line is blamed.
    assert!(
        r.errors
            .iter()
            .chain(&r.warnings)
            .filter(|i| i.code != Code::FewExamplesForGoal)
            .all(|i| i.line == Some(4)),
        "{:#?}",
        r
    );
}

fn sft(bad: &str, code: Code, message: Option<usize>) {
    expect(Method::Sft, bad, code, message);
}

fn dpo(bad: &str, code: Code, message: Option<usize>) {
    expect(Method::Dpo, bad, code, message);
}

const SYS: &str = r#"{"role":"system","content":"You are a helpful support agent."}"#;
const USER: &str = r#"{"role":"user","content":"How do I reset my password, please?"}"#;
const ASSISTANT: &str = r#"{"role":"assistant","content":"Go to the login page, click 'Forgot password' and follow the emailed link."}"#;

fn msgs(middle: &str) -> String {
    format!(r#"{{"messages":[{SYS},{middle}]}}"#)
}

#[test]
fn data_type() {
    sft("[1,2,3]", Code::DataType, None);
    sft(
        &msgs(&format!("{USER},\"hello\",{ASSISTANT}")),
        Code::DataType,
        Some(3),
    );
}

#[test]
fn missing_messages_list() {
    sft(r#"{"conversation":[]}"#, Code::MissingMessagesList, None);
    sft(r#"{"messages":[]}"#, Code::MissingMessagesList, None);
    dpo(
        r#"{"input":{"messages":"x"},"preferred_output":[{"role":"assistant","content":"A long enough preferred answer for the test here."}],"non_preferred_output":[{"role":"assistant","content":"no"}]}"#,
        Code::MissingMessagesList,
        None,
    );
}

#[test]
fn message_missing_key() {
    sft(
        &msgs(&format!(
            r#"{{"content":"no role here at all"}},{ASSISTANT}"#
        )),
        Code::MessageMissingKey,
        Some(2),
    );
    sft(
        &msgs(&format!(r#"{USER},{{"role":"assistant"}}"#)),
        Code::MessageMissingKey,
        Some(3),
    );
}

#[test]
fn message_unrecognized_key() {
    sft(
        &msgs(&format!(
            r#"{{"role":"user","content":"How do I reset it?","mood":"sad"}},{ASSISTANT}"#
        )),
        Code::MessageUnrecognizedKey,
        Some(2),
    );
}

#[test]
fn unrecognized_role() {
    sft(
        &msgs(&format!(
            r#"{USER},{{"role":"robot","content":"beep boop beep"}},{ASSISTANT}"#
        )),
        Code::UnrecognizedRole,
        Some(3),
    );
}

#[test]
fn missing_content() {
    sft(
        &msgs(&format!(r#"{{"role":"user","content":""}},{ASSISTANT}"#)),
        Code::MissingContent,
        Some(2),
    );
    sft(
        &msgs(&format!(r#"{{"role":"user","content":42}},{ASSISTANT}"#)),
        Code::MissingContent,
        Some(2),
    );
    sft(
        &msgs(&format!(
            r#"{{"role":"user","content":[{{"type":"image_url","image_url":{{}}}}]}},{ASSISTANT}"#
        )),
        Code::MissingContent,
        Some(2),
    );
}

#[test]
fn text_parts_are_accepted() {
    let line = msgs(&format!(
        r#"{{"role":"user","content":[{{"type":"text","text":"How do I reset "}},{{"type":"text","text":"my password?"}}]}},{ASSISTANT}"#
    ));
    let r = validate(
        file_with(12, 4, &line, Method::Sft).as_bytes(),
        Some(Method::Sft),
    );
    assert!(r.ok, "{:#?}", r.errors);
}

#[test]
fn example_missing_assistant_message() {
    sft(&msgs(USER), Code::ExampleMissingAssistantMessage, None);
}

#[test]
fn invalid_json() {
    sft(r#"{"messages": [}"#, Code::InvalidJson, None);
}

#[test]
fn invalid_utf8() {
    let mut text = file_with(12, 4, "PLACEHOLDER", Method::Sft).into_bytes();
    let at = text.windows(11).position(|w| w == b"PLACEHOLDER").unwrap();
    text.splice(at..at + 11, b"{\"a\":\"\xff\xfe\"}".iter().copied());
    let r = validate(&text, Some(Method::Sft));
    let found = of_code(&r, Code::InvalidUtf8);
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].line, Some(4));
}

#[test]
fn invalid_weight() {
    sft(
        &msgs(&format!(
            r#"{USER},{{"role":"assistant","content":"Go to the login page and follow the emailed link there.","weight":2}}"#
        )),
        Code::InvalidWeight,
        Some(3),
    );
    sft(
        &msgs(&format!(
            r#"{{"role":"user","content":"How do I reset it?","weight":1}},{ASSISTANT}"#
        )),
        Code::InvalidWeight,
        Some(2),
    );
}

#[test]
fn weight_zero_is_accepted() {
    let line = msgs(&format!(
        r#"{USER},{{"role":"assistant","content":"Paris","weight":0}},{USER},{ASSISTANT}"#
    ));
    let r = validate(
        file_with(12, 4, &line, Method::Sft).as_bytes(),
        Some(Method::Sft),
    );
    assert!(r.ok, "{:#?}", r.errors);
    // The weight-0 answer is not checked for brevity: it is not trained.
    assert!(of_code(&r, Code::BriefAssistantAnswer).is_empty());
}

#[test]
fn last_message_not_assistant() {
    sft(
        &msgs(&format!("{USER},{ASSISTANT},{USER}")),
        Code::LastMessageNotAssistant,
        Some(4),
    );
}

#[test]
fn tool_call_mismatch() {
    sft(
        &msgs(&format!(
            r#"{USER},{{"role":"tool","tool_call_id":"call_9","content":"{{\"ok\":true}}"}},{ASSISTANT}"#
        )),
        Code::ToolCallMismatch,
        Some(3),
    );
    sft(
        &msgs(&format!(
            r#"{USER},{{"role":"assistant","tool_calls":[{{"id":"c1"}}]}},{ASSISTANT}"#
        )),
        Code::ToolCallMismatch,
        Some(3),
    );
}

#[test]
fn tool_calls_round_trip_is_accepted() {
    let line = msgs(&format!(
        r#"{USER},{{"role":"assistant","content":null,"tool_calls":[{{"id":"c1","type":"function","function":{{"name":"reset","arguments":"{{}}"}}}}]}},{{"role":"tool","tool_call_id":"c1","content":"{{\"sent\":true}}"}},{ASSISTANT}"#
    ));
    let line = line.replacen("{\"messages\"", "{\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"reset\"}}],\"parallel_tool_calls\":false,\"messages\"", 1);
    let r = validate(
        file_with(12, 4, &line, Method::Sft).as_bytes(),
        Some(Method::Sft),
    );
    assert!(r.ok, "{:#?}", r.errors);
}

#[test]
fn invalid_field_type() {
    sft(
        &msgs(&format!(
            r#"{{"role":"user","content":"How do I reset it?","name":7}},{ASSISTANT}"#
        )),
        Code::InvalidFieldType,
        Some(2),
    );
    sft(
        &format!(r#"{{"tools":"all","messages":[{SYS},{USER},{ASSISTANT}]}}"#),
        Code::InvalidFieldType,
        None,
    );
}

#[test]
fn developer_is_system() {
    let line = format!(
        r#"{{"messages":[{{"role":"developer","content":"You are a helpful support agent."}},{USER},{ASSISTANT}]}}"#
    );
    let r = validate(
        file_with(12, 4, &line, Method::Sft).as_bytes(),
        Some(Method::Sft),
    );
    assert!(
        r.ok && r
            .warnings
            .iter()
            .all(|w| w.code == Code::FewExamplesForGoal),
        "{:#?}",
        r
    );
}

#[test]
fn line_too_long() {
    let text = file_with(
        12,
        4,
        &format!("{{\"x\":\"{}\"}}", "a".repeat(5000)),
        Method::Sft,
    );
    let opts = hone_data::ValidateOptions {
        method: Some(Method::Sft),
        max_line_bytes: 1000,
        ..Default::default()
    };
    let r = hone_data::validate_reader(text.as_bytes(), &opts, None);
    let found = of_code(&r, Code::LineTooLong);
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].line, Some(4));
    assert_eq!(r.n_examples, 12);
}

#[test]
fn invalid_n_examples_and_empty_file() {
    let text: String = (0..9).map(|i| crate::common::sft_line(i) + "\n").collect();
    let r = validate(text.as_bytes(), None);
    let found = of_code(&r, Code::InvalidNExamples);
    assert_eq!((found.len(), found[0].line), (1, None));
    for empty in [&b""[..], b"\n\n", b"\xEF\xBB\xBF"] {
        let r = validate(empty, None);
        assert_eq!(of_code(&r, Code::EmptyFile).len(), 1, "{empty:?}");
        assert!(!r.ok);
    }
}

#[test]
fn warnings_from_seed_001() {
    sft(
        &msgs(&format!(
            r#"{{"role":"user","content":"Reset?"}},{ASSISTANT}"#
        )),
        Code::ShortMessage,
        Some(2),
    );
    sft(
        &msgs(&format!(
            r#"{USER},{{"role":"assistant","content":"I cannot help with passwords, please ask someone else about it."}}"#
        )),
        Code::RefusalAnswer,
        Some(3),
    );
    sft(
        &msgs(&format!(
            r#"{USER},{{"role":"assistant","content":"Use the reset link."}}"#
        )),
        Code::BriefAssistantAnswer,
        Some(3),
    );
    sft(
        &format!(r#"{{"messages":[{USER},{ASSISTANT}]}}"#),
        Code::MissingSystemMessage,
        None,
    );
    sft(
        &format!(r#"{{"messages":[{SYS},{ASSISTANT}]}}"#),
        Code::MissingUserMessage,
        None,
    );
    sft(
        &msgs(&format!(
            r#"{USER},{{"role":"assistant","content":"Go to the login page and follow the emailed link there.","weight":0}}"#
        )),
        Code::NoTrainedMessages,
        None,
    );
    sft(
        &format!(r#"{{"extra":1,"messages":[{SYS},{USER},{ASSISTANT}]}}"#),
        Code::UnrecognizedKey,
        None,
    );
}

#[test]
fn blank_line_is_a_warning() {
    sft("   ", Code::BlankLine, None);
}

#[test]
fn duplicates_near_duplicates_and_conflicts() {
    let base = crate::common::sft_line(7);
    // Line 4 repeats line 8's example (good line index 7 sits at line 9
    // once the bad line is inserted at 4): the later copy is flagged.
    let text = file_with(12, 4, &base, Method::Sft);
    let r = validate(text.as_bytes(), Some(Method::Sft));
    let d = of_code(&r, Code::DuplicateExample);
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].line, Some(9));
    assert!(d[0].text.contains("line 4"), "{}", d[0].text);

    let near = base
        .replace("Question number 7: how", "QUESTION number 7 -- how")
        .replace("Answer 7:", "answer 7");
    let r = validate(
        file_with(12, 4, &near, Method::Sft).as_bytes(),
        Some(Method::Sft),
    );
    let n = of_code(&r, Code::NearDuplicate);
    assert_eq!((n.len(), n[0].line), (1, Some(9)), "{:#?}", r.warnings);

    let conflict = base.replace(
        "Answer 7: go to the login page",
        "Answer 7: call our support line",
    );
    let r = validate(
        file_with(12, 4, &conflict, Method::Sft).as_bytes(),
        Some(Method::Sft),
    );
    let c = of_code(&r, Code::ConflictingAnswers);
    assert_eq!((c.len(), c[0].line), (1, Some(9)), "{:#?}", r.warnings);
    assert!(r.ok);
}

/// Tool-call answers compare by function and arguments: the call ids (which
/// each line numbers its own way) and the arguments' spacing do not count.
#[test]
fn tool_call_answers_compare_without_their_ids() {
    let line = |id: &str, args: &str| {
        let call = format!(
            r#"{{"role":"assistant","content":null,"tool_calls":[{{"id":"{id}","type":"function","function":{{"name":"book","arguments":"{args}"}}}}]}}"#
        );
        msgs(&format!(r#"{USER},{call}"#))
    };
    // A file whose line 2 calls with id call_1; a last line calls with call_9.
    let warnings = |args: &str, code: Code| {
        let mut t = file_with(12, 2, &line("call_1", r#"{\"n\": 2}"#), Method::Sft);
        t.push_str(&line("call_9", args));
        t.push('\n');
        let r = validate(t.as_bytes(), Some(Method::Sft));
        of_code(&r, code).len()
    };
    assert_eq!(warnings(r#"{\"n\":2}"#, Code::ConflictingAnswers), 0);
    assert_eq!(warnings(r#"{\"n\":2}"#, Code::NearDuplicate), 1);
    assert_eq!(warnings(r#"{\"n\": 3}"#, Code::ConflictingAnswers), 1);
}

#[test]
fn example_too_long_says_by_how_much() {
    let long = msgs(&format!(
        r#"{USER},{{"role":"assistant","content":"{}"}}"#,
        "word ".repeat(300)
    ));
    let text = file_with(12, 4, &long, Method::Sft);
    let r = validate_with_tokens(text.as_bytes(), Some(Method::Sft), Some(100));
    let t = of_code(&r, Code::ExampleTooLong);
    assert_eq!(t.len(), 1);
    assert_eq!(t[0].line, Some(4));
    // WordCounter: 6+4 (system) + 7+4 (user) + 300+4 (assistant) = 325.
    assert!(
        t[0].text.contains("325 tokens, 225 over the limit of 100"),
        "{}",
        t[0].text
    );
    assert_eq!(r.stats.tokens.as_ref().unwrap().n_over_length_limit, 1);
}

#[test]
fn few_examples_for_goal() {
    let text: String = (0..20).map(|i| crate::common::sft_line(i) + "\n").collect();
    let r = validate(text.as_bytes(), None);
    assert_eq!(of_code(&r, Code::FewExamplesForGoal).len(), 1);
    let opts = hone_data::ValidateOptions {
        goal: Some(hone_data::quality::Goal::Style),
        ..Default::default()
    };
    let r = hone_data::validate_reader(text.as_bytes(), &opts, None);
    assert!(of_code(&r, Code::FewExamplesForGoal)[0]
        .text
        .contains("300"));
}

const PREF: &str = r#""preferred_output":[{"role":"assistant","content":"A clear, friendly and complete answer about today's weather."}]"#;
const NONPREF: &str =
    r#""non_preferred_output":[{"role":"assistant","content":"Dunno, maybe cold."}]"#;
const INPUT: &str = r#""input":{"messages":[{"role":"system","content":"You are a weather assistant."},{"role":"user","content":"How cold is it in Paris today?"}]}"#;

#[test]
fn dpo_codes() {
    dpo(
        &format!("{{{PREF},{NONPREF}}}"),
        Code::DpoMissingInput,
        None,
    );
    dpo(&format!("{{{INPUT},{PREF}}}"), Code::DpoMissingOutput, None);
    dpo(
        &format!(r#"{{{INPUT},{PREF},"non_preferred_output":[]}}"#),
        Code::DpoInvalidOutput,
        None,
    );
    dpo(
        &format!(
            r#"{{{INPUT},{PREF},"non_preferred_output":[{{"role":"user","content":"Not an assistant message"}}]}}"#
        ),
        Code::DpoInvalidOutput,
        None,
    );
    dpo(
        &format!(
            "{{{INPUT},{PREF},{}}}",
            PREF.replace("preferred_output", "non_preferred_output")
        ),
        Code::DpoIdenticalOutputs,
        None,
    );
    let multi = r#""input":{"messages":[{"role":"user","content":"How cold is it in Paris today?"},{"role":"assistant","content":"About 14 degrees."},{"role":"user","content":"And tomorrow, will it be warmer?"}]}"#;
    dpo(
        &format!("{{{multi},{PREF},{NONPREF}}}"),
        Code::DpoMultiTurn,
        Some(2),
    );
}

#[test]
fn dpo_aliases_are_accepted() {
    let line = format!(
        "{{{INPUT},{},{}}}",
        PREF.replace("preferred_output", "preferred_completion"),
        NONPREF.replace("non_preferred_output", "non_preferred_completion")
    );
    let r = validate(file_with(12, 4, &line, Method::Dpo).as_bytes(), None);
    assert_eq!(r.method, Method::Dpo);
    assert!(r.ok, "{:#?}", r.errors);
}

#[test]
fn every_problem_on_a_line_is_reported() {
    let line = msgs(
        r#"{"role":"robot","content":"x"},{"role":"user","content":7,"mood":1},{"role":"assistant","content":"fine answer here, long enough to pass.","weight":5}"#,
    );
    let r = validate(
        file_with(12, 4, &line, Method::Sft).as_bytes(),
        Some(Method::Sft),
    );
    let codes: Vec<(Code, Option<usize>)> = r.errors.iter().map(|i| (i.code, i.message)).collect();
    for want in [
        (Code::UnrecognizedRole, Some(2)),
        (Code::MessageUnrecognizedKey, Some(3)),
        (Code::MissingContent, Some(3)),
        (Code::InvalidWeight, Some(4)),
    ] {
        assert!(codes.contains(&want), "{want:?} missing from {codes:?}");
    }
}

/// A held-out file may be small: `hone train --validation` with 8 examples
/// used to be refused by the training-file rule of at least 10.
#[test]
fn a_small_validation_file_is_accepted_where_a_training_file_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("valid.jsonl");
    let line = r#"{"messages":[{"role":"user","content":"Hello there"},{"role":"assistant","content":"Hi! How can I help you today?"}]}"#;
    std::fs::write(&path, format!("{line}\n").repeat(3)).unwrap();
    assert!(hone_data::parse_sft_file(&path).is_err());
    assert_eq!(
        hone_data::parse_sft_validation_file(&path).unwrap().len(),
        3
    );
    std::fs::write(&path, "").unwrap();
    assert!(hone_data::parse_sft_validation_file(&path).is_err());
}
