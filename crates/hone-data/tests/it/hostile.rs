//! Hostile input never panics and never stops validation early.

use std::io::Read;

use hone_data::{validate_reader, Code, Method, ValidateOptions};

use crate::common::{of_code, sft_line, validate};

/// A reader that yields a huge single line without holding it in memory.
struct HugeLine {
    remaining: usize,
    tail: std::io::Cursor<Vec<u8>>,
}

impl Read for HugeLine {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.remaining > 0 {
            let n = buf.len().min(self.remaining);
            buf[..n].fill(b'a');
            self.remaining -= n;
            return Ok(n);
        }
        self.tail.read(buf)
    }
}

#[test]
fn a_100_mb_line_is_skipped_and_the_rest_checked() {
    let tail: String = (0..10).map(|i| format!("\n{}", sft_line(i))).collect();
    let reader = std::io::BufReader::new(HugeLine {
        remaining: 100 * 1024 * 1024,
        tail: std::io::Cursor::new(tail.into_bytes()),
    });
    let r = validate_reader(reader, &ValidateOptions::default(), None);
    let long = of_code(&r, Code::LineTooLong);
    assert_eq!(long.len(), 1);
    assert_eq!(long[0].line, Some(1));
    assert!(long[0].text.contains("104857600 bytes"), "{}", long[0].text);
    assert_eq!(r.n_examples, 10);
    assert_eq!(r.stats.n_lines, 11);
}

#[test]
fn nul_bytes_and_control_characters() {
    let mut text: Vec<u8> = (0..10)
        .flat_map(|i| (sft_line(i) + "\n").into_bytes())
        .collect();
    text.extend_from_slice(b"\0\n{\"messages\":\0}\n\x01\x02\x03\n");
    let r = validate(&text, None);
    assert_eq!(
        of_code(&r, Code::InvalidJson)
            .iter()
            .map(|i| i.line)
            .collect::<Vec<_>>(),
        vec![Some(11), Some(12), Some(13)]
    );
}

#[test]
fn crlf_bom_and_missing_final_newline() {
    let body: Vec<String> = (0..10).map(sft_line).collect();
    let text = format!("\u{feff}{}", body.join("\r\n"));
    let r = validate(text.as_bytes(), Some(Method::Sft));
    assert!(r.ok, "{:#?}", r.errors);
    assert_eq!(r.n_examples, 10);
}

#[test]
fn a_bom_later_in_the_file_is_an_error_not_a_panic() {
    let text = format!("{}\n\u{feff}{}\n", sft_line(0), sft_line(1));
    let r = validate(text.as_bytes(), None);
    assert_eq!(of_code(&r, Code::InvalidJson)[0].line, Some(2));
}

#[test]
fn deep_nesting_inside_messages() {
    let deep = format!(
        "{{\"messages\":[{{\"role\":\"user\",\"content\":{}1{}}}]}}",
        "[".repeat(200_000),
        "]".repeat(200_000)
    );
    let r = validate(deep.as_bytes(), None);
    assert_eq!(of_code(&r, Code::InvalidJson).len(), 1);
}

#[test]
fn a_reader_that_fails_midway_reports_read_error() {
    struct Failing(usize);
    impl Read for Failing {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if self.0 == 0 {
                return Err(std::io::Error::other("disk on fire"));
            }
            self.0 -= 1;
            let line = b"{\"messages\":[]}\n";
            buf[..line.len()].copy_from_slice(line);
            Ok(line.len())
        }
    }
    let r = validate_reader(
        std::io::BufReader::with_capacity(64, Failing(3)),
        &ValidateOptions::default(),
        None,
    );
    assert_eq!(of_code(&r, Code::ReadError).len(), 1);
    assert_eq!(of_code(&r, Code::MissingMessagesList).len(), 3);
}

#[test]
fn line_reader_is_usable_directly() {
    let mut lines = hone_data::lines::LineReader::new(&b"a\r\nb"[..], 10);
    assert_eq!(lines.next_line().unwrap().unwrap().bytes, b"a");
    assert_eq!(lines.next_line().unwrap().unwrap().bytes, b"b");
    assert!(lines.next_line().unwrap().is_none());
}
