//! API keys, projects, and request ids.
//!
//! Every key belongs to a project (OpenAI's term): the files, jobs, events,
//! checkpoints and fine-tuned models a key creates belong to its project,
//! and other projects get a 404 for them (see [`crate::store::Scope`]). An
//! admin key sees every project. Keys come from two places: `hone keys
//! create` (stored in `hone.db`) and `--api-key`/`HONE_API_KEYS` (the
//! default project, named by `--org`, for simple set-ups). With neither, on
//! a loopback address, auth is off and the caller sees everything.
//!
//! Keys are kept only as digests ([`key_digest`]) and compared in constant
//! time (subtle), against every accepted key without short-circuiting, so
//! the time taken says nothing about which key or how much of it matched.
//! Keys are never logged.
//!
//! Why a single keyed sha256 and no salt or slow hash: a key is 40 base62
//! characters from the OS-seeded CSPRNG (about 238 bits). Salts and slow
//! hashes protect low-entropy passwords from dictionary and precomputed
//! attacks; against a 238-bit random secret, sha256's preimage resistance is
//! already far beyond any brute force, so a leaked `hone.db` does not reveal
//! keys. The fixed domain tag keeps these digests from matching any other
//! sha256 hone stores (file contents).

use axum::extract::{Request, State};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use subtle::{ConditionallySelectable, ConstantTimeEq};

use crate::error::ApiError;
use crate::ids;
use crate::store::{unix_now, KeyRecord, Scope, Store, StoreHandle, StoreResult};

/// What every key `hone keys create` makes starts with.
pub const KEY_PREFIX: &str = "sk-hone-";

/// Random characters after [`KEY_PREFIX`] (base62: about 238 bits).
const KEY_RANDOM_CHARS: usize = 40;

/// The digest a key is stored and compared as.
pub fn key_digest(key: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"hone-api-key-v1\0");
    h.update(key.as_bytes());
    h.finalize().into()
}

/// Checks a project name: 1 to 64 of `A-Z a-z 0-9 . _ -`, so that it fits
/// in a fine-tuned model name (`ft:<base>:<project>:...`, no `:`).
pub fn validate_project(name: &str) -> Result<(), String> {
    let ok = |c: char| c.is_ascii_alphanumeric() || "._-".contains(c);
    if name.is_empty() || name.len() > 64 || !name.chars().all(ok) {
        return Err(format!(
            "invalid project name '{name}': use 1 to 64 characters from A-Z, a-z, 0-9, '.', '_' and '-'"
        ));
    }
    Ok(())
}

/// Makes a new key for `project` and stores its digest. The key itself is
/// returned once, to be shown to the user, and never stored.
pub fn create_key(
    store: &dyn Store,
    project: &str,
    admin: bool,
) -> StoreResult<(KeyRecord, String)> {
    let key = format!("{KEY_PREFIX}{}", ids::base62(KEY_RANDOM_CHARS));
    let record = KeyRecord {
        id: format!("key_{}", ids::base62(16)),
        project: project.to_string(),
        admin,
        digest: key_digest(&key),
        hint: key[key.len() - 4..].to_string(),
        created_at: unix_now(),
        revoked_at: None,
    };
    store.insert_key(&record)?;
    Ok((record, key))
}

/// Who is calling: the project a request acts in, and what it may see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// Where what the caller creates goes (and the `organization_id`).
    pub project: String,
    /// An admin sees every project's objects.
    pub admin: bool,
}

impl Caller {
    /// What the caller's reads and deletes may see.
    pub fn scope(&self) -> Scope {
        if self.admin {
            Scope::All
        } else {
            Scope::Project(self.project.clone())
        }
    }
}

/// An accepted key's digest and who it makes the caller.
#[derive(Clone)]
struct Accepted {
    digest: [u8; 32],
    caller: Caller,
}

/// Finds the caller whose key is `token`, comparing against every key in
/// constant time: the loop never stops early, and the match is picked with
/// a constant-time select, not a branch.
fn identify(accepted: &[Accepted], token: &str) -> Option<Caller> {
    let d = key_digest(token);
    let mut found = subtle::Choice::from(0u8);
    let mut index = 0u32;
    for (i, a) in accepted.iter().enumerate() {
        let eq = a.digest.ct_eq(&d);
        index.conditional_assign(&(i as u32), eq);
        found |= eq;
    }
    bool::from(found).then(|| accepted[index as usize].caller.clone())
}

/// The `--api-key` keys, as digests: they belong to the default project.
/// Empty means none were given.
#[derive(Clone, Default)]
pub struct ApiKeys {
    accepted: Vec<Accepted>,
}

impl ApiKeys {
    /// `keys` of the project named `"default"`; see [`ApiKeys::for_project`].
    pub fn new(keys: &[String]) -> Self {
        Self::for_project(keys, "default")
    }

    /// `keys`, each acting in `project` (not admin).
    pub fn for_project(keys: &[String], project: &str) -> Self {
        let caller = Caller {
            project: project.to_string(),
            admin: false,
        };
        ApiKeys {
            accepted: keys
                .iter()
                .map(|k| Accepted {
                    digest: key_digest(k),
                    caller: caller.clone(),
                })
                .collect(),
        }
    }

    /// Whether any key is configured.
    pub fn enabled(&self) -> bool {
        !self.accepted.is_empty()
    }

    /// Whether `token` is one of the keys, in constant time.
    pub fn accepts(&self, token: &str) -> bool {
        identify(&self.accepted, token).is_some()
    }
}

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiKeys([{} redacted])", self.accepted.len())
    }
}

/// What the auth middleware needs.
#[derive(Clone)]
pub struct AuthState {
    pub store: StoreHandle,
    /// `--api-key` keys.
    pub config_keys: ApiKeys,
    /// The default project: `--api-key` keys, and everyone when auth is off.
    pub default_project: String,
    /// Auth may be off only on a loopback address.
    pub loopback: bool,
}

/// Finds the caller from `Authorization: Bearer <key>` and puts a
/// [`Caller`] in the request's extensions. Stored keys are read at each
/// request, so that `hone keys revoke` takes effect at once. Once a key was
/// ever stored, auth stays on even if every key is revoked: revoking the
/// last key must lock the server, not open it.
pub async fn require_key(State(auth): State<AuthState>, mut req: Request, next: Next) -> Response {
    let stored = match auth.store.run(|s| s.list_keys(None)).await {
        Ok(k) => k,
        Err(e) => return ApiError::from(e).into_response(),
    };
    if stored.is_empty() && !auth.config_keys.enabled() {
        if !auth.loopback {
            return ApiError::Unauthorized {
                message:
                    "No API key is configured on this server: create one with `hone keys create`."
                        .into(),
            }
            .into_response();
        }
        req.extensions_mut().insert(Caller {
            project: auth.default_project.clone(),
            admin: true,
        });
        return next.run(req).await;
    }
    let header = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let token = header.and_then(bearer_token);
    let Some(token) = token else {
        return ApiError::Unauthorized {
            message: "You didn't provide an API key. Send it in an Authorization header \
                      using Bearer auth (Authorization: Bearer YOUR_KEY)."
                .into(),
        }
        .into_response();
    };
    let mut accepted = auth.config_keys.accepted.clone();
    let active = stored.into_iter().filter(|k| k.revoked_at.is_none());
    accepted.extend(active.map(|k| Accepted {
        digest: k.digest,
        caller: Caller {
            project: k.project,
            admin: k.admin,
        },
    }));
    match identify(&accepted, token.trim()) {
        Some(caller) => {
            req.extensions_mut().insert(caller);
            next.run(req).await
        }
        None => ApiError::Unauthorized {
            message: "Incorrect API key provided.".into(),
        }
        .into_response(),
    }
}

/// The key in an `Authorization` header value: `Bearer <key>`, with the
/// scheme in any case (`bearer`, `BEARER`), as RFC 9110 says schemes are.
fn bearer_token(header: &str) -> Option<&str> {
    let (scheme, token) = header.trim_start().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then_some(token)
}

/// The id of the current request, in the request's extensions.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// Gives every request an id: logged in its span, and returned as
/// `x-request-id` on every response, errors included.
pub async fn request_id(mut req: Request, next: Next) -> Response {
    let id = ids::request_id();
    req.extensions_mut().insert(RequestId(id.clone()));
    let span =
        tracing::info_span!("request", id = %id, method = %req.method(), path = %req.uri().path());
    let mut resp = {
        let _enter = span.enter();
        tracing::debug!("start");
        drop(_enter);
        use tracing::Instrument;
        next.run(req).instrument(span.clone()).await
    };
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    span.in_scope(|| tracing::info!(status = resp.status().as_u16(), "done"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_match_exactly() {
        let k = ApiKeys::new(&["sk-one".into(), "sk-two".into()]);
        assert!(k.enabled());
        assert!(k.accepts("sk-one") && k.accepts("sk-two"));
        assert!(!k.accepts("sk-on") && !k.accepts("sk-one ") && !k.accepts(""));
        assert!(!ApiKeys::default().enabled());
        assert!(!format!("{k:?}").contains("sk-"));
    }

    #[test]
    fn the_matching_key_names_its_caller() {
        let a = ApiKeys::for_project(&["sk-a".into()], "alpha");
        let mut accepted = a.accepted.clone();
        accepted.extend(ApiKeys::for_project(&["sk-b".into()], "beta").accepted);
        assert_eq!(identify(&accepted, "sk-b").unwrap().project, "beta");
        assert_eq!(identify(&accepted, "sk-a").unwrap().project, "alpha");
        assert!(identify(&accepted, "sk-c").is_none());
        assert!(identify(&[], "sk-a").is_none());
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        for h in ["Bearer sk-a", "bearer sk-a", "BEARER sk-a", "BeArEr sk-a"] {
            assert_eq!(bearer_token(h), Some("sk-a"), "{h}");
        }
        assert_eq!(bearer_token("Basic sk-a"), None);
        assert_eq!(bearer_token("Bearersk-a"), None);
        assert_eq!(bearer_token("sk-a"), None);
    }

    #[test]
    fn digests_are_domain_separated_from_plain_sha256() {
        let plain: [u8; 32] = Sha256::digest(b"sk-a").into();
        assert_ne!(key_digest("sk-a"), plain);
    }

    #[test]
    fn project_names_fit_in_model_names() {
        assert!(validate_project("team-a_1.x").is_ok());
        for bad in ["", "a:b", "a b", &"x".repeat(65)] {
            assert!(validate_project(bad).is_err(), "{bad}");
        }
    }
}
