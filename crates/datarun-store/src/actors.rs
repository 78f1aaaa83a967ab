//! Actors (department systems, caseworkers, citizens, auditors, operators) and their tokens.

use crate::{now_millis, on_tx, optional_text, random_id, text, Result, Store, StoreError};
use datarun_domain::token::{token_from_random, TokenHash};
use datarun_domain::{DepartmentId, ResidentId, Role};

/// The longest a token may last: 400 days (a department system's token, renewed yearly).
pub const MAX_TOKEN_LIFETIME_MILLIS: i64 = 400 * 24 * 3_600_000;

/// An authenticated actor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    pub actor_id: String,
    pub role: Role,
    pub department: Option<DepartmentId>,
    pub resident_id: Option<ResidentId>,
    pub display_name: String,
}

impl Store {
    /// Creates an actor and returns it with a new bearer token (shown once, stored
    /// hashed) that expires after `lifetime`.
    pub async fn create_actor(
        &self,
        role: Role,
        department: Option<&DepartmentId>,
        resident_id: Option<&ResidentId>,
        display_name: &str,
        lifetime: std::time::Duration,
    ) -> Result<(Actor, String)> {
        let lifetime_millis = i64::try_from(lifetime.as_millis()).unwrap_or(i64::MAX);
        if !(1_000..=MAX_TOKEN_LIFETIME_MILLIS).contains(&lifetime_millis) {
            return Err(StoreError::Invalid(
                "a token lasts from one second to 400 days".into(),
            ));
        }
        match role {
            Role::Department | Role::Caseworker if department.is_none() => {
                return Err(StoreError::Invalid(format!(
                    "a {} needs a department",
                    role.as_str()
                )))
            }
            Role::Citizen if resident_id.is_none() => {
                return Err(StoreError::Invalid(
                    "a citizen needs a resident ID number".into(),
                ))
            }
            _ => {}
        }
        if let Some(department) = department {
            if !self.department_exists(department).await? {
                return Err(StoreError::NotFound(format!("department {department}")));
            }
        }
        let actor = Actor {
            actor_id: random_id(role.as_str())?,
            role,
            department: department.cloned(),
            resident_id: resident_id.cloned(),
            display_name: display_name.to_owned(),
        };
        let mut random = [0u8; 32];
        crate::fill_random(&mut random)?;
        let token = token_from_random(&random);
        let mut tx = self.begin_write().await?;
        let token_hash = TokenHash::of(&token);
        let now = now_millis();
        on_tx!(&mut tx, |conn| {
            sqlx::query(
                "INSERT INTO actors (actor_id, role, department_id, resident_id, display_name, created_at)
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(&actor.actor_id)
            .bind(role.as_str())
            .bind(department.map(|d| d.as_str()))
            .bind(resident_id.map(|r| r.as_str()))
            .bind(display_name)
            .bind(now_millis())
            .execute(&mut *conn)
            .await?;
            sqlx::query(
                "INSERT INTO tokens (token_hash, actor_id, created_at, expires_at) VALUES ($1, $2, $3, $4)",
            )
            .bind(&token_hash.0[..])
            .bind(&actor.actor_id)
            .bind(now)
            .bind(now + lifetime_millis)
            .execute(&mut *conn)
            .await?;
        });
        tx.commit().await?;
        Ok((actor, token))
    }
}

pub(crate) fn actor_from_row(row: &impl crate::RowExt) -> Result<Actor> {
    let role_text = text(row, "role")?;
    let role =
        Role::parse(&role_text).ok_or_else(|| StoreError::Corrupt(format!("role {role_text}")))?;
    let corrupt = |e: datarun_domain::IdError| StoreError::Corrupt(e.to_string());
    Ok(Actor {
        actor_id: text(row, "actor_id")?,
        role,
        department: optional_text(row, "department_id")?
            .map(|d| DepartmentId::parse(&d))
            .transpose()
            .map_err(corrupt)?,
        resident_id: optional_text(row, "resident_id")?
            .map(|r| ResidentId::parse(&r))
            .transpose()
            .map_err(corrupt)?,
        display_name: text(row, "display_name")?,
    })
}
