//! Actors' bearer tokens: the roles, and the hash under which a token is stored.

use serde::{Deserialize, Serialize};

/// Who an actor is to the hub; every endpoint names the roles it serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// A department's IT system.
    Department,
    /// A person working a counter or kiosk for one department.
    Caseworker,
    /// A resident, identified by their resident ID number.
    Citizen,
    Auditor,
    Operator,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Department => "department",
            Self::Caseworker => "caseworker",
            Self::Citizen => "citizen",
            Self::Auditor => "auditor",
            Self::Operator => "operator",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "department" => Self::Department,
            "caseworker" => Self::Caseworker,
            "citizen" => Self::Citizen,
            "auditor" => Self::Auditor,
            "operator" => Self::Operator,
            _ => return None,
        })
    }
}

/// The prefix that makes a datarun token recognisable (and scannable for leaks).
pub const TOKEN_PREFIX: &str = "drt_";

/// Formats 32 random bytes as a token string.
pub fn token_from_random(bytes: &[u8; 32]) -> String {
    format!("{TOKEN_PREFIX}{}", hex::encode(bytes))
}

/// SHA-256 of a token; only this is stored.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TokenHash(pub [u8; 32]);

impl TokenHash {
    pub fn of(token: &str) -> Self {
        let mut hash = [0u8; 32];
        hash.copy_from_slice(
            ring::digest::digest(&ring::digest::SHA256, token.as_bytes()).as_ref(),
        );
        Self(hash)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_hash_is_sha256_and_differs_per_token() {
        let token = token_from_random(&[7; 32]);
        assert!(token.starts_with("drt_") && token.len() == 68);
        assert_eq!(
            hex::encode(TokenHash::of("abc").0),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_ne!(
            TokenHash::of(&token),
            TokenHash::of(&token_from_random(&[8; 32]))
        );
        assert_eq!(Role::parse("auditor"), Some(Role::Auditor));
        assert_eq!(Role::parse("root"), None);
    }
}
