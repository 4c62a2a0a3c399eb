//! `--chat-template FILE` ([`OpenOptions::chat_template`]): the file's
//! template replaces the model's wherever the model is opened, so prompts
//! and token counts change with it; the origin says which template is used;
//! a bad file is an error that names it.

use hone_model::registry::resolve_path;
use hone_model::testing::{write_tiny_model, TinySpec};
use hone_model::{ChatEngine, OpenOptions, WeightPath};
use hone_text::{ChatMessage, Role, TemplateOrigin};

fn chat() -> Vec<ChatMessage> {
    vec![
        ChatMessage::new(Role::User, "Hello there"),
        ChatMessage::new(Role::Assistant, "Hi."),
    ]
}

#[test]
fn a_template_file_replaces_the_models_template_for_counts_and_prompts() {
    let dir = tempfile::tempdir().unwrap();
    let (gguf, _) = write_tiny_model(dir.path(), &TinySpec::default()).unwrap();
    let resolved = resolve_path(&gguf).unwrap();
    let own = resolved.open().unwrap();
    assert_eq!(own.tokenizer.template.origin(), &TemplateOrigin::Model);

    // A plain format with the tiny vocabulary's end-of-turn token.
    let file = dir.path().join("plain.jinja");
    std::fs::write(
        &file,
        "{% for m in messages %}### {{ m['role'] }}: {{ m['content'] }}<|im_end|>{% endfor %}\
         {% if add_generation_prompt %}### assistant: {% endif %}",
    )
    .unwrap();
    let opts = OpenOptions {
        chat_template: Some(file.clone()),
    };
    let custom = resolved.open_with(&opts).unwrap();
    assert_eq!(
        custom.tokenizer.template.origin(),
        &TemplateOrigin::File(file.clone())
    );
    assert!(custom
        .tokenizer
        .template
        .origin()
        .to_string()
        .contains("plain.jinja"));
    let rendered = custom
        .tokenizer
        .template
        .render(&chat(), false, None)
        .unwrap();
    assert_eq!(
        rendered,
        "### user: Hello there<|im_end|>### assistant: Hi.<|im_end|>"
    );

    // Token counts (what `hone data stats` and training see) follow the file.
    let (a, b) = (own.token_counter(), custom.token_counter());
    let (ca, cb) = (
        a.chat.count_chat(&chat(), None).unwrap(),
        b.chat.count_chat(&chat(), None).unwrap(),
    );
    assert_ne!(ca.total, cb.total, "{ca:?} vs {cb:?}");
    // The end-of-turn token still closes the trained assistant turn.
    let enc = b.chat.encode_chat(&chat(), None).unwrap();
    let eot = b.chat.tokenizer.token_to_id("<|im_end|>").unwrap();
    assert_eq!(enc.trained_ids().last(), Some(&eot));

    // The loaded engine (chat, eval, serve) renders prompts with it too.
    let engine = ChatEngine::load_with(&resolved, WeightPath::F32, &opts).unwrap();
    let prompt = engine.encode_prompt(&chat()[..1], None).unwrap();
    let want = engine
        .tokenizer
        .tokenizer
        .encode("### user: Hello there<|im_end|>### assistant: ")
        .unwrap();
    assert_eq!(prompt, want);
}

#[test]
fn a_bad_template_file_is_an_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let (gguf, _) = write_tiny_model(dir.path(), &TinySpec::default()).unwrap();
    let resolved = resolve_path(&gguf).unwrap();
    let file = dir.path().join("broken.jinja");
    std::fs::write(&file, "{% for m in messages %}{{ m['content'] }").unwrap();
    let opts = OpenOptions {
        chat_template: Some(file.clone()),
    };
    let err = resolved.open_with(&opts).unwrap_err().to_string();
    assert!(err.contains("broken.jinja"), "{err}");
    assert!(
        err.contains("syntax error") || err.contains("unexpected"),
        "{err}"
    );

    let missing = dir.path().join("nope.jinja");
    let opts = OpenOptions {
        chat_template: Some(missing),
    };
    let err = resolved.open_with(&opts).unwrap_err().to_string();
    assert!(err.contains("nope.jinja"), "{err}");
}
