//! `hone keys`: API keys and the projects they belong to, in the server's
//! store (`$HONE_HOME/hone.db`). Works while `hone serve` runs: the server
//! reads keys at each request, so a new key works and a revoked key is
//! refused at once.
//!
//! Only a digest of each key is stored (see `hone_serve::auth`): `create`
//! prints the key once, and it cannot be shown again.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use hone_serve::auth::{create_key, validate_project};
use hone_serve::store::{KeyRecord, SqliteStore, Store};

#[derive(clap::Subcommand)]
pub enum KeysCommand {
    /// Create a key for a project (made up by naming it) and print it once.
    Create(CreateArgs),
    /// List keys (never the keys themselves: an id, the last 4 characters).
    List(ListArgs),
    /// Revoke a key by its id (`key_...`, from `hone keys list`).
    Revoke(RevokeArgs),
}

/// Where the store is: the same `--home` as `hone serve`.
#[derive(clap::Args)]
pub struct Home {
    /// Data directory of the server (holds `hone.db`).
    #[arg(long, env = "HONE_HOME", default_value = ".hone")]
    pub home: PathBuf,
}

#[derive(clap::Args)]
pub struct CreateArgs {
    /// The project the key acts in: what it creates belongs to the project,
    /// and other projects cannot see it.
    #[arg(long)]
    pub project: String,
    /// An admin key sees (and can delete) every project's objects.
    #[arg(long)]
    pub admin: bool,
    #[command(flatten)]
    pub home: Home,
}

#[derive(clap::Args)]
pub struct ListArgs {
    /// Only this project's keys.
    #[arg(long)]
    pub project: Option<String>,
    #[command(flatten)]
    pub home: Home,
}

#[derive(clap::Args)]
pub struct RevokeArgs {
    /// The key's id, as `hone keys list` shows it.
    pub id: String,
    /// Refuse unless the key belongs to this project (a guard against
    /// revoking the wrong team's key).
    #[arg(long)]
    pub project: Option<String>,
    #[command(flatten)]
    pub home: Home,
}

pub fn run(c: KeysCommand) -> anyhow::Result<ExitCode> {
    match c {
        KeysCommand::Create(a) => create(a),
        KeysCommand::List(a) => list(a),
        KeysCommand::Revoke(a) => revoke(a),
    }
}

fn open(home: &Home) -> anyhow::Result<SqliteStore> {
    let path = home.home.join("hone.db");
    SqliteStore::open(&path).with_context(|| format!("opening {}", path.display()))
}

fn create(a: CreateArgs) -> anyhow::Result<ExitCode> {
    validate_project(&a.project).map_err(anyhow::Error::msg)?;
    let store = open(&a.home)?;
    let (rec, key) = create_key(&store, &a.project, a.admin)?;
    // The key alone on stdout, so that scripts can capture it.
    println!("{key}");
    eprintln!(
        "created {} for project {}{}; it is shown only this once (hone keeps only a digest)",
        rec.id,
        rec.project,
        if rec.admin { " (admin)" } else { "" }
    );
    Ok(ExitCode::SUCCESS)
}

fn list(a: ListArgs) -> anyhow::Result<ExitCode> {
    let store = open(&a.home)?;
    let keys = store.list_keys(a.project.as_deref())?;
    if keys.is_empty() {
        eprintln!("no keys");
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<22} {:<20} {:<6} {:<8} {:<12} STATUS",
        "ID", "PROJECT", "ADMIN", "ENDS", "CREATED"
    );
    for k in &keys {
        println!("{}", row(k));
    }
    Ok(ExitCode::SUCCESS)
}

fn row(k: &KeyRecord) -> String {
    let status = match k.revoked_at {
        Some(t) => format!("revoked at {t}"),
        None => "active".to_string(),
    };
    format!(
        "{:<22} {:<20} {:<6} ...{:<5} {:<12} {status}",
        k.id,
        k.project,
        if k.admin { "yes" } else { "no" },
        k.hint,
        k.created_at
    )
}

fn revoke(a: RevokeArgs) -> anyhow::Result<ExitCode> {
    let store = open(&a.home)?;
    if let Some(p) = &a.project {
        let theirs = store.list_keys(Some(p))?;
        if !theirs.iter().any(|k| k.id == a.id) {
            anyhow::bail!("project {p} has no key {}", a.id);
        }
    }
    let rec = store.revoke_key(&a.id)?;
    eprintln!(
        "revoked {} (project {}); requests with it are refused from now on",
        rec.id, rec.project
    );
    Ok(ExitCode::SUCCESS)
}
