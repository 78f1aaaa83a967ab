//! Bearer tokens on the hot path: they expire and can be revoked, and a hub checks them
//! against an in-process cache rather than reading the database on every request.
//!
//! A revocation is one transaction that marks the tokens revoked and raises the one-row
//! `auth_state.epoch`. Every hub polls that row (`AUTH_POLL_EVERY`, one primary-key read)
//! and drops its whole cache when the epoch moves, so a revocation made by any hub or by
//! the CLI reaches every hub on the same database within `REVOCATION_REACHES_ALL_HUBS_WITHIN`;
//! the revoking call waits that long before it answers, so when it returns no hub honours
//! the token. A token read from the database while a revocation lands is not cached
//! (the cache's generation moved), and no entry lives longer than `CACHE_MAX_AGE`.

use crate::actors::actor_from_row;
use crate::audit::{append, reserve, NewAuditEvent};
use crate::{integer, now_millis, on_pool, on_tx, text, Actor, Result, Store, StoreError};
use datarun_domain::token::TokenHash;
use serde_json::json;
use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::RwLock;
use std::time::{Duration, Instant};

/// How often each hub reads the revocation epoch.
pub const AUTH_POLL_EVERY: Duration = Duration::from_millis(100);
/// How long a revocation takes, at most, to reach every running hub's cache; a revoking
/// call answers only after this.
pub const REVOCATION_REACHES_ALL_HUBS_WITHIN: Duration = Duration::from_millis(300);
/// The longest a cached token is trusted without reading the database again, in case a
/// hub's poll of the epoch fails.
const CACHE_MAX_AGE: Duration = Duration::from_secs(60);
/// Cached tokens per hub; past this the cache starts again empty.
const CACHE_MAX_ENTRIES: usize = 100_000;
/// Longer than any token the hub issues (`drt_` and 64 hex digits): not looked up.
const TOKEN_MAX_LEN: usize = 128;

/// What a bearer token is worth.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Authentication {
    Valid(Actor),
    /// Known, not revoked, past its expiry.
    Expired,
    /// Unknown or revoked: the two look the same to the caller.
    Unknown,
}

/// Which tokens a revocation ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RevokeTarget {
    /// One token, by its text.
    Token(String),
    /// Every live token of one actor.
    Actor(String),
}

struct Cached {
    actor: Actor,
    expires_at: i64,
    cached_at: Instant,
}

/// Authenticated tokens by hash.
pub(crate) struct TokenCache {
    /// Rises every time the cache is emptied; an insert from before is discarded.
    generation: AtomicU64,
    /// The database's revocation epoch this cache reflects (`i64::MIN`: not read yet).
    seen_epoch: AtomicI64,
    entries: RwLock<HashMap<[u8; 32], Cached>>,
}

impl Default for TokenCache {
    fn default() -> Self {
        Self {
            generation: AtomicU64::new(0),
            seen_epoch: AtomicI64::new(i64::MIN),
            entries: RwLock::default(),
        }
    }
}

impl std::fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the actors: only how much is cached.
        let entries = self.entries.read().map(|e| e.len()).unwrap_or(0);
        f.debug_struct("TokenCache")
            .field("entries", &entries)
            .finish_non_exhaustive()
    }
}

impl TokenCache {
    fn get(&self, hash: &[u8; 32]) -> Option<(Actor, i64)> {
        let entries = self.entries.read().ok()?;
        let cached = entries.get(hash)?;
        (cached.cached_at.elapsed() < CACHE_MAX_AGE)
            .then(|| (cached.actor.clone(), cached.expires_at))
    }

    fn insert(&self, hash: [u8; 32], actor: Actor, expires_at: i64, generation: u64) {
        let Ok(mut entries) = self.entries.write() else {
            return;
        };
        // Checked under the lock that `clear` takes: a revocation that landed while
        // this token was read from the database wins.
        if self.generation.load(Ordering::SeqCst) != generation {
            return;
        }
        if entries.len() >= CACHE_MAX_ENTRIES {
            entries.clear();
        }
        entries.insert(
            hash,
            Cached {
                actor,
                expires_at,
                cached_at: Instant::now(),
            },
        );
    }

    fn clear(&self) {
        if let Ok(mut entries) = self.entries.write() {
            self.generation.fetch_add(1, Ordering::SeqCst);
            entries.clear();
        }
    }
}

impl Store {
    /// What `token` is worth now. A cached token costs no database read.
    pub async fn authenticate(&self, token: &str) -> Result<Authentication> {
        if token.len() > TOKEN_MAX_LEN {
            return Ok(Authentication::Unknown);
        }
        let hash = TokenHash::of(token);
        let now = now_millis();
        let judged = |actor: Actor, expires_at: i64| {
            if now >= expires_at {
                Authentication::Expired
            } else {
                Authentication::Valid(actor)
            }
        };
        if let Some((actor, expires_at)) = self.token_cache.get(&hash.0) {
            return Ok(judged(actor, expires_at));
        }
        let generation = self.token_cache.generation.load(Ordering::SeqCst);
        let found = on_pool!(self, |pool| {
            let row = sqlx::query(
                "SELECT a.actor_id, a.role, a.department_id, a.resident_id, a.display_name, t.expires_at
                 FROM tokens t JOIN actors a ON a.actor_id = t.actor_id
                 WHERE t.token_hash = $1 AND t.revoked_at IS NULL",
            )
            .bind(&hash.0[..])
            .fetch_optional(pool)
            .await?;
            match row {
                Some(row) => Some((actor_from_row(&row)?, integer(&row, "expires_at")?)),
                None => None,
            }
        });
        let Some((actor, expires_at)) = found else {
            return Ok(Authentication::Unknown);
        };
        self.token_cache
            .insert(hash.0, actor.clone(), expires_at, generation);
        Ok(judged(actor, expires_at))
    }

    /// Revokes `target`'s live tokens on behalf of `actor` (an operator, the CLI, or the
    /// token's own holder logging out), audited as `token_revoked`. Answers after
    /// `REVOCATION_REACHES_ALL_HUBS_WITHIN`, when no running hub honours them any more.
    pub async fn revoke_tokens(&self, actor: &str, target: &RevokeTarget) -> Result<u64> {
        let (column, key): (&str, Vec<u8>) = match target {
            RevokeTarget::Token(token) if token.len() <= TOKEN_MAX_LEN => {
                ("token_hash", TokenHash::of(token).0.to_vec())
            }
            RevokeTarget::Actor(actor_id) if is_actor_id(actor_id) => {
                ("actor_id", actor_id.as_bytes().to_vec())
            }
            _ => return Err(StoreError::NotFound("live token".into())),
        };
        let now = now_millis();
        let mut tx = self.begin_write().await?;
        let place = reserve(&mut tx).await?;
        let owners: Vec<String> = on_tx!(&mut tx, |conn| {
            let query = match column {
                "token_hash" => sqlx::query(
                    "UPDATE tokens SET revoked_at = $1 WHERE token_hash = $2 AND revoked_at IS NULL RETURNING actor_id",
                )
                .bind(now)
                .bind(key.clone()),
                _ => sqlx::query(
                    "UPDATE tokens SET revoked_at = $1 WHERE actor_id = $2 AND revoked_at IS NULL RETURNING actor_id",
                )
                .bind(now)
                .bind(String::from_utf8_lossy(&key).into_owned()),
            };
            let rows = query.fetch_all(&mut *conn).await?;
            sqlx::query("UPDATE auth_state SET epoch = epoch + 1 WHERE id = 1")
                .execute(&mut *conn)
                .await?;
            rows.iter()
                .map(|row| text(row, "actor_id"))
                .collect::<Result<Vec<_>>>()?
        });
        let Some(owner) = owners.first() else {
            return Err(StoreError::NotFound("live token".into()));
        };
        append(
            &mut tx,
            place,
            NewAuditEvent {
                kind: "token_revoked".into(),
                actor: actor.to_owned(),
                outcome: "done".into(),
                detail: json!({
                    "actor_id": owner,
                    "tokens": owners.len(),
                    "by": if column == "token_hash" { "token" } else { "actor" },
                }),
                ..NewAuditEvent::default()
            },
        )
        .await?;
        tx.commit().await?;
        self.token_cache.clear();
        tokio::time::sleep(REVOCATION_REACHES_ALL_HUBS_WITHIN).await;
        Ok(owners.len() as u64)
    }

    /// Reads the revocation epoch every `every` and empties this hub's token cache
    /// when another hub or the CLI revoked a token, until `shutdown` resolves.
    pub async fn run_auth_watch(
        &self,
        every: Duration,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        let watch = async {
            loop {
                match self.revocation_epoch().await {
                    Ok(epoch) => {
                        let seen = self.token_cache.seen_epoch.swap(epoch, Ordering::SeqCst);
                        if seen != epoch && seen != i64::MIN {
                            self.token_cache.clear();
                            tracing::info!(epoch, "a token was revoked; token cache emptied");
                        }
                    }
                    Err(error) => {
                        // Not knowing is treated as a revocation: the next request of
                        // each token reads the database.
                        self.token_cache.clear();
                        tracing::warn!(%error, "reading the revocation epoch failed; token cache emptied");
                    }
                }
                tokio::time::sleep(every).await;
            }
        };
        tokio::select! {
            _ = shutdown => {}
            _ = watch => {}
        }
    }

    async fn revocation_epoch(&self) -> Result<i64> {
        on_pool!(self, |pool| {
            let row = sqlx::query("SELECT epoch FROM auth_state WHERE id = 1")
                .fetch_one(pool)
                .await?;
            integer(&row, "epoch")
        })
    }
}

/// Whether `text` is an actor id as the hub issues them: a role, `_`, 32 hex digits.
fn is_actor_id(text: &str) -> bool {
    text.len() <= 64
        && text.rsplit_once('_').is_some_and(|(role, hex)| {
            !role.is_empty()
                && role.bytes().all(|b| b.is_ascii_lowercase())
                && hex.len() == 32
                && hex.bytes().all(|b| b.is_ascii_hexdigit())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actor_ids_are_checked_before_sql() {
        assert!(is_actor_id("caseworker_0123456789abcdef0123456789abcdef"));
        assert!(!is_actor_id("caseworker_0123"));
        assert!(!is_actor_id(
            "case\0worker_0123456789abcdef0123456789abcdef"
        ));
        assert!(!is_actor_id(&"a".repeat(10_000)));
    }
}
