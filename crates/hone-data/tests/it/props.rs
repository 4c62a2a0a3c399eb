//! Property tests: arbitrary bytes, and arbitrary mutations of valid files,
//! never panic, and reports stay self-consistent.

use hone_data::tokens::WordCounter;
use hone_data::{validate_reader, Method, Report, ValidateOptions};
use proptest::prelude::*;

use crate::common::{dpo_line, sft_line};

fn check_invariants(r: &Report, input_len: usize) {
    assert_eq!(r.ok, r.errors.is_empty());
    assert!(r.n_examples <= r.stats.n_lines);
    assert!(r.stats.n_lines <= input_len + 1);
    for i in r.errors.iter().chain(&r.warnings) {
        if let Some(l) = i.line {
            assert!(l >= 1 && l <= r.stats.n_lines.max(1), "{i:?}");
        }
        assert!(i.message != Some(0), "{i:?}");
    }
    // Reports always serialise (the server stores them).
    serde_json::to_string(r).unwrap();
}

fn run(bytes: &[u8], method: Option<Method>, tokens: bool) -> Report {
    let opts = ValidateOptions {
        method,
        max_line_bytes: 4096,
        max_seq_len: Some(64),
        ..ValidateOptions::default()
    };
    let counter = WordCounter {
        context_length: 128,
    };
    validate_reader(
        bytes,
        &opts,
        tokens.then_some(&counter as &dyn hone_data::TokenCounter),
    )
}

/// Fragments that tend to reach deep into the checks when spliced.
const FRAGMENTS: &[&str] = &[
    "{",
    "}",
    "[",
    "]",
    ",",
    ":",
    "\"",
    "\\",
    "\n",
    "\r\n",
    "\0",
    "\u{feff}",
    "null",
    "true",
    "0",
    "1",
    "2",
    "-1",
    "1e999",
    "\"messages\"",
    "\"role\"",
    "\"content\"",
    "\"weight\"",
    "\"tool_calls\"",
    "\"tool_call_id\"",
    "\"input\"",
    "\"preferred_output\"",
    "\"non_preferred_output\"",
    "\"user\"",
    "\"assistant\"",
    "\"system\"",
    "\"tool\"",
    "\"developer\"",
    "\"type\"",
    "\"text\"",
    "\"id\"",
    "\"function\"",
    "\"name\"",
    "\"tools\"",
];

fn fragment_line() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(FRAGMENTS), 0..40).prop_map(|v| v.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..2048), dpo in any::<bool>(), tokens in any::<bool>()) {
        let method = if dpo { Some(Method::Dpo) } else { None };
        let r = run(&bytes, method, tokens);
        check_invariants(&r, bytes.len());
    }

    #[test]
    fn spliced_json_fragments_never_panic(lines in prop::collection::vec(fragment_line(), 0..20), tokens in any::<bool>()) {
        let text = lines.join("\n");
        for method in [None, Some(Method::Sft), Some(Method::Dpo)] {
            let r = run(text.as_bytes(), method, tokens);
            check_invariants(&r, text.len());
        }
    }

    #[test]
    fn mutated_valid_files_never_panic(
        dpo in any::<bool>(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..8),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut bytes: Vec<u8> = (0..12)
            .flat_map(|i| (if dpo { dpo_line(i) } else { sft_line(i) } + "\n").into_bytes())
            .collect();
        for (at, b) in edits {
            let i = at.index(bytes.len());
            bytes[i] = b;
        }
        bytes.truncate(cut.index(bytes.len() + 1));
        let r = run(&bytes, None, true);
        check_invariants(&r, bytes.len());
    }

    #[test]
    fn clean_files_stay_clean_with_any_line_endings(crlf in any::<bool>(), bom in any::<bool>(), final_newline in any::<bool>()) {
        let sep = if crlf { "\r\n" } else { "\n" };
        let mut text = (0..12).map(sft_line).collect::<Vec<_>>().join(sep);
        if final_newline { text.push_str(sep); }
        if bom { text.insert(0, '\u{feff}'); }
        let r = run(text.as_bytes(), None, false);
        prop_assert!(r.ok, "{:?}", r.errors);
        prop_assert_eq!(r.n_examples, 12);
    }
}
