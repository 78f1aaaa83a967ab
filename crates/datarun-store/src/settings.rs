//! Hub-wide settings every instance on one database must agree on. The pseudonym key
//! itself never enters the database (whoever reads the database could otherwise
//! recompute the pseudonym of any ID number); only a check value of it does, so an
//! instance started with another key is refused instead of writing pseudonyms that no
//! audit query would ever find.

use crate::{on_pool, text, Result, Store, StoreError};

/// The shortest pseudonym key accepted: HMAC-SHA256's own output length.
pub const PSEUDONYM_KEY_MIN_BYTES: usize = 32;

const PSEUDONYM_KEY_CHECK: &str = "pseudonym_key_check";

impl Store {
    /// Records the pseudonym key's check value on first start; refuses a different key later.
    pub(crate) async fn check_pseudonym_key(&self) -> Result<()> {
        if self.pseudonym_key.len() < PSEUDONYM_KEY_MIN_BYTES {
            return Err(StoreError::Invalid(format!(
                "the pseudonym key is {} bytes; at least {PSEUDONYM_KEY_MIN_BYTES} are required",
                self.pseudonym_key.len()
            )));
        }
        let check =
            datarun_domain::pseudonym(&self.pseudonym_key, "datarun pseudonym key check v1");
        let recorded = on_pool!(self, |pool| {
            sqlx::query(
                "INSERT INTO hub_settings (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
            )
            .bind(PSEUDONYM_KEY_CHECK)
            .bind(&check)
            .execute(pool)
            .await?;
            let row = sqlx::query("SELECT value FROM hub_settings WHERE name = $1")
                .bind(PSEUDONYM_KEY_CHECK)
                .fetch_one(pool)
                .await?;
            text(&row, "value")?
        });
        if recorded != check {
            return Err(StoreError::Invalid(
                "this hub's pseudonym key is not the key this database was set up with; every hub \
                 instance on one database must use the same key (DATARUN_PSEUDONYM_KEY or \
                 hub.pseudonym_key_file)"
                    .into(),
            ));
        }
        Ok(())
    }
}
