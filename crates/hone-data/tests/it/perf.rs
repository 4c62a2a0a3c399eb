//! A measuring test, not a timed one: `cargo test --release -p hone-data
//! --test it perf -- --ignored --nocapture` prints how long validating a
//! 100,000-example, ~100 MB file takes (format checks plus a stand-in token
//! counter). The real-tokenizer figure comes from `hone data validate` on the
//! same file (see docs/data.md).

use std::io::Write;
use std::time::Instant;

use hone_data::tokens::WordCounter;
use hone_data::{validate_file, ValidateOptions};

/// Writes `n` distinct ~1 KB SFT examples.
pub fn write_big_file(path: &std::path::Path, n: usize) -> std::io::Result<u64> {
    let mut w = std::io::BufWriter::new(std::fs::File::create(path)?);
    let filler =
        "The quick brown fox jumps over the lazy dog while the support team answers. ".repeat(10);
    for i in 0..n {
        writeln!(
            w,
            r#"{{"messages":[{{"role":"system","content":"You are Cogsworth, the bike shop assistant. Answer briefly and kindly."}},{{"role":"user","content":"Question {i}: {}"}},{{"role":"assistant","content":"Answer {i}: {}"}}]}}"#,
            &filler[..200],
            filler
        )?;
    }
    w.flush()?;
    Ok(std::fs::metadata(path)?.len())
}

#[test]
#[ignore = "measurement: run with --ignored --nocapture"]
fn bench_validate_100k_examples() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.jsonl");
    let bytes = write_big_file(&path, 100_000).unwrap();
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
            "{label}: {} examples, {:.1} MB in {secs:.2} s ({:.1} MB/s, {} rayon threads)",
            r.n_examples,
            bytes as f64 / 1e6,
            bytes as f64 / 1e6 / secs,
            rayon::current_num_threads()
        );
    }
}
