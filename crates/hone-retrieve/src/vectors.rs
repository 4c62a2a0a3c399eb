//! Cosine similarity top-K over a set of vectors, brute force: the one
//! ranking the corpus (chunks against a question) and hone-eval's few-shot
//! picker (examples against a case) both use.

/// Vectors kept at unit length, so a dot product is their cosine.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct VectorIndex {
    vectors: Vec<Vec<f32>>,
}

impl VectorIndex {
    /// Adds `v` (scaled to unit length here); its index is the count before.
    pub fn push(&mut self, v: Vec<f32>) {
        self.vectors.push(unit(v));
    }

    pub fn len(&self) -> usize {
        self.vectors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.vectors.is_empty()
    }

    /// The `k` entries most similar to `query` (unit length) as (index,
    /// cosine), best first; ties keep index order, so results are stable.
    pub fn top_k(&self, query: &[f32], k: usize) -> Vec<(usize, f32)> {
        let mut scored: Vec<(usize, f32)> = self
            .vectors
            .iter()
            .map(|v| dot(v, query))
            .enumerate()
            .collect();
        scored.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        scored.truncate(k);
        scored
    }
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// `v` scaled to unit length (a zero vector stays zero and scores 0).
pub fn unit(mut v: Vec<f32>) -> Vec<f32> {
    let norm = dot(&v, &v).sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_by_cosine_not_length_and_ties_keep_order() {
        let mut idx = VectorIndex::default();
        idx.push(vec![0.0, 10.0]); // 0: orthogonal to the query
        idx.push(vec![3.0, 3.0]); // 1: 45 degrees
        idx.push(vec![0.5, 0.0]); // 2: same direction, short
        idx.push(vec![2.0, 0.0]); // 3: same direction, long (tie with 2)
        idx.push(vec![0.0, 0.0]); // 4: zero vector scores 0
        let top = idx.top_k(&unit(vec![1.0, 0.0]), 3);
        let order: Vec<usize> = top.iter().map(|t| t.0).collect();
        assert_eq!(order, [2, 3, 1]);
        assert!((top[0].1 - 1.0).abs() < 1e-6 && (top[2].1 - 0.70710677).abs() < 1e-6);
        assert_eq!(
            idx.top_k(&[1.0, 0.0], 10).len(),
            5,
            "k beyond the size: all"
        );
        assert_eq!(idx.len(), 5);
    }
}
