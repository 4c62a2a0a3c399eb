//! `--chat-template FILE`, shared by every command that renders chats with a
//! model's template (`hone data validate/stats/estimate`, `train`, `chat`,
//! `eval`, `serve`): one flag, turned into hone-model's [`OpenOptions`], which
//! applies it where the model is opened, so every command renders with the same
//! template for the same flag.

use std::path::PathBuf;

use hone_model::OpenOptions;
use hone_text::ChatTemplate;

#[derive(clap::Args, Debug, Clone, Default)]
pub struct ChatTemplateArgs {
    /// A Jinja chat template file that replaces the model's own: for a base
    /// model without one, or to train and serve another format. Token counts,
    /// training, chat, eval and serving all render with it.
    #[arg(long, value_name = "FILE", env = "HONE_CHAT_TEMPLATE")]
    pub chat_template: Option<PathBuf>,
}

impl ChatTemplateArgs {
    /// The open options the flag asks for.
    pub fn options(&self) -> OpenOptions {
        OpenOptions {
            chat_template: self.chat_template.clone(),
        }
    }
}

/// Tells the user which template renders `model`'s chats ("the model's own",
/// "default Gemma 3 template (the GGUF has none)", or the file), on stderr so
/// that JSON output stays clean.
pub fn print_template(model: &str, template: &ChatTemplate) {
    eprintln!("chat template of {model}: {}", template.origin());
}
