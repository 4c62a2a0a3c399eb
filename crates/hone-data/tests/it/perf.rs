//! A measuring test, not a timed one: `cargo test --release -p hone-data
//! --test it perf -- --ignored --nocapture` prints how long validating a
//! 100,000-example, ~100 MB file takes (format checks plus a stand-in token
//! counter). The real-tokenizer figure comes from `hone data validate` on the
//! same file (see docs/data.md): set `HONE_PERF_KEEP=DIR` to keep the
//! generated files (`varied.jsonl`, `unique.jsonl`) there.
//!
//! The generator is meant to look like real fine-tuning data, not to flatter
//! caches: a few recurring system prompts (as real datasets have), but user
//! and assistant text drawn word by word from a Zipf-like vocabulary with a
//! long tail of made-up words, numbers, code, unicode, multi-turn chats,
//! tool calls and weight-0 turns. `Variety::Unique` also makes every system
//! prompt distinct, so no message text repeats anywhere in the file.

use std::fmt::Write as _;
use std::io::Write;
use std::time::Instant;

use hone_data::tokens::WordCounter;
use hone_data::{validate_file, ValidateOptions};

/// How much text may recur across examples.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variety {
    /// Twelve system prompts shared by the file (and none in one example in
    /// eight); everything else drawn at random.
    Realistic,
    /// Every message of every example is distinct text.
    Unique,
}

/// A small deterministic generator (xorshift64*), so the file is the same on
/// every run without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
    /// Zipf-like index in `0..n`: small indices much more often.
    fn zipf(&mut self, n: usize) -> usize {
        let u = (self.next() >> 11) as f64 / (1u64 << 53) as f64;
        ((n as f64).powf(u) - 1.0) as usize % n
    }
}

#[rustfmt::skip]
const COMMON: &[&str] = &[
    "the", "of", "and", "to", "a", "in", "is", "you", "that", "it", "for", "on", "with", "as",
    "your", "can", "be", "this", "are", "or", "we", "if", "will", "not", "have", "from", "by",
    "at", "an", "which", "more", "they", "when", "use", "then", "about", "order", "account",
    "please", "bike", "chain", "brake", "wheel", "tyre", "price", "delivery", "refund", "invoice",
    "password", "email", "reset", "settings", "update", "install", "error", "message", "server",
    "database", "query", "function", "return", "value", "because", "should", "would", "could",
    "there", "their", "time", "day", "week", "month", "customer", "support", "team", "service",
    "product", "warranty", "repair", "replace", "check", "make", "sure", "first", "next",
    "finally", "also", "however", "usually", "quickly", "carefully", "simple", "important",
    "different", "available", "required", "recommended", "temperature", "weather", "recipe",
    "flour", "sugar", "butter", "oven", "minutes", "hours", "train", "ticket", "station",
    "flight", "hotel", "booking", "payment", "card", "bank", "transfer", "balance", "loan",
    "interest", "rate", "model", "data", "training", "example", "answer", "question", "explain",
    "summary", "list", "step", "steps", "option", "options", "file", "folder", "window", "click",
    "button", "menu", "screen", "phone", "app", "version", "Thanks", "Hello", "Sure", "Yes", "No",
    "I", "It", "The", "You", "We", "This", "If", "To", "In", "For", "Please", "Here", "First",
];

#[rustfmt::skip]
const SYLLABLES: &[&str] = &[
    "ka", "lo", "mi", "ter", "van", "dro", "pel", "sun", "qui", "zor", "ath", "ben", "cri", "dul",
    "fen", "gor", "hap", "ix", "jun", "kel", "mor", "nex", "op", "pra", "rin", "sal", "tov", "ur",
    "vel", "wix", "yar", "zen", "str", "ough", "tion", "ment", "able", "ing", "ed", "ly",
];

/// Distinct made-up words in the long tail of the vocabulary.
const TAIL_WORDS: usize = 200_000;

#[rustfmt::skip]
const PUNCT: &[&str] = &[".", ",", "!", "?", ":", ";", " -", " (", ")", "'s", "n't", "\n", "\n\n"];

#[rustfmt::skip]
const UNICODE: &[&str] = &[
    "café", "naïve", "Zürich", "東京", "данные", "🚲", "✓", "€", "°C", "—", "¿Qué", "straße",
    "😊", "Ελλάδα", "مرحبا", "…",
];

const CODE: &[&str] = &[
    "```python\nfor i in range(10):\n    print(i)\n```",
    "`git commit -am \"fix\"`",
    "```rust\nfn main() {\n    println!(\"hi\");\n}\n```",
    "{\"ok\": true, \"count\": 3}",
    "SELECT * FROM orders WHERE id = 42;",
    "<div class=\"note\">&nbsp;</div>",
];

const PERSONAS: &[&str] = &[
    "You are Cogsworth, the bike shop assistant. Answer briefly and kindly.",
    "You are a helpful assistant.",
    "You are a support agent for Acme Bank. Never ask for a full card number.",
    "You are a patient tutor. Explain step by step and check understanding.",
    "You are a travel assistant. Give prices in euros and times in 24h format.",
    "You are a senior Python engineer reviewing code. Be direct.",
    "Answer in the style of a friendly pirate.",
    "You are a cooking assistant. Metric units only.",
    "You are a weather bot. Always state the temperature in °C.",
    "You are an SQL expert. Reply with a query and one sentence of explanation.",
    "Tu es un assistant francophone. Réponds en français.",
    "You summarise documents in three bullet points.",
];

fn word(rng: &mut Rng, out: &mut String) {
    match rng.below(100) {
        0..=73 => out.push_str(COMMON[rng.zipf(COMMON.len())]),
        74..=88 => {
            // The long tail: names, jargon, rare words, drawn Zipf-like from
            // TAIL_WORDS made-up words, so rare words stay rare.
            let mut id = rng.zipf(TAIL_WORDS) + 1;
            while id > 0 {
                out.push_str(SYLLABLES[id % SYLLABLES.len()]);
                id /= SYLLABLES.len();
            }
        }
        89..=95 => {
            let max = if rng.chance(50) { 100 } else { 100_000 };
            let _ = write!(out, "{}", rng.below(max));
        }
        96..=98 => out.push_str(UNICODE[rng.below(UNICODE.len())]),
        _ => out.push_str(CODE[rng.below(CODE.len())]),
    }
}

/// About `words` words of text with punctuation and line breaks.
fn text(rng: &mut Rng, words: usize) -> String {
    let mut s = String::new();
    for i in 0..words {
        if i > 0 {
            s.push(' ');
        }
        word(rng, &mut s);
        if rng.chance(12) {
            s.push_str(PUNCT[rng.below(PUNCT.len())]);
        }
    }
    s
}

/// A JSON string literal.
fn js(s: &str) -> String {
    serde_json::to_string(s).expect("strings serialise")
}

fn message(role: &str, content: &str, extra: &str) -> String {
    format!(r#"{{"role":"{role}","content":{}{extra}}}"#, js(content))
}

/// One SFT example line.
fn example(rng: &mut Rng, i: usize, variety: Variety) -> String {
    let mut msgs = Vec::new();
    if rng.below(8) != 0 {
        let persona = PERSONAS[rng.zipf(PERSONAS.len())];
        let system = match variety {
            Variety::Realistic => persona.to_string(),
            Variety::Unique => format!("{persona} Ticket {i}: {}", text(rng, 6)),
        };
        msgs.push(message("system", &system, ""));
    }
    let turns = 1 + rng.zipf(4);
    for t in 0..turns {
        let words = 5 + rng.below(32);
        msgs.push(message("user", &text(rng, words), ""));
        if rng.chance(6) {
            let id = format!("call_{i}_{t}");
            let args = js(&format!(r#"{{"query": {}}}"#, js(&text(rng, 3))));
            msgs.push(format!(
                r#"{{"role":"assistant","content":null,"tool_calls":[{{"id":"{id}","type":"function","function":{{"name":"lookup","arguments":{args}}}}}]}}"#
            ));
            let words = 10 + rng.below(30);
            let result = text(rng, words);
            msgs.push(message(
                "tool",
                &result,
                &format!(r#","tool_call_id":"{id}""#),
            ));
        }
        let weight = if t + 1 < turns && rng.chance(20) {
            r#","weight":0"#
        } else {
            ""
        };
        let words = 12 + rng.below(if turns == 1 { 150 } else { 75 });
        msgs.push(message("assistant", &text(rng, words), weight));
    }
    format!(r#"{{"messages":[{}]}}"#, msgs.join(","))
}

/// Writes `n` SFT examples of realistic variety (see the module docs).
pub fn write_varied_file(
    path: &std::path::Path,
    n: usize,
    variety: Variety,
) -> std::io::Result<u64> {
    let mut w = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for i in 0..n {
        writeln!(w, "{}", example(&mut rng, i, variety))?;
    }
    w.flush()?;
    Ok(std::fs::metadata(path)?.len())
}

#[test]
fn generated_examples_are_valid_and_varied() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("small.jsonl");
    write_varied_file(&path, 300, Variety::Realistic).unwrap();
    let counter = WordCounter {
        context_length: 1 << 20,
    };
    let r = validate_file(&path, &ValidateOptions::default(), Some(&counter)).unwrap();
    assert!(r.ok, "{:?}", r.errors.first());
    assert_eq!(r.n_examples, 300);
    assert_eq!(r.stats.n_duplicates + r.stats.n_near_duplicates, 0);
    let text = std::fs::read_to_string(&path).unwrap();
    for needle in ["tool_calls", r#""weight":0"#, "東京", "```"] {
        assert!(text.contains(needle), "no {needle} in the generated file");
    }
}

#[test]
#[ignore = "measurement: run with --ignored --nocapture"]
fn bench_validate_100k_examples() {
    let dir = tempfile::tempdir().unwrap();
    let keep = std::env::var_os("HONE_PERF_KEEP").map(std::path::PathBuf::from);
    let out = keep.as_deref().unwrap_or(dir.path());
    for (name, variety) in [
        ("varied.jsonl", Variety::Realistic),
        ("unique.jsonl", Variety::Unique),
    ] {
        let path = out.join(name);
        let bytes = write_varied_file(&path, 100_000, variety).unwrap();
        let counter = WordCounter {
            context_length: 8192,
        };
        for (label, counter) in [
            ("format checks only", None),
            (
                "format + word counter",
                Some(&counter as &dyn hone_data::TokenCounter),
            ),
        ] {
            let t = Instant::now();
            let r = validate_file(&path, &ValidateOptions::default(), counter).unwrap();
            let secs = t.elapsed().as_secs_f64();
            assert!(r.ok, "{:?}", r.errors.first());
            assert_eq!(r.n_examples, 100_000);
            println!(
                "{name}, {label}: {} examples, {:.1} MB in {secs:.2} s ({:.1} MB/s, {} rayon threads)",
                r.n_examples,
                bytes as f64 / 1e6,
                bytes as f64 / 1e6 / secs,
                rayon::current_num_threads()
            );
        }
    }
}
