//! docs/cli.md is generated from the binary's own `--help` text, and this
//! test fails when the two drift apart. Regenerate with
//! `HONE_BLESS=1 cargo test --release -p hone-cli --test it cli_docs`.

use std::path::PathBuf;
use std::process::Command;

fn help(path: &[String]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_hone"))
        .args(path)
        .arg("--help")
        .env_clear()
        .output()
        .expect("run hone --help");
    assert!(out.status.success(), "hone {path:?} --help failed");
    String::from_utf8(out.stdout).expect("help is UTF-8")
}

/// Subcommand names listed under "Commands:" in a help text.
fn subcommands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter(|l| l.len() > 2 && !l[2..].starts_with(' '))
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .filter(|c| c != "help")
        .collect()
}

fn render(path: &mut Vec<String>, out: &mut String) {
    let text = help(path);
    let title = if path.is_empty() {
        "hone".to_string()
    } else {
        format!("hone {}", path.join(" "))
    };
    let hashes = "#".repeat(path.len() + 2);
    out.push_str(&format!(
        "{hashes} `{title}`\n\n```text\n{}\n```\n\n",
        text.trim_end()
    ));
    for sub in subcommands(&text) {
        path.push(sub);
        render(path, out);
        path.pop();
    }
}

#[test]
fn cli_reference_matches_the_binary() {
    let mut doc = String::from(
        "# CLI reference\n\n\
         Generated from `hone … --help`; a test keeps it in step with the binary\n\
         (regenerate with `HONE_BLESS=1 cargo test --release -p hone-cli --test it cli_docs`).\n\
         Every flag can also be set through the environment variable shown with it.\n\n",
    );
    render(&mut Vec::new(), &mut doc);
    let file = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/cli.md");
    if std::env::var_os("HONE_BLESS").is_some() {
        std::fs::write(&file, &doc).expect("write docs/cli.md");
        return;
    }
    let current = std::fs::read_to_string(&file).unwrap_or_default();
    assert!(
        current == doc,
        "docs/cli.md is out of date: run HONE_BLESS=1 cargo test --release -p hone-cli --test it cli_docs"
    );
}
