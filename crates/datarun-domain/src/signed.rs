//! Documents the hub signs — lookup responses, consent artefacts — so that whoever holds
//! one can prove to a third party that the hub issued it, unchanged.
//!
//! A signed document is a JSON object with one extra member, `hub_signature`:
//! `{"algorithm": "Ed25519", "key_id": "hub-…", "value": "<hex>"}`. The signature is over
//! the document's **canonical form** without that member: UTF-8 JSON with no whitespace,
//! object members sorted by key (byte order), strings and integers as `serde_json`
//! writes them. For the values the hub signs (strings, integers, booleans, null, arrays,
//! objects; never floating point) this is RFC 8785 (JCS). `docs/signed-responses.md`
//! shows how to check one with OpenSSL alone.

use ring::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};
use serde_json::{Map, Value};

/// The member that carries the signature.
pub const SIGNATURE_MEMBER: &str = "hub_signature";

/// A hub signing key's id: `hub-` and the first 8 bytes of the SHA-256 of its public key,
/// in hex, so the id names the key and nothing else.
pub fn hub_key_id(public_key: &[u8; 32]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, public_key);
    format!("hub-{}", hex::encode(&digest.as_ref()[..8]))
}

/// The canonical form of `value`.
pub fn canonical_json(value: &Value) -> String {
    let mut out = String::new();
    write_canonical(value, &mut out);
    out
}

fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(members) => {
            let mut keys: Vec<&String> = members.keys().collect();
            keys.sort();
            out.push('{');
            for (index, key) in keys.into_iter().enumerate() {
                if index > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                write_canonical(&members[key], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (index, item) in items.iter().enumerate() {
                if index > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

/// A hub instance's signing key and its id.
pub struct HubSigner {
    key_pair: Ed25519KeyPair,
    key_id: String,
    public_key: [u8; 32],
}

impl std::fmt::Debug for HubSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubSigner")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

impl HubSigner {
    pub fn new(key_pair: Ed25519KeyPair) -> Self {
        let public_key: [u8; 32] = key_pair.public_key().as_ref().try_into().unwrap_or([0; 32]);
        Self {
            key_id: hub_key_id(&public_key),
            key_pair,
            public_key,
        }
    }

    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    pub fn public_key(&self) -> &[u8; 32] {
        &self.public_key
    }

    /// Signs `document` in place (adds `hub_signature`).
    pub fn sign(&self, document: &mut Map<String, Value>) {
        sign_document(document, &self.key_pair);
    }
}

/// Signs `document` (an object) with the hub's key: adds `hub_signature`.
pub fn sign_document(document: &mut Map<String, Value>, key_pair: &Ed25519KeyPair) {
    document.remove(SIGNATURE_MEMBER);
    let public_key: [u8; 32] = key_pair.public_key().as_ref().try_into().unwrap_or([0; 32]);
    let signed = canonical_json(&Value::Object(document.clone()));
    let signature = key_pair.sign(signed.as_bytes());
    document.insert(
        SIGNATURE_MEMBER.into(),
        serde_json::json!({
            "algorithm": "Ed25519",
            "key_id": hub_key_id(&public_key),
            "value": hex::encode(signature.as_ref()),
        }),
    );
}

/// Why a document did not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("the document is not a JSON object with a hub_signature member")]
    Unsigned,
    #[error("hub_signature is malformed: {0}")]
    Malformed(&'static str),
    #[error("key {0} is not one of the hub's keys given")]
    UnknownKey(String),
    #[error("the signature does not match the document: it was changed or not signed by {0}")]
    Mismatch(String),
}

/// Checks `document`'s signature against the hub's public keys `(key id, key)`; returns
/// the id of the key that signed it.
pub fn verify_document(
    document: &Value,
    keys: &[(String, [u8; 32])],
) -> Result<String, VerifyError> {
    let Value::Object(members) = document else {
        return Err(VerifyError::Unsigned);
    };
    let signature = members.get(SIGNATURE_MEMBER).ok_or(VerifyError::Unsigned)?;
    if signature["algorithm"] != "Ed25519" {
        return Err(VerifyError::Malformed("algorithm must be Ed25519"));
    }
    let key_id = signature["key_id"]
        .as_str()
        .ok_or(VerifyError::Malformed("key_id missing"))?;
    let value = signature["value"]
        .as_str()
        .and_then(|v| hex::decode(v).ok())
        .filter(|v| v.len() == 64)
        .ok_or(VerifyError::Malformed("value must be 64 bytes in hex"))?;
    let (_, public_key) = keys
        .iter()
        .find(|(id, _)| id == key_id)
        .ok_or_else(|| VerifyError::UnknownKey(key_id.chars().take(40).collect()))?;
    let mut unsigned = members.clone();
    unsigned.remove(SIGNATURE_MEMBER);
    let signed = canonical_json(&Value::Object(unsigned));
    UnparsedPublicKey::new(&ED25519, public_key)
        .verify(signed.as_bytes(), &value)
        .map_err(|_| VerifyError::Mismatch(key_id.to_owned()))?;
    Ok(key_id.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn key_pair() -> Ed25519KeyPair {
        Ed25519KeyPair::from_seed_unchecked(&[7; 32]).unwrap()
    }

    fn keys(pair: &Ed25519KeyPair) -> Vec<(String, [u8; 32])> {
        let public: [u8; 32] = pair.public_key().as_ref().try_into().unwrap();
        vec![(hub_key_id(&public), public)]
    }

    #[test]
    fn canonical_form_sorts_members_and_drops_whitespace() {
        let value = json!({"b": [1, {"z": null, "a": "二"}], "a": true, "\u{e9}": "x\"y"});
        assert_eq!(
            canonical_json(&value),
            r#"{"a":true,"b":[1,{"a":"二","z":null}],"é":"x\"y"}"#
        );
    }

    #[test]
    fn a_signed_document_verifies_and_any_change_breaks_it() {
        let pair = key_pair();
        let mut document =
            json!({"certificates": [{"fields": {"child_name": "李小明"}}], "audit_seq": 7})
                .as_object()
                .unwrap()
                .clone();
        sign_document(&mut document, &pair);
        let signed = Value::Object(document);
        let key_id = verify_document(&signed, &keys(&pair)).unwrap();
        assert!(key_id.starts_with("hub-") && key_id.len() == 20, "{key_id}");
        // Re-serialised with other whitespace and member order: still verifies.
        let reparsed: Value =
            serde_json::from_str(&serde_json::to_string_pretty(&signed).unwrap()).unwrap();
        assert!(verify_document(&reparsed, &keys(&pair)).is_ok());
        let mut changed = signed.clone();
        changed["certificates"][0]["fields"]["child_name"] = json!("李小红");
        assert_eq!(
            verify_document(&changed, &keys(&pair)),
            Err(VerifyError::Mismatch(key_id.clone()))
        );
        let mut added = signed.clone();
        added["extra"] = json!(1);
        assert!(verify_document(&added, &keys(&pair)).is_err());
        let other = Ed25519KeyPair::from_seed_unchecked(&[8; 32]).unwrap();
        assert!(matches!(
            verify_document(&signed, &keys(&other)),
            Err(VerifyError::UnknownKey(_))
        ));
        assert_eq!(
            verify_document(&json!({"a": 1}), &keys(&pair)),
            Err(VerifyError::Unsigned)
        );
    }
}
