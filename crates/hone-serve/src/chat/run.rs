//! Running a checked request: [`run_choices`] generates the `n` choices of
//! a [`ChatPlan`] one after the other (choice `i` with seed `seed + i`),
//! reports text and finishes as [`ChatEvent`]s, and counts tokens. The
//! handler turns the events into one JSON answer or SSE chunks.
//!
//! A client that goes away must not keep a core busy: the handler holds a
//! [`CancelOnDrop`](super::backend::CancelOnDrop) guard, and generation
//! checks the [`CancelFlag`] at every piece of text and between prompt
//! chunks (hone-model's `generate` asks with an empty piece; the engine loop
//! checks before every step), so a long prefill stops within one chunk.

use std::ops::ControlFlow;

use hone_model::generate::FinishReason as GenFinish;

use super::backend::{CancelFlag, ChatBackend, ChatError, ChatTarget, ChoiceUpdate};
use super::plan::ChatPlan;
use crate::api::{FinishReason, PromptTokensDetails, Usage};

/// One event of a run, in order: the text of choice `index` as it is
/// decoded, then its end.
#[derive(Debug, Clone, PartialEq)]
pub enum ChatEvent {
    Text { index: u32, text: String },
    Finish { index: u32, reason: FinishReason },
}

/// One finished choice.
#[derive(Debug, Clone, PartialEq)]
pub struct ChoiceOutput {
    pub text: String,
    pub finish_reason: FinishReason,
}

/// All choices of a request and their token counts (the prompt is
/// counted once, as OpenAI does for `n > 1`).
#[derive(Debug, Clone, PartialEq)]
pub struct ChatRun {
    pub choices: Vec<ChoiceOutput>,
    pub usage: Usage,
}

/// Generates the `n` choices of `plan` (choice `i` with seed `seed + i`;
/// the real backend runs them as rows of one batch), reporting events
/// through `emit`. Blocking. Stops early when `cancel` is set or `emit`
/// breaks.
pub fn run_choices(
    backend: &dyn ChatBackend,
    target: &ChatTarget,
    plan: &ChatPlan,
    cancel: &CancelFlag,
    emit: &mut dyn FnMut(ChatEvent) -> ControlFlow<()>,
) -> Result<ChatRun, ChatError> {
    let params: Vec<_> = (0..plan.n)
        .map(|i| {
            let mut p = plan.params.clone();
            p.seed = p.seed.wrapping_add(i as u64);
            p
        })
        .collect();
    // Prompt tokens each choice copied instead of computing.
    let mut cached = vec![0usize; params.len()];
    let mut on = |index: usize, update: ChoiceUpdate<'_>| {
        if cancel.is_cancelled() {
            return ControlFlow::Break(());
        }
        let slot = index;
        let index = index as u32;
        match update {
            ChoiceUpdate::Cached(n) => {
                if let Some(c) = cached.get_mut(slot) {
                    *c = n;
                }
                ControlFlow::Continue(())
            }
            // Generation asking, between prompt chunks, whether to go on.
            ChoiceUpdate::Text("") => ControlFlow::Continue(()),
            ChoiceUpdate::Text(text) => emit(ChatEvent::Text {
                index,
                text: text.to_string(),
            }),
            ChoiceUpdate::Done(g) => emit(ChatEvent::Finish {
                index,
                reason: finish_reason(g.finish_reason),
            }),
        }
    };
    let gens = backend.generate_choices(
        target,
        &plan.messages,
        plan.tool_list(),
        &params,
        cancel,
        &mut on,
    )?;
    let mut usage = Usage::default();
    if let Some(g) = gens.first() {
        usage.prompt_tokens = count(g.prompt_tokens);
        // The prompt is counted once (choice 0's); so are its cached tokens.
        usage.prompt_tokens_details = Some(PromptTokensDetails {
            cached_tokens: count(cached[0]),
        });
    }
    usage.completion_tokens = gens
        .iter()
        .fold(0u32, |n, g| n.saturating_add(count(g.completion_tokens)));
    usage.total_tokens = usage.prompt_tokens.saturating_add(usage.completion_tokens);
    let choices = gens
        .into_iter()
        .map(|g| ChoiceOutput {
            finish_reason: finish_reason(g.finish_reason),
            text: g.text,
        })
        .collect();
    Ok(ChatRun { choices, usage })
}

fn finish_reason(f: GenFinish) -> FinishReason {
    match f {
        GenFinish::Stop => FinishReason::Stop,
        GenFinish::Length => FinishReason::Length,
    }
}

fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use hone_model::generate::{Generation, GenerationParams};
    use hone_text::ChatMessage;
    use serde_json::json;

    use super::*;
    use crate::api::ChatCompletionRequest;
    use crate::chat::plan::plan;

    fn with(extra: serde_json::Value) -> ChatCompletionRequest {
        let mut v = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        serde_json::from_value(v).unwrap()
    }

    /// Echoes the seed and counts calls; says "stop" after `len` chars.
    struct Echo;

    impl ChatBackend for Echo {
        fn generate(
            &self,
            _: &ChatTarget,
            messages: &[ChatMessage],
            _: Option<&serde_json::Value>,
            params: &GenerationParams,
            on_text: &mut dyn FnMut(&str) -> ControlFlow<()>,
        ) -> Result<Generation, ChatError> {
            let text = format!("{}#{}", messages[0].content, params.seed);
            let mut out = String::new();
            for c in text.chars() {
                if on_text(&c.to_string()).is_break() {
                    break;
                }
                out.push(c);
            }
            Ok(Generation {
                completion_tokens: out.len(),
                text: out,
                token_ids: vec![],
                finish_reason: GenFinish::Stop,
                prompt_tokens: 3,
            })
        }
    }

    fn target() -> ChatTarget {
        ChatTarget {
            model: "m".into(),
            base: "m".into(),
            adapter: None,
        }
    }

    #[test]
    fn run_choices_seeds_each_choice_and_counts_the_prompt_once() {
        let mut p = plan(&with(json!({"n": 2, "seed": 10}))).unwrap();
        p.messages[0].content = "ab".into();
        let mut events = Vec::new();
        let run = run_choices(&Echo, &target(), &p, &CancelFlag::default(), &mut |e| {
            events.push(e);
            ControlFlow::Continue(())
        })
        .unwrap();
        let texts: Vec<_> = run.choices.iter().map(|c| c.text.as_str()).collect();
        assert_eq!(texts, vec!["ab#10", "ab#11"]);
        assert_eq!(run.usage.prompt_tokens, 3);
        assert_eq!(run.usage.completion_tokens, 10);
        assert_eq!(run.usage.total_tokens, 13);
        assert_eq!(
            events.last(),
            Some(&ChatEvent::Finish {
                index: 1,
                reason: FinishReason::Stop
            })
        );
    }

    /// Feeds a long prompt as hone-model's `generate` does: one empty piece
    /// between chunks, stopping when answered `Break`; counts the chunks.
    /// With `disconnect_at`, the client goes away (the flag is set, as the
    /// handler's guard does when dropped) during that chunk.
    #[derive(Default)]
    struct Prefill {
        chunks: std::sync::atomic::AtomicUsize,
        disconnect_at: Option<(usize, CancelFlag)>,
    }

    impl ChatBackend for Prefill {
        fn generate(
            &self,
            _: &ChatTarget,
            _: &[ChatMessage],
            _: Option<&serde_json::Value>,
            _: &GenerationParams,
            on_text: &mut dyn FnMut(&str) -> ControlFlow<()>,
        ) -> Result<Generation, ChatError> {
            for _ in 0..1000 {
                let n = self.chunks.fetch_add(1, Ordering::SeqCst) + 1;
                if let Some((at, flag)) = &self.disconnect_at {
                    if n == *at {
                        flag.cancel();
                    }
                }
                if on_text("").is_break() {
                    break;
                }
            }
            Ok(Generation {
                text: String::new(),
                token_ids: vec![],
                finish_reason: GenFinish::Stop,
                completion_tokens: 0,
                prompt_tokens: 64_000,
            })
        }
    }

    #[test]
    fn a_cancel_during_prefill_stops_at_the_next_chunk_and_emits_nothing() {
        let p = plan(&with(json!({"stream": true}))).unwrap();
        let mut events = Vec::new();
        // Not cancelled: the empty pieces are questions, never events.
        let backend = Prefill::default();
        run_choices(&backend, &target(), &p, &CancelFlag::default(), &mut |e| {
            events.push(e);
            ControlFlow::Continue(())
        })
        .unwrap();
        assert_eq!(backend.chunks.load(Ordering::SeqCst), 1000);
        assert!(
            matches!(events[..], [ChatEvent::Finish { .. }]),
            "{events:?}"
        );
        // The client goes away during chunk 3: no chunk after it runs.
        let cancel = CancelFlag::default();
        let backend = Prefill {
            disconnect_at: Some((3, cancel.clone())),
            ..Default::default()
        };
        events.clear();
        let run = run_choices(&backend, &target(), &p, &cancel, &mut |e| {
            events.push(e);
            ControlFlow::Continue(())
        })
        .unwrap();
        assert_eq!(backend.chunks.load(Ordering::SeqCst), 3);
        assert_eq!(run.usage.completion_tokens, 0);
        assert!(events.is_empty(), "{events:?}");
    }

    #[test]
    fn a_cancelled_run_stops_generating() {
        let p = plan(&with(json!({"n": 3}))).unwrap();
        let cancel = CancelFlag::default();
        let mut pieces = 0;
        let run = run_choices(&Echo, &target(), &p, &cancel, &mut |_| {
            pieces += 1;
            if pieces == 2 {
                cancel.cancel();
            }
            ControlFlow::Continue(())
        })
        .unwrap();
        assert_eq!(run.choices.len(), 1);
        assert_eq!(run.choices[0].text, "hi");
        drop(cancel.guard());
        assert!(cancel.is_cancelled());
    }
}
