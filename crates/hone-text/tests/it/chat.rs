//! Chat encoding on the tiny vocabulary: loss masks, prefix stability,
//! templates, and loading paths. Fast, no model file needed.

use hone_text::testing::{
    tiny_chat_tokenizer, tiny_gguf_content, write_tiny_gguf, SMOLLM2_TEMPLATE,
};
use hone_text::{ChatMessage, ChatTemplate, ChatTokenizer, Error, Role, Tokenizer};
use serde_json::json;

fn msg(role: Role, content: &str) -> ChatMessage {
    ChatMessage::new(role, content)
}

fn conversation() -> Vec<ChatMessage> {
    vec![
        msg(Role::System, "Be brief."),
        msg(Role::User, "Hi"),
        msg(Role::Assistant, "Hello world"),
        msg(Role::User, "What is the capital?"),
        msg(Role::Assistant, "Paris, café ✓"),
    ]
}

fn ct() -> ChatTokenizer {
    tiny_chat_tokenizer().expect("tiny tokenizer")
}

#[test]
fn im_end_after_each_trained_turn_is_inside_the_mask() {
    let ct = ct();
    let enc = ct.encode_chat(&conversation(), None).unwrap();
    let im_end = ct.tokenizer.token_to_id("<|im_end|>").unwrap();
    let trained_im_ends = enc
        .ids
        .iter()
        .zip(&enc.loss_mask)
        .filter(|(&id, &m)| id == im_end && m)
        .count();
    assert_eq!(
        trained_im_ends, 2,
        "one trained <|im_end|> per assistant turn"
    );
    // ...and the newline after it is not trained.
    let nl = ct.tokenizer.encode("\n").unwrap()[0];
    for (i, (&id, &m)) in enc.ids.iter().zip(&enc.loss_mask).enumerate() {
        if id == nl && i > 0 && enc.ids[i - 1] == im_end {
            assert!(!m, "newline after <|im_end|> at {i} is trained");
        }
    }
}

#[test]
fn weight_zero_turns_are_out_of_the_mask() {
    let ct = ct();
    let mut conv = conversation();
    conv[2].weight = Some(0);
    let enc = ct.encode_chat(&conv, None).unwrap();
    assert_eq!(
        ct.tokenizer.decode(&enc.trained_ids()).unwrap(),
        "Paris, café ✓<|im_end|>"
    );
}

#[test]
fn system_and_user_tokens_are_never_trained() {
    let ct = ct();
    let conv = conversation();
    let rendered = ct.render_with_spans(&conv, None).unwrap();
    let enc = ct.encode_rendered(&rendered).unwrap();
    let offsets = ct
        .tokenizer
        .encode_with_offsets(&rendered.text)
        .unwrap()
        .offsets;
    for span in rendered.spans.iter().filter(|s| s.role != Role::Assistant) {
        assert!(span.trained_range.is_none());
        for (o, &m) in offsets.iter().zip(&enc.loss_mask) {
            if span.range.contains(&o.start) {
                assert!(!m, "{:?} token at {o:?} is trained", span.role);
            }
        }
    }
}

#[test]
fn masked_tokens_decode_to_assistant_contents_plus_im_end() {
    let ct = ct();
    let enc = ct.encode_chat(&conversation(), None).unwrap();
    assert_eq!(
        ct.tokenizer.decode(&enc.trained_ids()).unwrap(),
        "Hello world<|im_end|>Paris, café ✓<|im_end|>"
    );
    assert_eq!(enc.loss_mask.len(), enc.ids.len());
    assert_eq!(enc.trained_token_count(), enc.trained_ids().len());
}

#[test]
fn inference_prompt_is_a_byte_prefix_of_the_training_render() {
    // Peers' bug class 2: train and serve templates drift apart.
    let ct = ct();
    let conv = conversation();
    let rendered = ct.render_with_spans(&conv, None).unwrap();
    let full = ct.encode_chat(&conv, None).unwrap();
    for (i, m) in conv
        .iter()
        .enumerate()
        .filter(|(_, m)| m.role == Role::Assistant)
    {
        let prompt_text = ct.template.render(&conv[..i], true, None).unwrap();
        assert!(
            rendered.text.starts_with(&prompt_text),
            "prompt before message {i}"
        );
        let trained = rendered.spans[i].trained_range.clone().unwrap();
        assert_eq!(trained.start, prompt_text.len());
        assert_eq!(
            &rendered.text[trained.clone()],
            format!("{}<|im_end|>", m.content)
        );
        let prompt_ids = ct.encode_prompt(&conv[..i], None).unwrap();
        assert_eq!(
            &full.ids[..prompt_ids.len()],
            &prompt_ids[..],
            "token prefix before message {i}"
        );
        assert!(
            full.loss_mask[prompt_ids.len()],
            "first answer token is trained"
        );
        // Exactly the earlier trained turns are trained inside this prompt.
        let trained_before = full.loss_mask[..prompt_ids.len()]
            .iter()
            .filter(|&&m| m)
            .count();
        let expected_before: usize = conv[..i]
            .iter()
            .filter(|m| m.is_trained())
            .map(|m| {
                ct.tokenizer
                    .encode(&format!("{}<|im_end|>", m.content))
                    .unwrap()
                    .len()
            })
            .sum();
        assert_eq!(
            trained_before, expected_before,
            "trained tokens before message {i}"
        );
    }
}

#[test]
fn spans_tile_the_rendered_text() {
    let ct = ct();
    let rendered = ct.render_with_spans(&conversation(), None).unwrap();
    let mut at = 0;
    for (i, s) in rendered.spans.iter().enumerate() {
        assert_eq!(s.message_index, i);
        assert_eq!(s.range.start, at);
        at = s.range.end;
    }
    assert_eq!(at, rendered.text.len());
}

#[test]
fn preference_mask_covers_only_the_answer_and_its_end_of_turn() {
    let ct = ct();
    let prompt = vec![
        msg(Role::User, "Hi"),
        msg(Role::Assistant, "Hello"),
        msg(Role::User, "the capital?"),
    ];
    let mut answer = msg(Role::Assistant, "Paris");
    answer.weight = Some(0); // weight is irrelevant for DPO answers
    let enc = ct.encode_preference(&prompt, &answer, None).unwrap();
    assert_eq!(
        ct.tokenizer.decode(&enc.trained_ids()).unwrap(),
        "Paris<|im_end|>"
    );
    let prompt_ids = ct.encode_prompt(&prompt, None).unwrap();
    assert_eq!(&enc.ids[..prompt_ids.len()], &prompt_ids[..]);
    assert!(matches!(
        ct.encode_preference(&prompt, &msg(Role::User, "x"), None),
        Err(Error::InvalidConversation(_))
    ));
}

#[test]
fn prefix_unstable_template_is_rejected_with_a_clear_error() {
    // Renders only the last message: earlier text changes as messages are added.
    let src = "{{ messages[-1]['content'] }}";
    let tok = ct().tokenizer;
    let ct = ChatTokenizer::new(tok, ChatTemplate::new(src, "", "<|im_end|>").unwrap());
    let err = ct.encode_chat(&conversation(), None).unwrap_err();
    assert!(
        matches!(
            err,
            Error::NotPrefixStable {
                message_index: 1,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("message 1"), "{err}");
}

#[test]
fn raise_exception_message_reaches_the_error() {
    let src = "{% if messages[0]['role'] != 'user' %}{{ raise_exception('Conversations must start with user') }}{% endif %}";
    let t = ChatTemplate::new(src, "", "").unwrap();
    let err = t
        .render(&[msg(Role::Assistant, "x")], false, None)
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("Conversations must start with user"),
        "{err}"
    );
}

#[test]
fn template_syntax_error_is_reported_at_load() {
    let err = ChatTemplate::new("{% for m in messages %}", "", "").unwrap_err();
    assert!(matches!(err, Error::Template(_)), "{err}");
}

#[test]
fn tools_and_tool_call_fields_reach_the_template() {
    let src = "{% if tools %}{{ tools | tojson }}\n{% endif %}{% for m in messages %}{{ m.role }}{% if m.name is defined %}({{ m.name }}){% endif %}:{{ m.content }}{% if m.tool_calls %}{{ m.tool_calls | tojson }}{% endif %}{% if m.tool_call_id %}[{{ m.tool_call_id }}]{% endif %}{{ '\\n' }}{% endfor %}";
    let t = ChatTemplate::new(src, "", "").unwrap();
    // Keys in sorted order: hone-data's serde_json has no `preserve_order`,
    // so maps arrive sorted (see the crate report).
    let tools =
        json!([{"function": {"description": "a <b> & 'c'", "name": "f"}, "type": "function"}]);
    let mut call = msg(Role::Assistant, "");
    call.tool_calls = Some(
        json!([{"function": {"arguments": "{}", "name": "f"}, "id": "c1", "type": "function"}]),
    );
    let mut result = msg(Role::Tool, "42");
    result.tool_call_id = Some("c1".into());
    result.name = Some("f".into());
    // A call's `arguments` string reaches the template decoded to an object, as
    // transformers and vLLM pass it (templates such as Qwen's `tojson` it).
    let out = t
        .render(&[msg(Role::User, "go"), call, result], false, Some(&tools))
        .unwrap();
    assert_eq!(
        out,
        "[{\"function\": {\"description\": \"a <b> & 'c'\", \"name\": \"f\"}, \"type\": \"function\"}]\n\
         user:go\n\
         assistant:[{\"function\": {\"arguments\": {}, \"name\": \"f\"}, \"id\": \"c1\", \"type\": \"function\"}]\n\
         tool(f):42[c1]\n"
    );
}

#[test]
fn python_string_methods_and_hf_whitespace_rules_work() {
    // pycompat methods, trim_blocks and lstrip_blocks as transformers sets them.
    let src = "{% for m in messages %}\n    {{ m.content.strip().upper() }}|{{ m['role'].startswith('us') }}\n{% endfor %}{{ bos_token }}{{ eos_token }}";
    let t = ChatTemplate::new(src, "<s>", "</s>").unwrap();
    let out = t.render(&[msg(Role::User, "  hi ")], false, None).unwrap();
    // Python prints booleans capitalised, and so must we.
    assert_eq!(out, "    HI|True\n<s></s>");
}

#[test]
fn chatml_fallback_when_the_gguf_has_no_template() {
    let ct = ChatTokenizer::from_gguf_content(&tiny_gguf_content(None).unwrap()).unwrap();
    assert_eq!(ct.template.source(), hone_text::CHATML_TEMPLATE);
    let text = ct
        .template
        .render(&[msg(Role::User, "Hi")], true, None)
        .unwrap();
    assert_eq!(
        text,
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    );
}

#[test]
fn gguf_file_and_hf_dir_give_the_same_encoding() {
    let dir = tempfile::tempdir().unwrap();
    let gguf = dir.path().join("tiny.gguf");
    write_tiny_gguf(&gguf, Some(SMOLLM2_TEMPLATE)).unwrap();
    let from_file = ChatTokenizer::from_gguf(&gguf).unwrap();
    from_file
        .tokenizer
        .inner()
        .save(dir.path().join("tokenizer.json"), false)
        .unwrap();
    let config = json!({"bos_token": "<|im_start|>", "eos_token": {"content": "<|im_end|>"}, "chat_template": SMOLLM2_TEMPLATE});
    std::fs::write(dir.path().join("tokenizer_config.json"), config.to_string()).unwrap();
    let from_dir = ChatTokenizer::from_hf_dir(dir.path()).unwrap();
    assert_eq!(from_dir.tokenizer.eos_id(), 2);
    assert_eq!(from_dir.tokenizer.bos_id(), Some(1));
    let conv = conversation();
    assert_eq!(
        from_file.encode_chat(&conv, None).unwrap(),
        from_dir.encode_chat(&conv, None).unwrap()
    );
}

#[test]
fn missing_gguf_metadata_names_the_key() {
    let content = tiny_gguf_content(None).unwrap();
    let mut broken = content;
    broken.metadata.remove("tokenizer.ggml.merges");
    let err = Tokenizer::from_gguf_content(&broken).unwrap_err();
    assert!(err.to_string().contains("tokenizer.ggml.merges"), "{err}");
}

#[test]
fn chat_tokenizer_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<ChatTokenizer>();
    assert_send_sync::<Tokenizer>();
    assert_send_sync::<hone_text::IncrementalDecoder>();
}
