//! An Ollama `Modelfile` for an export: `FROM` the GGUF (or the base GGUF plus
//! `ADAPTER` the LoRA GGUF), a `TEMPLATE` in Ollama's Go-template syntax, and a
//! `PARAMETER stop` per end-of-turn token.
//!
//! A Jinja chat template cannot be translated in general, so the `TEMPLATE` is written
//! for the two conversation formats hone's models use, recognised by their markers:
//! ChatML (`<|im_start|>`, SmolLM2 and Qwen) and Gemma's turns (`<start_of_turn>`).
//! For any other template it is left out with a comment: Ollama then falls back to the
//! GGUF's `tokenizer.chat_template`, which it matches against the templates it knows.
//! Template-specific defaults (SmolLM2's default system prompt) are not reproduced.

/// Ollama's ChatML template.
const CHATML: &str = r#"{{- if .System }}<|im_start|>system
{{ .System }}<|im_end|>
{{ end }}
{{- range .Messages }}<|im_start|>{{ .Role }}
{{ .Content }}<|im_end|>
{{ end }}<|im_start|>assistant
"#;

/// Gemma's turns (system text goes in the first user turn, as Gemma's template does).
const GEMMA: &str = r#"{{- if .System }}<start_of_turn>user
{{ .System }}<end_of_turn>
{{ end }}
{{- range .Messages }}<start_of_turn>{{ if eq .Role "assistant" }}model{{ else }}user{{ end }}
{{ .Content }}<end_of_turn>
{{ end }}<start_of_turn>model
"#;

/// The `Modelfile` text. `from` is the model GGUF (or the base GGUF when `adapter` is
/// given); `chat_template` the model's Jinja template (to recognise its format);
/// `stops` the end-of-turn token texts (duplicates and empty ones are dropped).
pub fn modelfile(
    from: &str,
    adapter: Option<&str>,
    chat_template: &str,
    stops: &[String],
) -> String {
    let mut out = String::from("# Ollama Modelfile written by `hone export`.\n");
    out += &format!("FROM {}\n", quote_path(from));
    if let Some(a) = adapter {
        out += &format!("ADAPTER {}\n", quote_path(a));
    }
    let mut stops: Vec<&str> = stops
        .iter()
        .map(String::as_str)
        .filter(|s| !s.is_empty())
        .collect();
    let template = if chat_template.contains("<|im_start|>") {
        stops.push("<|im_end|>");
        Some(CHATML)
    } else if chat_template.contains("<start_of_turn>") {
        stops.push("<end_of_turn>");
        Some(GEMMA)
    } else {
        None
    };
    match template {
        Some(t) => out += &format!("TEMPLATE \"\"\"{t}\"\"\"\n"),
        None => {
            out += "# No TEMPLATE: the chat template is neither ChatML nor Gemma's; Ollama\n";
            out += "# uses the GGUF's tokenizer.chat_template when it recognises it.\n";
        }
    }
    let mut seen = Vec::new();
    for s in stops {
        if !seen.contains(&s) {
            seen.push(s);
            out += &format!("PARAMETER stop {}\n", quote(s));
        }
    }
    out
}

/// A path as Ollama reads it: relative paths start with `./`.
fn quote_path(p: &str) -> String {
    if p.starts_with('/') || p.starts_with("./") || p.starts_with("../") {
        p.to_string()
    } else {
        format!("./{p}")
    }
}

/// A double-quoted parameter value.
fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chatml_models_get_the_chatml_template_and_its_stop() {
        let m = modelfile(
            "model-q8_0.gguf",
            None,
            "{{ '<|im_start|>' + message['role'] }}",
            &["<|endoftext|>".into(), "<|im_end|>".into()],
        );
        assert!(m.contains("FROM ./model-q8_0.gguf\n"), "{m}");
        assert!(
            m.contains("TEMPLATE \"\"\"{{- if .System }}<|im_start|>system"),
            "{m}"
        );
        assert!(m.contains("PARAMETER stop \"<|endoftext|>\"\n"), "{m}");
        assert_eq!(m.matches("PARAMETER stop \"<|im_end|>\"").count(), 1, "{m}");
        assert!(!m.contains("ADAPTER"));
    }

    #[test]
    fn adapters_gemma_and_unknown_templates() {
        let m = modelfile("/m/base.gguf", Some("lora.gguf"), "<start_of_turn>", &[]);
        assert!(
            m.contains("FROM /m/base.gguf\nADAPTER ./lora.gguf\n"),
            "{m}"
        );
        assert!(m.contains("<start_of_turn>model\n\"\"\""), "{m}");
        assert!(m.contains("PARAMETER stop \"<end_of_turn>\""), "{m}");
        let m = modelfile("x.gguf", None, "[INST]", &["</s>".into()]);
        assert!(!m.contains("TEMPLATE \"\"\""), "{m}");
        assert!(m.contains("# No TEMPLATE"), "{m}");
        assert!(m.contains("PARAMETER stop \"</s>\""), "{m}");
    }
}
