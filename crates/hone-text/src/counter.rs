//! hone-data's token counting on a model's tokenizer and chat template.

/// hone-data's [`TokenCounter`](hone_data::TokenCounter) on a model's
/// tokenizer and chat template, through the count-only path: the numbers
/// `encode_chat` / `encode_preference` give, which are what training sees.
#[derive(Debug, Clone)]
pub struct ChatTokenCounter {
    pub chat: crate::ChatTokenizer,
    pub context_length: usize,
}

impl hone_data::TokenCounter for ChatTokenCounter {
    fn count_sft(
        &self,
        ex: &hone_data::SftExample,
    ) -> std::result::Result<hone_data::TokenCount, String> {
        let c = self
            .chat
            .count_chat(&ex.messages, ex.tools.as_ref())
            .map_err(|e| format!("{e:#}"))?;
        Ok(hone_data::TokenCount::sequence(c.total, c.trained))
    }

    fn count_preference(
        &self,
        ex: &hone_data::PreferenceExample,
    ) -> std::result::Result<hone_data::TokenCount, String> {
        let count = |answer| {
            self.chat
                .count_preference(&ex.input, answer, ex.tools.as_ref())
                .map_err(|e| format!("{e:#}"))
        };
        let (p, n) = (count(&ex.preferred)?, count(&ex.non_preferred)?);
        Ok(hone_data::TokenCount {
            total: p.total + n.total,
            trained: p.trained + n.trained,
            longest: p.total.max(n.total),
        })
    }

    fn context_length(&self) -> usize {
        self.context_length
    }
}

#[cfg(test)]
mod tests {
    use hone_data::{PreferenceExample, SftExample, TokenCounter};

    use super::*;
    use crate::{ChatMessage, Role};

    fn counter() -> ChatTokenCounter {
        ChatTokenCounter {
            chat: crate::testing::tiny_chat_tokenizer().unwrap(),
            context_length: 64,
        }
    }

    #[test]
    fn sft_counts_match_encode_chat() {
        let counter = counter();
        let ex: SftExample = serde_json::from_str(
            r#"{"messages":[{"role":"user","content":"hi there"},{"role":"assistant","content":"hello","weight":0},{"role":"user","content":"again"},{"role":"assistant","content":"hello again"}]}"#,
        )
        .unwrap();
        let c = counter.count_sft(&ex).unwrap();
        let enc = counter.chat.encode_chat(&ex.messages, None).unwrap();
        assert_eq!(
            (c.total, c.trained, c.longest),
            (enc.len(), enc.trained_token_count(), enc.len())
        );
        assert!(c.trained > 0 && c.trained < c.total);
        assert_eq!(counter.context_length(), 64);
    }

    /// A pair counts both answers; its longest sequence is the longer one.
    #[test]
    fn preference_counts_sum_both_answers() {
        let counter = counter();
        let ex = PreferenceExample {
            input: vec![ChatMessage::new(Role::User, "hi")],
            preferred: ChatMessage::new(Role::Assistant, "hello there friend"),
            non_preferred: ChatMessage::new(Role::Assistant, "no"),
            tools: None,
        };
        let c = counter.count_preference(&ex).unwrap();
        let p = counter
            .chat
            .encode_preference(&ex.input, &ex.preferred, ex.tools.as_ref())
            .unwrap();
        let n = counter
            .chat
            .encode_preference(&ex.input, &ex.non_preferred, ex.tools.as_ref())
            .unwrap();
        assert_eq!(c.total, p.len() + n.len());
        assert_eq!(c.trained, p.trained_token_count() + n.trained_token_count());
        assert_eq!(c.longest, p.len().max(n.len()));
    }
}
