//! The count path against the full encode, on random texts, conversations
//! and (when `HONE_TEST_GGUF` is set) the real model; benchmarks.

use super::*;
use crate::testing::{tiny_chat_tokenizer, tiny_gguf_content, SMOLLM2_TEMPLATE};
use crate::{
    ChatCount, ChatMessage, ChatTemplate, ChatTokenCounter, ChatTokenizer, Role, Tokenizer,
};
use serde_json::json;

/// xorshift64*: deterministic variety without a dependency.
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
}

/// Pieces chosen to hit every rule of the split: whitespace runs before
/// words and at the end, digits (including non-ASCII numerics), the
/// contractions, multi-byte characters, special tokens quoted in text.
const PIECES: &[&str] = &[
    "Hello",
    " world",
    "the",
    " the",
    " ",
    "  ",
    "\n",
    "\n\n",
    "\t",
    " \n ",
    "\r\n",
    "123",
    " 42",
    "3.14",
    "x²",
    "Ⅻ",
    "½",
    "٣",
    "'s",
    "'re",
    "don't",
    " I'll",
    "é",
    " café",
    "東京",
    " 🎉",
    "👍🏽",
    "\u{a0}",
    "!",
    "?!",
    " ...",
    "(",
    ")",
    "{\"a\": 1}",
    "<|im_end|>",
    "<|im_start|>",
    "<|im",
    "|>",
    "<",
    "Paris",
    " capital",
    "ſ",
    "ǅ",
    "\u{301}",
    "a\u{301}",
];

fn text(rng: &mut Rng, max_pieces: usize) -> String {
    (0..rng.below(max_pieces + 1))
        .map(|_| PIECES[rng.below(PIECES.len())])
        .collect()
}

/// Conversations of every shape the data checks see: with and without a
/// system message, multi-turn, weight 0, tool calls and results, empty
/// and whitespace-led contents, unicode.
fn conversations(n: usize, seed: u64, max_pieces: usize) -> Vec<Vec<ChatMessage>> {
    let mut rng = Rng(seed | 1);
    (0..n)
        .map(|i| {
            let mut msgs = Vec::new();
            if rng.below(3) != 0 {
                msgs.push(ChatMessage::new(Role::System, text(&mut rng, max_pieces)));
            }
            for t in 0..1 + rng.below(4) {
                msgs.push(ChatMessage::new(Role::User, text(&mut rng, max_pieces)));
                if rng.below(5) == 0 {
                    let id = format!("call_{i}_{t}");
                    let mut call = ChatMessage::new(Role::Assistant, "");
                    call.tool_calls = Some(json!([{"id": id, "type": "function",
                        "function": {"name": "lookup", "arguments": text(&mut rng, 4)}}]));
                    msgs.push(call);
                    let mut result = ChatMessage::new(Role::Tool, text(&mut rng, max_pieces));
                    result.tool_call_id = Some(id);
                    msgs.push(result);
                }
                let mut answer = ChatMessage::new(Role::Assistant, text(&mut rng, max_pieces));
                if rng.below(4) == 0 {
                    answer.weight = Some(0);
                }
                msgs.push(answer);
            }
            msgs
        })
        .collect()
}

/// ChatML that also writes tool calls and tool results, so that their
/// JSON goes through the tokenizer too.
const TOOLS_TEMPLATE: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n'}}{% if message.tool_calls is defined %}{{ message.tool_calls | tojson }}{% endif %}{% if message.tool_call_id is defined %}{{ '[' + message.tool_call_id + '] ' }}{% endif %}{{ message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

fn tiny_with(template: &str) -> ChatTokenizer {
    let tokenizer = Tokenizer::from_gguf_content(&tiny_gguf_content(None).unwrap()).unwrap();
    let template = ChatTemplate::new(template, "<|im_start|>", "<|im_end|>").unwrap();
    ChatTokenizer::new(tokenizer, template)
}

fn counted(t: &Tokenizer, text: &str, ranges: &[Range<usize>]) -> SpanCount {
    let enc = t.encode_with_offsets(text).unwrap();
    SpanCount {
        total: enc.ids.len(),
        in_ranges: enc
            .offsets
            .iter()
            .filter(|o| ranges.iter().any(|r| r.contains(&o.start)))
            .count(),
    }
}

fn char_boundary(s: &str, mut i: usize) -> usize {
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

#[test]
fn the_gguf_pipeline_is_recognised() {
    assert!(tiny_chat_tokenizer().unwrap().tokenizer.has_fast_count());
}

#[test]
fn counts_equal_the_encoding_on_random_texts_and_ranges() {
    let t = tiny_chat_tokenizer().unwrap().tokenizer;
    let uncached = t.clone().with_count_cache(false);
    let mut rng = Rng(7);
    for _ in 0..3000 {
        let s = text(&mut rng, 30);
        let mut cuts: Vec<usize> = (0..rng.below(5))
            .map(|_| char_boundary(&s, rng.below(s.len() + 1)))
            .collect();
        cuts.sort_unstable();
        let ranges: Vec<Range<usize>> = cuts
            .chunks(2)
            .map(|c| c[0]..*c.last().unwrap_or(&c[0]))
            .collect();
        let want = counted(&t, &s, &ranges);
        assert_eq!(
            t.count_tokens(&s, &ranges).unwrap(),
            want,
            "{s:?} {ranges:?}"
        );
        assert_eq!(uncached.count_tokens(&s, &ranges).unwrap(), want, "{s:?}");
    }
}

#[test]
fn count_chat_equals_encode_chat_on_varied_conversations() {
    for ct in [tiny_with(SMOLLM2_TEMPLATE), tiny_with(TOOLS_TEMPLATE)] {
        for conv in conversations(400, 11, 12) {
            let enc = ct.encode_chat(&conv, None).unwrap();
            let want = ChatCount {
                total: enc.len(),
                trained: enc.trained_token_count(),
            };
            assert_eq!(ct.count_chat(&conv, None).unwrap(), want, "{conv:?}");
        }
    }
}

#[test]
fn count_preference_equals_encode_preference() {
    let ct = tiny_with(SMOLLM2_TEMPLATE);
    for conv in conversations(200, 5, 10) {
        let prompt: Vec<ChatMessage> = conv
            .iter()
            .filter(|m| m.role != Role::Assistant)
            .cloned()
            .collect();
        let answer = conv.last().unwrap();
        let enc = ct.encode_preference(&prompt, answer, None).unwrap();
        let got = ct.count_preference(&prompt, answer, None).unwrap();
        assert_eq!(
            (got.total, got.trained),
            (enc.len(), enc.trained_token_count())
        );
    }
}

#[test]
fn whitespace_led_answers_keep_the_straddling_token_untrained() {
    let ct = tiny_with(SMOLLM2_TEMPLATE);
    for content in [" Hello", "\n\nHello", "  \n x", " ", "\n"] {
        let conv = vec![
            ChatMessage::new(Role::User, "Hi"),
            ChatMessage::new(Role::Assistant, content),
        ];
        let enc = ct.encode_chat(&conv, None).unwrap();
        let got = ct.count_chat(&conv, None).unwrap();
        assert_eq!(
            (got.total, got.trained),
            (enc.len(), enc.trained_token_count()),
            "{content:?}"
        );
    }
}

#[test]
fn an_unrecognised_pipeline_falls_back_to_encoding() {
    let ct = tiny_chat_tokenizer().unwrap();
    let mut inner = ct.tokenizer.inner().clone();
    inner
        .with_normalizer(Some(tokenizers::normalizers::Lowercase))
        .unwrap();
    let t = Tokenizer::from_parts(inner, ct.tokenizer.bos_id(), ct.tokenizer.eos_id()).unwrap();
    assert!(!t.has_fast_count());
    let s = "Hello World 123<|im_end|>";
    let world: Vec<Range<usize>> = vec![Range { start: 6, end: 12 }];
    assert_eq!(t.count_tokens(s, &world).unwrap(), counted(&t, s, &world));
}

#[test]
fn added_tokens_split_leftmost_longest() {
    let tokens = vec!["<|im_start|>".to_string(), "<|im".to_string()];
    let text = "a<|im_start|>b<|imc";
    let pieces: Vec<String> = split_added(text, 0..text.len(), &tokens)
        .into_iter()
        .map(|p| match p {
            Piece::Added(at) => format!("@{at}"),
            Piece::Text(r) => text[r].to_string(),
        })
        .collect();
    assert_eq!(pieces, ["a", "@1", "b", "@14", "c"]);
}

#[test]
fn word_split_equals_the_regex_on_mixed_text() {
    let t = tiny_chat_tokenizer().unwrap().tokenizer;
    let fast = FastCounter::recognise(t.inner()).unwrap();
    let regex = SysRegex::new(GPT2_PATTERN).unwrap();
    let alphabet: Vec<char> = "abstrevlmdA12 \t\n\r'!.-é東\u{a0}\u{3000}½\u{301}\u{b}\u{1}\u{7f}"
        .chars()
        .collect();
    let mut rng = Rng(99);
    for _ in 0..50_000 {
        let len = 1 + rng.below(24);
        let s: String = (0..len)
            .map(|_| alphabet[rng.below(alphabet.len())])
            .collect();
        let want: Vec<(usize, usize)> = regex.find_iter(&s).collect();
        let mut got = Vec::new();
        let mut i = 0;
        while i < s.len() {
            let n = fast.next_word_len(&s[i..]);
            got.push((i, i + n));
            i += n;
        }
        assert_eq!(got, want, "{s:?}");
    }
}

fn real_model() -> ChatTokenizer {
    let path = std::env::var("HONE_TEST_GGUF")
        .expect("set HONE_TEST_GGUF to the SmolLM2-135M-Instruct GGUF to run this test");
    ChatTokenizer::from_gguf(&path).unwrap()
}

#[test]
#[ignore = "needs HONE_TEST_GGUF"]
fn real_model_counts_equal_encode_chat() {
    let ct = real_model();
    assert!(ct.tokenizer.has_fast_count());
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../testdata/smollm2-135m-instruct.json");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut checked = 0;
    for case in v["tokenizer"].as_array().unwrap() {
        let s = case["text"].as_str().unwrap();
        assert_eq!(
            ct.tokenizer.count_tokens(s, &[]).unwrap().total,
            case["ids"].as_array().unwrap().len()
        );
        checked += 1;
    }
    let mut convs: Vec<Vec<ChatMessage>> = v["chat_template"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| serde_json::from_value(c["messages"].clone()).unwrap())
        .collect();
    convs.extend(conversations(3000, 3, 40));
    for conv in convs
        .iter()
        .filter(|c| c.last().is_some_and(|m| m.role == Role::Assistant))
    {
        let enc = ct.encode_chat(conv, None).unwrap();
        let want = ChatCount {
            total: enc.len(),
            trained: enc.trained_token_count(),
        };
        assert_eq!(ct.count_chat(conv, None).unwrap(), want, "{conv:?}");
        checked += 1;
    }
    assert!(checked > 3000);
}

/// `HONE_PERF_FILE=/path/to/file.jsonl HONE_TEST_GGUF=... cargo test
/// --release -p hone-text count::tests::bench -- --ignored --nocapture`:
/// validates the file with token counts through the count path (word
/// cache on, then off), printing wall and CPU seconds.
#[test]
#[ignore = "benchmark: needs HONE_TEST_GGUF and HONE_PERF_FILE"]
fn bench_count_path_on_a_file() {
    let file = std::env::var("HONE_PERF_FILE").expect("set HONE_PERF_FILE");
    let ct = real_model();
    let opts = hone_data::ValidateOptions::default();
    for cache in [true, false] {
        let counter = ChatTokenCounter {
            chat: ChatTokenizer::new(
                ct.tokenizer.clone().with_count_cache(cache),
                ct.template.clone(),
            ),
            context_length: 8192,
        };
        let (cpu0, t0) = (cpu_seconds(), std::time::Instant::now());
        let r =
            hone_data::validate_file(std::path::Path::new(&file), &opts, Some(&counter)).unwrap();
        let (wall, cpu) = (t0.elapsed().as_secs_f64(), cpu_seconds() - cpu0);
        let tokens = r.stats.tokens.as_ref().map_or(0, |t| t.total_tokens);
        println!(
            "count path, word cache {}: {} examples, {tokens} tokens in {wall:.2} s wall, {cpu:.2} s CPU ({} threads)",
            if cache { "on" } else { "off" },
            r.n_examples,
            std::thread::available_parallelism().map_or(1, |n| n.get())
        );
    }
}

/// Single-thread cost of each stage on `HONE_PERF_FILE` (an SFT file):
/// rendering with spans, counting (word cache on, then off) and the
/// full `encode_rendered` that counting replaces.
#[test]
#[ignore = "benchmark: needs HONE_TEST_GGUF and HONE_PERF_FILE"]
fn bench_stages_single_thread() {
    let file = std::env::var("HONE_PERF_FILE").expect("set HONE_PERF_FILE");
    let ct = real_model();
    let examples = hone_data::parse_sft_file(std::path::Path::new(&file)).unwrap();
    let timed = |label: &str, f: &mut dyn FnMut() -> usize| {
        let (cpu0, t0) = (cpu_seconds(), std::time::Instant::now());
        let tokens = f();
        let (wall, cpu) = (t0.elapsed().as_secs_f64(), cpu_seconds() - cpu0);
        println!(
            "{label}: {} examples, {tokens} tokens, {wall:.2} s wall, {cpu:.2} s CPU, {:.2} M tokens per CPU second",
            examples.len(),
            tokens as f64 / cpu.max(1e-9) / 1e6
        );
    };
    let mut rendered = Vec::new();
    timed("render_with_spans", &mut || {
        rendered = examples
            .iter()
            .map(|e| ct.render_with_spans(&e.messages, e.tools.as_ref()).unwrap())
            .collect();
        0
    });
    for cache in [true, false] {
        let t = ChatTokenizer::new(
            ct.tokenizer.clone().with_count_cache(cache),
            ct.template.clone(),
        );
        timed(&format!("count_rendered, word cache {cache}"), &mut || {
            rendered
                .iter()
                .map(|r| t.count_rendered(r).unwrap().total)
                .sum()
        });
    }
    timed("encode_rendered (the encode path)", &mut || {
        rendered
            .iter()
            .map(|r| ct.encode_rendered(r).unwrap().len())
            .sum()
    });
}

/// User plus system CPU seconds of this process (Linux).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let field = |i: usize| f.get(i).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0);
    // Fields 14 and 15 (utime, stime, in 1/100 s) are the 12th and 13th
    // after the ")" that ends the command name.
    (field(11) + field(12)) / 100.0
}
