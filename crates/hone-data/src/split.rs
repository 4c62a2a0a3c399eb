//! Deterministic train/validation split.
//!
//! The same input, fraction and seed always give the same two files, on any
//! machine and any version: the shuffle uses our own SplitMix64 rather than
//! a library RNG whose stream might change. Lines keep their original order
//! inside each output, and are copied byte for byte (line endings become
//! `\n`, a BOM is dropped, blank lines are skipped).
//!
//! Examples whose prompts are the same after normalisation (the near-duplicate
//! rule of `hone data validate`) go to the same side. Otherwise a copy of a
//! training prompt in the validation file would make validation loss and eval
//! pass rates look better than the model is. Lines that do not parse are
//! grouped alone.

use std::fs::File;
use std::io::{BufReader, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::lines::LineReader;
use crate::parse::{detect_method_value, parse_preference, parse_sft, LineIssues};
use crate::quality::{preference_keys, sft_keys};
use crate::types::Method;
use crate::DataError;

/// SplitMix64: tiny, well-distributed, and fixed forever.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0), without modulo bias.
    fn below(&mut self, n: u64) -> u64 {
        let zone = u64::MAX - u64::MAX % n;
        loop {
            let x = self.next();
            if x < zone {
                return x % n;
            }
        }
    }
}

/// How many of `n` items go to validation: `round(n × fraction)`, at least
/// 1 and leaving at least 1 for training when `n ≥ 2`.
pub fn n_valid(n: usize, fraction: f64) -> usize {
    if n < 2 {
        return 0;
    }
    ((n as f64 * fraction).round() as usize).clamp(1, n - 1)
}

/// Which of `n` items go to validation: a boolean per item.
pub fn split_mask(n: usize, fraction: f64, seed: u64) -> Result<Vec<bool>, DataError> {
    let groups: Vec<usize> = (0..n).collect();
    split_groups_mask(&groups, fraction, seed)
}

/// Like [`split_mask`], but items with the same group id go to the same side.
///
/// Groups are drawn in a seeded partial Fisher–Yates order until validation
/// holds at least `round(n × fraction)` items; a group that would leave
/// training empty is skipped. When every group is a single item this is
/// exactly [`split_mask`]'s choice, so splits of files without duplicate
/// prompts did not change when grouping was added.
pub fn split_groups_mask(
    group_of: &[usize],
    fraction: f64,
    seed: u64,
) -> Result<Vec<bool>, DataError> {
    if !(fraction > 0.0 && fraction < 1.0) {
        return Err(DataError::InvalidArgument(format!(
            "valid fraction must be between 0 and 1 (exclusive), got {fraction}"
        )));
    }
    let n = group_of.len();
    let k = n_valid(n, fraction);
    let members = group_members(group_of);
    let mut order: Vec<usize> = (0..members.len()).collect();
    let mut rng = SplitMix64(seed);
    let mut mask = vec![false; n];
    let mut taken = 0;
    let mut i = 0;
    while taken < k && i < order.len() {
        let j = i + rng.below((order.len() - i) as u64) as usize;
        order.swap(i, j);
        let group = &members[order[i]];
        if taken + group.len() < n {
            for &item in group {
                mask[item] = true;
            }
            taken += group.len();
        }
        i += 1;
    }
    Ok(mask)
}

/// The items of each group, groups numbered in order of first appearance.
fn group_members(group_of: &[usize]) -> Vec<Vec<usize>> {
    let mut index = std::collections::HashMap::new();
    let mut members: Vec<Vec<usize>> = Vec::new();
    for (item, g) in group_of.iter().enumerate() {
        let slot = *index.entry(*g).or_insert_with(|| {
            members.push(Vec::new());
            members.len() - 1
        });
        members[slot].push(item);
    }
    members
}

/// The normalised-prompt hash of a valid SFT or DPO line (the key that
/// `hone data validate` uses for near-duplicates); `None` for other lines.
fn prompt_key(line: &[u8]) -> Option<u64> {
    let value: serde_json::Value = serde_json::from_slice(line).ok()?;
    let mut issues = LineIssues::new(0);
    match detect_method_value(&value)? {
        Method::Sft => parse_sft(&value, &mut issues).map(|ex| sft_keys(&ex, line).prompt),
        Method::Dpo => {
            parse_preference(&value, &mut issues).map(|ex| preference_keys(&ex, line).prompt)
        }
    }
}

/// One group id per line: lines with equal prompt keys share one.
fn prompt_groups(lines: &[Vec<u8>]) -> (Vec<usize>, usize) {
    let mut by_key = std::collections::HashMap::new();
    let mut grouped = 0;
    let groups = lines
        .iter()
        .enumerate()
        .map(|(i, line)| match prompt_key(line) {
            Some(key) => {
                let first = *by_key.entry(key).or_insert(i);
                grouped += usize::from(first != i);
                first
            }
            None => i,
        })
        .collect();
    (groups, grouped)
}

/// Counts written by [`split_file`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitSummary {
    pub n_train: usize,
    pub n_valid: usize,
    pub n_blank_skipped: usize,
    /// Lines whose normalised prompt repeats an earlier line's, kept on that
    /// line's side.
    #[serde(default)]
    pub n_kept_with_duplicate_prompt: usize,
}

/// Splits the non-blank lines of `input` into `train_out` and `valid_out`.
/// Each output is written to a temporary file beside it and renamed into
/// place, so a failure never leaves a half-written file.
pub fn split_file(
    input: &Path,
    train_out: &Path,
    valid_out: &Path,
    fraction: f64,
    seed: u64,
) -> Result<SplitSummary, DataError> {
    let file = File::open(input).map_err(DataError::io(input))?;
    let mut reader = LineReader::new(BufReader::new(file), usize::MAX);
    let mut lines = Vec::new();
    let mut blank = 0;
    while let Some(line) = reader.next_line().map_err(DataError::io(input))? {
        if line.is_blank() {
            blank += 1;
        } else {
            lines.push(line.bytes);
        }
    }
    let (groups, grouped) = prompt_groups(&lines);
    let mask = split_groups_mask(&groups, fraction, seed)?;
    let (valid, train): (Vec<_>, Vec<_>) = lines.iter().zip(&mask).partition(|(_, v)| **v);
    write_lines(train_out, train.iter().map(|(l, _)| l.as_slice()))?;
    write_lines(valid_out, valid.iter().map(|(l, _)| l.as_slice()))?;
    Ok(SplitSummary {
        n_train: train.len(),
        n_valid: valid.len(),
        n_blank_skipped: blank,
        n_kept_with_duplicate_prompt: grouped,
    })
}

/// Writes lines atomically with the umask's mode ([`crate::atomic_file`]).
pub(crate) fn write_lines<'a>(
    path: &Path,
    lines: impl Iterator<Item = &'a [u8]>,
) -> Result<(), DataError> {
    crate::atomic_file::write_with(
        path,
        |tmp| {
            let file = std::fs::File::create(tmp)?;
            let mut w = std::io::BufWriter::new(file);
            for line in lines {
                w.write_all(line)?;
                w.write_all(b"\n")?;
            }
            w.flush()
        },
        |e| e,
    )
    .map_err(DataError::io(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_sized() {
        let a = split_mask(100, 0.1, 7).unwrap();
        assert_eq!(a, split_mask(100, 0.1, 7).unwrap());
        assert_ne!(a, split_mask(100, 0.1, 8).unwrap());
        assert_eq!(a.iter().filter(|v| **v).count(), 10);
    }

    #[test]
    fn small_inputs_keep_one_each() {
        assert_eq!(n_valid(2, 0.01), 1);
        assert_eq!(n_valid(2, 0.99), 1);
        assert_eq!(n_valid(1, 0.5), 0);
        assert!(split_mask(5, 0.0, 1).is_err());
        assert!(split_mask(5, 1.0, 1).is_err());
        assert!(split_mask(5, f64::NAN, 1).is_err());
    }

    #[test]
    fn singleton_groups_give_the_ungrouped_split() {
        let groups: Vec<usize> = (0..57).collect();
        for seed in 0..20 {
            assert_eq!(
                split_groups_mask(&groups, 0.2, seed).unwrap(),
                split_mask(57, 0.2, seed).unwrap()
            );
        }
    }

    #[test]
    fn a_group_never_straddles_the_split() {
        // 40 items in 10 groups of 4, interleaved.
        let groups: Vec<usize> = (0..40).map(|i| i % 10).collect();
        for seed in 0..50 {
            let mask = split_groups_mask(&groups, 0.1, seed).unwrap();
            for g in 0..10 {
                let sides: Vec<bool> = (0..40).filter(|i| i % 10 == g).map(|i| mask[i]).collect();
                assert!(
                    sides.iter().all(|s| *s == sides[0]),
                    "seed {seed} group {g}"
                );
            }
            let n_valid = mask.iter().filter(|v| **v).count();
            assert_eq!(n_valid, 4, "round(40 x 0.1) = 4 is one whole group");
        }
    }

    #[test]
    fn one_big_group_is_skipped_rather_than_emptying_training() {
        let groups = vec![0, 0, 0, 0, 1];
        let mask = split_groups_mask(&groups, 0.5, 3).unwrap();
        assert_eq!(mask, vec![false, false, false, false, true]);
    }

    #[test]
    fn seed_stream_is_pinned() {
        // Guards the promise that a seed means the same split forever.
        assert_eq!(SplitMix64(0).next(), 0xE220_A839_7B1D_CDAF);
    }

    /// Split files are data a user takes away: written with the umask's mode (0644
    /// under umask 022), not the 0600 of a temp file.
    #[cfg(unix)]
    #[test]
    fn split_files_get_the_umask_mode() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("all.jsonl");
        let lines: Vec<String> = (0..10).map(|i| format!("{{\"n\": {i}}}")).collect();
        std::fs::write(&input, lines.join("\n")).unwrap();
        let (t, v) = (dir.path().join("t.jsonl"), dir.path().join("v.jsonl"));
        split_file(&input, &t, &v, 0.2, 1).unwrap();
        let want = 0o666 & !crate::atomic_file::umask();
        for p in [&t, &v] {
            let mode = std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, want, "{}", p.display());
        }
        let n = |p: &Path| std::fs::read_to_string(p).unwrap().lines().count();
        assert_eq!((n(&t), n(&v)), (8, 2));
    }
}
