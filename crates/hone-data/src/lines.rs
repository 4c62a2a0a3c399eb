//! Reading JSONL as raw byte lines, safely.
//!
//! A hostile file must not make us allocate without bound or give up: a
//! 100 MB line is read through and skipped after keeping only `max_len`
//! bytes; invalid UTF-8 is left to the caller to report per line; CRLF
//! endings, a UTF-8 BOM on the first line, and a missing final newline are
//! all accepted.

use std::io::{self, BufRead};

/// One line of input, without its line terminator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawLine {
    /// 1-based line number.
    pub number: usize,
    /// The line's bytes (at most `max_len` of them; see `full_len`).
    pub bytes: Vec<u8>,
    /// The line's real length in bytes. Larger than `bytes.len()` when the
    /// line was too long and cut.
    pub full_len: usize,
}

impl RawLine {
    /// Whether the line was longer than the reader's limit.
    pub fn is_truncated(&self) -> bool {
        self.full_len > self.bytes.len()
    }

    /// Whether the line holds only ASCII whitespace.
    pub fn is_blank(&self) -> bool {
        !self.is_truncated() && self.bytes.iter().all(u8::is_ascii_whitespace)
    }
}

/// Splits a reader into [`RawLine`]s on `\n`.
pub struct LineReader<R> {
    inner: R,
    max_len: usize,
    number: usize,
    done: bool,
}

const BOM: &[u8] = b"\xEF\xBB\xBF";

impl<R: BufRead> LineReader<R> {
    /// Lines longer than `max_len` bytes are cut to `max_len` (and reported
    /// by the caller as too long); the rest of them is read and dropped.
    pub fn new(inner: R, max_len: usize) -> Self {
        LineReader {
            inner,
            max_len,
            number: 0,
            done: false,
        }
    }

    /// The next line, `None` at the end of input.
    pub fn next_line(&mut self) -> io::Result<Option<RawLine>> {
        if self.done {
            return Ok(None);
        }
        let mut bytes = Vec::new();
        let mut full_len = 0usize;
        let mut saw_any = false;
        loop {
            let available = match self.inner.fill_buf() {
                Ok(b) => b,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if available.is_empty() {
                self.done = true;
                if !saw_any {
                    return Ok(None);
                }
                break;
            }
            saw_any = true;
            let (chunk, consumed, at_end) = match available.iter().position(|&b| b == b'\n') {
                Some(i) => (&available[..i], i + 1, true),
                None => (available, available.len(), false),
            };
            full_len += chunk.len();
            let room = self.max_len.saturating_sub(bytes.len());
            bytes.extend_from_slice(&chunk[..chunk.len().min(room)]);
            self.inner.consume(consumed);
            if at_end {
                break;
            }
        }
        self.number += 1;
        if bytes.last() == Some(&b'\r') && full_len == bytes.len() {
            bytes.pop();
            full_len -= 1;
        }
        if self.number == 1 && bytes.starts_with(BOM) {
            bytes.drain(..BOM.len());
            full_len -= BOM.len();
        }
        Ok(Some(RawLine {
            number: self.number,
            bytes,
            full_len,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(input: &[u8], max: usize) -> Vec<RawLine> {
        let mut r = LineReader::new(io::BufReader::with_capacity(7, input), max);
        let mut out = Vec::new();
        while let Some(l) = r.next_line().unwrap() {
            out.push(l);
        }
        out
    }

    #[test]
    fn crlf_bom_and_no_final_newline() {
        let got = lines(b"\xEF\xBB\xBF{\"a\":1}\r\n\r\nlast", 100);
        let texts: Vec<&[u8]> = got.iter().map(|l| l.bytes.as_slice()).collect();
        assert_eq!(texts, vec![&b"{\"a\":1}"[..], b"", b"last"]);
        assert_eq!(
            got.iter().map(|l| l.number).collect::<Vec<_>>(),
            vec![1, 2, 3]
        );
        assert!(got[1].is_blank());
    }

    #[test]
    fn final_newline_gives_no_extra_line() {
        assert_eq!(lines(b"a\nb\n", 100).len(), 2);
        assert!(lines(b"", 100).is_empty());
    }

    #[test]
    fn long_line_is_cut_and_the_next_line_still_read() {
        let mut input = vec![b'x'; 1000];
        input.extend_from_slice(b"\nok\n");
        let got = lines(&input, 16);
        assert_eq!(got.len(), 2);
        assert!(got[0].is_truncated());
        assert_eq!((got[0].bytes.len(), got[0].full_len), (16, 1000));
        assert_eq!(got[1].bytes, b"ok");
    }
}
