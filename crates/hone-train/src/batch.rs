//! Turning tokenised examples (hone-text's [`EncodedChat`]: ids plus loss mask) into
//! training batches: the next-token shift, padding or packing, the tensors the model
//! takes, and a deterministic order per epoch.
//!
//! The order of an epoch is a pure function of `(seed, epoch)`, so the data
//! cursor of a checkpoint is just `(epoch, batch index)`: resuming needs no
//! hidden iterator state, and a resumed run sees exactly the batches an
//! uninterrupted one would have.

use candle_core::{Device, Tensor};
use hone_model::PackedLayout;
use hone_text::EncodedChat;

use crate::error::Result;
use crate::rng::TrainRng;

/// A padded batch in row-major `(batch, seq_len)` layout, already shifted:
/// position `j` of row `i` predicts `targets[i * seq_len + j]` from
/// `input_ids[i * seq_len ..= i * seq_len + j]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    pub batch: usize,
    pub seq_len: usize,
    pub input_ids: Vec<u32>,
    pub targets: Vec<u32>,
    /// 1.0 where the target counts in the loss, 0.0 for prompt tokens and
    /// padding.
    pub mask: Vec<f32>,
    /// Number of 1.0 entries in `mask`.
    pub n_trained: usize,
    /// Set when rows hold several examples ([`Batch::packed`]).
    pub packed: Option<PackedLayout>,
}

impl Batch {
    /// Builds a batch from examples, padding with `pad_id` to the longest.
    /// Examples shorter than two tokens contribute only padding.
    pub fn from_examples(examples: &[&EncodedChat], pad_id: u32) -> Batch {
        let seq_len = examples
            .iter()
            .map(|e| e.ids.len().saturating_sub(1))
            .max()
            .unwrap_or(0)
            .max(1);
        let batch = examples.len();
        let mut b = Batch {
            batch,
            seq_len,
            input_ids: vec![pad_id; batch * seq_len],
            targets: vec![pad_id; batch * seq_len],
            mask: vec![0.0; batch * seq_len],
            n_trained: 0,
            packed: None,
        };
        for (row, ex) in examples.iter().enumerate() {
            b.fill_at(row * b.seq_len, ex);
        }
        b
    }

    /// Packs examples into as few rows of at most `row_len` shifted positions as
    /// first-fit allows (in the given order, so deterministic), padding the rows to
    /// the fullest one. Each example keeps RoPE positions from 0 and attends only
    /// within itself ([`PackedLayout`]), so the loss equals the unpacked batch's.
    /// An example longer than `row_len` gets a row of its own.
    pub fn packed(examples: &[&EncodedChat], pad_id: u32, row_len: usize) -> Batch {
        let lens: Vec<usize> = examples
            .iter()
            .map(|e| e.ids.len().saturating_sub(1))
            .collect();
        let (rows, fill) = first_fit(&lens, row_len.max(1));
        let seq_len = fill.iter().copied().max().unwrap_or(0).max(1);
        let batch = fill.len().max(1);
        let n = batch * seq_len;
        let mut b = Batch {
            batch,
            seq_len,
            input_ids: vec![pad_id; n],
            targets: vec![pad_id; n],
            mask: vec![0.0; n],
            n_trained: 0,
            packed: None,
        };
        // Padding: position 0, attending only to itself.
        let mut layout = PackedLayout {
            positions: vec![0; n],
            segment_starts: (0..n).map(|i| (i % seq_len) as u32).collect(),
        };
        for (ex, (row, col)) in examples.iter().zip(rows) {
            let start = row * seq_len + col;
            b.fill_at(start, ex);
            for j in 0..ex.ids.len().saturating_sub(1) {
                layout.positions[start + j] = j as u32;
                layout.segment_starts[start + j] = col as u32;
            }
        }
        b.packed = Some(layout);
        b
    }

    /// Writes the shifted ids, targets and mask of `ex` from flat index `start`.
    fn fill_at(&mut self, start: usize, ex: &EncodedChat) {
        let n = ex.ids.len().saturating_sub(1);
        let base = start;
        for j in 0..n {
            self.input_ids[base + j] = ex.ids[j];
            self.targets[base + j] = ex.ids[j + 1];
            if ex.loss_mask.get(j + 1).copied().unwrap_or(false) {
                self.mask[base + j] = 1.0;
                self.n_trained += 1;
            }
        }
    }

    /// Token positions, padding included: what the model computes on.
    pub fn n_positions(&self) -> usize {
        self.batch * self.seq_len
    }
}

/// The batch as `(input_ids, targets, mask)` tensors of shape `(batch, seq_len)`.
pub fn to_tensors(b: &Batch) -> Result<(Tensor, Tensor, Tensor)> {
    let dev = Device::Cpu;
    let shape = (b.batch, b.seq_len);
    Ok((
        Tensor::from_slice(&b.input_ids, shape, &dev)?,
        Tensor::from_slice(&b.targets, shape, &dev)?,
        Tensor::from_slice(&b.mask, shape, &dev)?,
    ))
}

/// First-fit placement of items of `lens` into rows of capacity `cap`: each
/// item's `(row, column)`, and how full each row is. An item larger than `cap`
/// opens a row of its own.
fn first_fit(lens: &[usize], cap: usize) -> (Vec<(usize, usize)>, Vec<usize>) {
    let mut fill: Vec<usize> = Vec::new();
    let place = lens
        .iter()
        .map(|&len| {
            let row = match fill.iter().position(|&f| f + len <= cap) {
                Some(r) => r,
                None => {
                    fill.push(0);
                    fill.len() - 1
                }
            };
            let col = fill[row];
            fill[row] += len;
            (row, col)
        })
        .collect();
    (place, fill)
}

/// The example indices of one epoch, shuffled by `(seed, epoch)`.
pub fn epoch_order(n_examples: usize, seed: u64, epoch: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n_examples).collect();
    // Mix the epoch into the seed so every epoch has its own permutation.
    let mixed = seed ^ (epoch as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    TrainRng::from_seed(mixed).shuffle(&mut order);
    order
}

/// Number of optimizer steps in one epoch: one per `batch_size` examples,
/// counting a last partial batch.
pub fn batches_per_epoch(n_examples: usize, batch_size: usize) -> usize {
    n_examples.div_ceil(batch_size.max(1))
}

/// The example indices of batch `index` in `epoch`.
pub fn batch_indices(
    n_examples: usize,
    batch_size: usize,
    seed: u64,
    epoch: usize,
    index: usize,
) -> Vec<usize> {
    let order = epoch_order(n_examples, seed, epoch);
    let bs = batch_size.max(1);
    order.into_iter().skip(index * bs).take(bs).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(ids: &[u32], mask: &[bool]) -> EncodedChat {
        EncodedChat {
            ids: ids.to_vec(),
            loss_mask: mask.to_vec(),
        }
    }

    #[test]
    fn targets_are_shifted_and_padding_is_masked() {
        let a = ex(&[1, 2, 3, 4], &[false, false, true, true]);
        let b = ex(&[5, 6], &[false, true]);
        let batch = Batch::from_examples(&[&a, &b], 0);
        assert_eq!(batch.seq_len, 3);
        assert_eq!(batch.input_ids, vec![1, 2, 3, 5, 0, 0]);
        assert_eq!(batch.targets, vec![2, 3, 4, 6, 0, 0]);
        assert_eq!(batch.mask, vec![0.0, 1.0, 1.0, 1.0, 0.0, 0.0]);
        assert_eq!(batch.n_trained, 3);
        assert_eq!(a.trained_targets() + b.trained_targets(), 3);
    }

    #[test]
    fn truncation_cuts_ids_and_mask_together() {
        let mut a = ex(&[1, 2, 3, 4, 5], &[false, true, true, true, true]);
        assert_eq!(a.truncate(3), 2);
        assert_eq!(a.ids, vec![1, 2, 3]);
        assert_eq!(a.loss_mask, vec![false, true, true]);
        assert_eq!(a.truncate(10), 0);
    }

    #[test]
    fn epoch_order_is_a_deterministic_permutation_that_varies_by_epoch() {
        let e0 = epoch_order(50, 7, 0);
        assert_eq!(e0, epoch_order(50, 7, 0));
        assert_ne!(e0, epoch_order(50, 7, 1));
        assert_ne!(e0, epoch_order(50, 8, 0));
        let mut sorted = e0.clone();
        sorted.sort();
        assert_eq!(sorted, (0..50).collect::<Vec<_>>());
    }

    #[test]
    fn batches_cover_every_example_once_per_epoch() {
        let (n, bs) = (10, 4);
        assert_eq!(batches_per_epoch(n, bs), 3);
        let mut seen: Vec<usize> = (0..3).flat_map(|i| batch_indices(n, bs, 1, 2, i)).collect();
        seen.sort();
        assert_eq!(seen, (0..10).collect::<Vec<_>>());
    }
}
