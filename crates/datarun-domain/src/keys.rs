//! Ed25519 private keys in the formats every tool reads: PKCS#8 v1 (RFC 8410) as DER or
//! PEM. ring writes PKCS#8 v2 (with the public key embedded), which OpenSSL 3 and Python
//! `cryptography` refuse; the hub writes v1 and reads v1, v2 and PEM.

use ring::signature::{Ed25519KeyPair, KeyPair};

/// The fixed DER prefix of an RFC 8410 Ed25519 `OneAsymmetricKey` (version 0), before
/// the 32-byte seed: SEQUENCE { INTEGER 0, SEQUENCE { OID 1.3.101.112 }, OCTET STRING {
/// OCTET STRING (32) } }.
const PKCS8_V1_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// The DER prefix of an Ed25519 `SubjectPublicKeyInfo`, before the 32-byte public key.
const SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

const PRIVATE_KEY_LABEL: &str = "PRIVATE KEY";
const PUBLIC_KEY_LABEL: &str = "PUBLIC KEY";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("not a PEM document with a PRIVATE KEY block: {0}")]
    Pem(String),
    #[error("not an Ed25519 private key in PKCS#8 (v1 or v2)")]
    NotEd25519,
}

/// The PKCS#8 v1 DER document of the Ed25519 key with this 32-byte seed.
pub fn pkcs8_v1_der(seed: &[u8; 32]) -> Vec<u8> {
    let mut der = PKCS8_V1_PREFIX.to_vec();
    der.extend_from_slice(seed);
    der
}

/// `der` as a PEM document.
pub fn to_pem(label: &'static str, der: &[u8]) -> String {
    // Encoding into a String cannot fail for a valid label and any bytes.
    pem_rfc7468::encode_string(label, pem_rfc7468::LineEnding::LF, der).unwrap_or_default()
}

/// The PKCS#8 v1 PEM document (`-----BEGIN PRIVATE KEY-----`) of the key with this seed.
pub fn pkcs8_v1_pem(seed: &[u8; 32]) -> String {
    to_pem(PRIVATE_KEY_LABEL, &pkcs8_v1_der(seed))
}

/// The `SubjectPublicKeyInfo` PEM of an Ed25519 public key (`openssl pkey -pubin` reads it).
pub fn public_key_pem(public_key: &[u8; 32]) -> String {
    let mut der = SPKI_PREFIX.to_vec();
    der.extend_from_slice(public_key);
    to_pem(PUBLIC_KEY_LABEL, &der)
}

/// Reads an Ed25519 private key file's bytes: PKCS#8 v1 or v2, as DER or PEM.
pub fn parse_private_key(bytes: &[u8]) -> Result<Ed25519KeyPair, KeyError> {
    let der;
    let document = if bytes.trim_ascii_start().starts_with(b"-----BEGIN") {
        let (label, decoded) = pem_rfc7468::decode_vec(bytes.trim_ascii())
            .map_err(|error| KeyError::Pem(error.to_string()))?;
        if label != PRIVATE_KEY_LABEL {
            return Err(KeyError::Pem(format!("the block is {label}")));
        }
        der = decoded;
        der.as_slice()
    } else {
        bytes
    };
    Ed25519KeyPair::from_pkcs8_maybe_unchecked(document).map_err(|_| KeyError::NotEd25519)
}

/// The 32-byte public key of a key pair.
pub fn public_key(key_pair: &Ed25519KeyPair) -> [u8; 32] {
    let mut public = [0u8; 32];
    public.copy_from_slice(key_pair.public_key().as_ref());
    public
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 8410 section 10.3's example private key.
    const RFC8410_PEM: &str = "-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEINTuctv5E1hK1bbY8fdp+K06/nwoy/HU++CXqI9EdVhC
-----END PRIVATE KEY-----
";

    #[test]
    fn writes_what_rfc_8410_specifies() {
        let seed: [u8; 32] =
            hex::decode("d4ee72dbf913584ad5b6d8f1f769f8ad3afe7c28cbf1d4fbe097a88f44755842")
                .unwrap()
                .try_into()
                .unwrap();
        assert_eq!(pkcs8_v1_pem(&seed), RFC8410_PEM);
        let key_pair = parse_private_key(RFC8410_PEM.as_bytes()).unwrap();
        assert_eq!(
            hex::encode(public_key(&key_pair)),
            "19bf44096984cdfe8541bac167dc3b96c85086aa30b6b6cb0c5c38ad703166e1"
        );
        let from_der = parse_private_key(&pkcs8_v1_der(&seed)).unwrap();
        assert_eq!(public_key(&from_der), public_key(&key_pair));
        assert!(public_key_pem(&public_key(&key_pair)).starts_with("-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE="));
    }

    #[test]
    fn reads_ring_v2_documents_and_refuses_others() {
        let random = ring::rand::SystemRandom::new();
        let v2 = Ed25519KeyPair::generate_pkcs8(&random).unwrap();
        assert!(parse_private_key(v2.as_ref()).is_ok());
        assert_eq!(
            parse_private_key(b"not a key").unwrap_err(),
            KeyError::NotEd25519
        );
        let public = to_pem(PUBLIC_KEY_LABEL, &[1, 2, 3]);
        assert!(matches!(
            parse_private_key(public.as_bytes()),
            Err(KeyError::Pem(_))
        ));
    }
}
