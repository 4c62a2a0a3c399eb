//! Stored chat completions (`store: true` on `POST /v1/chat/completions`):
//! the record kept per completion and the [`CompletionStore`] operations.
//!
//! A completion belongs to the project of the key that made it and is
//! read through a [`Scope`] like every other object: another project's
//! completion is a 404, and a cursor naming one is a bad cursor. The SQLite
//! implementation is `sqlite/completions.rs`.

use super::{Page, PageRequest, Scope, StoreResult};
use crate::api::{Metadata, StoreMessage, StoredCompletion};

/// A stored completion and what only the server needs beside it.
#[derive(Debug, Clone, PartialEq)]
pub struct CompletionRecord {
    /// The answer as sent, with its metadata.
    pub completion: StoredCompletion,
    /// The request's messages, in order.
    pub messages: Vec<StoreMessage>,
    /// The project of the key that made it.
    pub project: String,
}

/// Which completions a list shows: all of them, or those of one model
/// and/or with every given metadata pair.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CompletionFilter {
    pub model: Option<String>,
    pub metadata: Metadata,
}

/// Stored completions. A supertrait of [`super::Store`], so that every
/// store keeps them.
pub trait CompletionStore {
    fn insert_completion(&self, rec: &CompletionRecord) -> StoreResult<()>;
    fn get_completion(&self, scope: &Scope, id: &str) -> StoreResult<CompletionRecord>;
    /// Completions matching `filter`, in creation order (`page.order`).
    fn list_completions(
        &self,
        scope: &Scope,
        filter: &CompletionFilter,
        page: &PageRequest,
    ) -> StoreResult<Page<StoredCompletion>>;
    /// Replaces a completion's metadata; the updated completion.
    fn update_completion_metadata(
        &self,
        scope: &Scope,
        id: &str,
        metadata: &Metadata,
    ) -> StoreResult<StoredCompletion>;
    fn delete_completion(&self, scope: &Scope, id: &str) -> StoreResult<()>;
}

/// One page of `items` (in their stored order) as `page` asks: reversed for
/// `desc`, after the item whose id is `page.after` (which must be one of
/// them). For lists kept inside one row, such as a completion's messages.
pub fn page_of<T: Clone>(
    items: &[T],
    id: impl Fn(&T) -> &str,
    page: &PageRequest,
) -> StoreResult<Page<T>> {
    let mut ordered: Vec<&T> = items.iter().collect();
    if page.order == super::Order::Desc {
        ordered.reverse();
    }
    let start = match &page.after {
        None => 0,
        Some(after) => {
            let at = ordered.iter().position(|x| id(x) == after);
            at.ok_or_else(|| super::StoreError::BadCursor(after.clone()))? + 1
        }
    };
    let limit = page.limit.max(1) as usize;
    let rest = &ordered[start..];
    Ok(Page {
        data: rest.iter().take(limit).map(|x| (*x).clone()).collect(),
        has_more: rest.len() > limit,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Order;

    #[test]
    fn page_of_pages_both_ways_and_refuses_a_foreign_cursor() {
        let items: Vec<String> = (0..5).map(|i| format!("m-{i}")).collect();
        let req = |after: Option<&str>, order| PageRequest {
            after: after.map(str::to_string),
            limit: 2,
            order,
        };
        let p = page_of(&items, |s| s, &req(None, Order::Asc)).unwrap();
        assert_eq!(
            (p.data, p.has_more),
            (vec!["m-0".into(), "m-1".into()], true)
        );
        let p = page_of(&items, |s| s, &req(Some("m-2"), Order::Asc)).unwrap();
        assert_eq!(
            (p.data, p.has_more),
            (vec!["m-3".into(), "m-4".into()], false)
        );
        let p = page_of(&items, |s| s, &req(Some("m-2"), Order::Desc)).unwrap();
        assert_eq!(
            (p.data, p.has_more),
            (vec!["m-1".into(), "m-0".into()], false)
        );
        assert!(page_of(&items, |s| s, &req(Some("x"), Order::Asc)).is_err());
    }
}
