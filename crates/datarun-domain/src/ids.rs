//! Identifiers as newtypes whose `parse` checks format and check character.
//! After the edge, code takes these types, never a raw string it must re-check.

use crate::date::CivilDate;
use serde::{Deserialize, Serialize};

/// Why an identifier was refused; the message says exactly what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("{kind} is empty")]
    Empty { kind: &'static str },
    #[error("{kind} must be {expected} characters, got {actual}")]
    Length {
        kind: &'static str,
        expected: usize,
        actual: usize,
    },
    #[error("{kind} has '{found}' at position {position} where {expected} must be")]
    Character {
        kind: &'static str,
        position: usize,
        found: char,
        expected: &'static str,
    },
    #[error("{kind} check character is '{found}' but the other characters give '{expected}'")]
    CheckCharacter {
        kind: &'static str,
        found: char,
        expected: char,
    },
    #[error("resident ID number has birth date {0} which does not exist")]
    BirthDateInvalid(String),
    #[error("resident ID number has birth date {0} which is in the future")]
    BirthDateInFuture(String),
    #[error("{kind} '{value}' is not valid: {rule}")]
    Format {
        kind: &'static str,
        value: String,
        rule: &'static str,
    },
}

impl IdError {
    /// The same explanation without any character of the value: for messages that leave
    /// the caller (dead-letter headers, audit events), which must never carry a personal
    /// identifier or a fragment of one.
    pub fn without_values(&self) -> String {
        match self {
            Self::Empty { kind } => format!("{kind} is empty"),
            Self::Length {
                kind,
                expected,
                actual,
            } => format!("{kind} must be {expected} characters, got {actual}"),
            Self::Character {
                kind,
                position,
                expected,
                ..
            } => format!("{kind} has a character at position {position} where {expected} must be"),
            Self::CheckCharacter { kind, .. } => {
                format!("{kind} check character does not match the other characters")
            }
            Self::BirthDateInvalid(_) => {
                "resident ID number has a birth date which does not exist".into()
            }
            Self::BirthDateInFuture(_) => {
                "resident ID number has a birth date which is in the future".into()
            }
            Self::Format { kind, rule, .. } => format!("{kind} is not valid: {rule}"),
        }
    }
}

fn check_length(kind: &'static str, text: &str, expected: usize) -> Result<(), IdError> {
    let actual = text.chars().count();
    if actual == 0 {
        return Err(IdError::Empty { kind });
    }
    if actual != expected {
        return Err(IdError::Length {
            kind,
            expected,
            actual,
        });
    }
    Ok(())
}

/// An 18-character resident identity card number (GB 11643-1999): 6-digit area code,
/// birth date `YYYYMMDD`, 3-digit sequence and an ISO 7064 MOD 11-2 check character.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct ResidentId(String);

const RESIDENT_ID: &str = "resident ID number";
const MOD11_WEIGHTS: [u32; 17] = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2];
const MOD11_CHECK: [char; 11] = ['1', '0', 'X', '9', '8', '7', '6', '5', '4', '3', '2'];

impl ResidentId {
    /// Parses with today's date in China Standard Time for the future-birth-date rule.
    pub fn parse(text: &str) -> Result<Self, IdError> {
        Self::parse_on(text, today_cst())
    }

    /// Parses against a given "today"; the domain reads no clock of its own here.
    pub fn parse_on(text: &str, today: CivilDate) -> Result<Self, IdError> {
        check_length(RESIDENT_ID, text, 18)?;
        for (position, found) in text.chars().take(17).enumerate() {
            if !found.is_ascii_digit() {
                return Err(IdError::Character {
                    kind: RESIDENT_ID,
                    position: position + 1,
                    found,
                    expected: "a digit",
                });
            }
        }
        let found = text.chars().nth(17).unwrap_or_default();
        if !(found.is_ascii_digit() || found == 'X') {
            return Err(IdError::Character {
                kind: RESIDENT_ID,
                position: 18,
                found,
                expected: "a digit or upper-case X",
            });
        }
        let expected = Self::check_character(&text[..17]);
        if found != expected {
            return Err(IdError::CheckCharacter {
                kind: RESIDENT_ID,
                found,
                expected,
            });
        }
        let shown = format!("{}-{}-{}", &text[6..10], &text[10..12], &text[12..14]);
        let birth = CivilDate::new(
            text[6..10].parse().unwrap_or(0),
            text[10..12].parse().unwrap_or(0),
            text[12..14].parse().unwrap_or(0),
        )
        .ok_or_else(|| IdError::BirthDateInvalid(shown.clone()))?;
        if birth > today {
            return Err(IdError::BirthDateInFuture(shown));
        }
        Ok(Self(text.to_owned()))
    }

    /// The MOD 11-2 check character for the first 17 digits.
    pub fn check_character(first_17_digits: &str) -> char {
        let sum: u32 = first_17_digits
            .bytes()
            .zip(MOD11_WEIGHTS)
            .map(|(digit, weight)| u32::from(digit - b'0') * weight)
            .sum();
        MOD11_CHECK[(sum % 11) as usize]
    }

    pub fn birth_date(&self) -> CivilDate {
        let text = &self.0;
        CivilDate::new(
            text[6..10].parse().unwrap_or(1970),
            text[10..12].parse().unwrap_or(1),
            text[12..14].parse().unwrap_or(1),
        )
        .unwrap_or(CivilDate {
            year: 1970,
            month: 1,
            day: 1,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for ResidentId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

fn today_cst() -> CivilDate {
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as i64)
        .unwrap_or(0);
    CivilDate::from_unix_millis_cst(millis)
}

/// An 18-character unified social credit code (GB 32100-2015) for businesses and
/// organisations, whose positions 9–17 are an organisation code (GB 11714) with its own check.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct CreditCode(String);

const CREDIT_CODE: &str = "unified social credit code";
const CREDIT_ALPHABET: &str = "0123456789ABCDEFGHJKLMNPQRTUWXY";
const CREDIT_WEIGHTS: [u32; 17] = [
    1, 3, 9, 27, 19, 26, 16, 17, 20, 29, 25, 13, 8, 24, 10, 30, 28,
];
const ORG_WEIGHTS: [u32; 8] = [3, 7, 9, 10, 5, 8, 4, 2];

impl CreditCode {
    pub fn parse(text: &str) -> Result<Self, IdError> {
        check_length(CREDIT_CODE, text, 18)?;
        let mut values = Vec::with_capacity(18);
        for (position, found) in text.chars().enumerate() {
            match CREDIT_ALPHABET.find(found) {
                Some(value) => values.push(value as u32),
                None => {
                    return Err(IdError::Character {
                        kind: CREDIT_CODE,
                        position: position + 1,
                        found,
                        expected: "a digit or an upper-case letter other than I, O, S, V, Z",
                    })
                }
            }
        }
        let sum: u32 = values.iter().zip(CREDIT_WEIGHTS).map(|(v, w)| v * w).sum();
        let expected_value = (31 - sum % 31) % 31;
        let expected = CREDIT_ALPHABET.as_bytes()[expected_value as usize] as char;
        let found = text.chars().nth(17).unwrap_or_default();
        if found != expected {
            return Err(IdError::CheckCharacter {
                kind: CREDIT_CODE,
                found,
                expected,
            });
        }
        let organisation = &text[8..17];
        let org_sum: u32 = organisation
            .chars()
            .zip(ORG_WEIGHTS)
            .map(|(c, w)| c.to_digit(36).unwrap_or(0) * w)
            .sum();
        let org_expected = match 11 - org_sum % 11 {
            10 => 'X',
            11 => '0',
            digit => char::from_digit(digit, 10).unwrap_or('0'),
        };
        let org_found = text.chars().nth(16).unwrap_or_default();
        if org_found != org_expected {
            return Err(IdError::CheckCharacter {
                kind: "organisation code inside the unified social credit code",
                found: org_found,
                expected: org_expected,
            });
        }
        Ok(Self(text.to_owned()))
    }

    /// Builds a code from its registering-authority and kind characters (`91`: a
    /// business registered by market regulation), the 6-digit division and the 8-digit
    /// organisation body, computing both check characters.
    pub fn build(prefix: &str, division: &str, organisation: &str) -> Result<Self, IdError> {
        let org_sum: u32 = organisation
            .chars()
            .zip(ORG_WEIGHTS)
            .map(|(c, w)| c.to_digit(36).unwrap_or(0) * w)
            .sum();
        let org_check = match 11 - org_sum % 11 {
            10 => 'X',
            11 => '0',
            digit => char::from_digit(digit, 10).unwrap_or('0'),
        };
        let body = format!("{prefix}{division}{organisation}{org_check}");
        let sum: u32 = body
            .chars()
            .zip(CREDIT_WEIGHTS)
            .map(|(c, w)| CREDIT_ALPHABET.find(c).unwrap_or(0) as u32 * w)
            .sum();
        let check = CREDIT_ALPHABET.as_bytes()[((31 - sum % 31) % 31) as usize] as char;
        Self::parse(&format!("{body}{check}"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An electronic-certificate identifier in the style of the national e-certificate
/// identifier: `TTTT-AAAAAA-YYYY-SSSSSSSS-C` — certificate type code (4 upper-case
/// letters or digits), issuing administrative division (6 digits), year of issue,
/// serial (8 digits) and an ISO 7064 MOD 37,36 check character over the 22 characters
/// before it (dashes excluded). See `docs/identifiers.md`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct CertificateId(String);

const CERTIFICATE_ID: &str = "certificate identifier";
const MOD36_ALPHABET: &[u8; 36] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ";

impl CertificateId {
    pub fn parse(text: &str) -> Result<Self, IdError> {
        check_length(CERTIFICATE_ID, text, 27)?;
        let shape = "TTTT-AAAAAA-YYYY-SSSSSSSS-C";
        for (position, (found, slot)) in text.chars().zip(shape.chars()).enumerate() {
            let (ok, expected) = match slot {
                '-' => (found == '-', "a dash"),
                'T' | 'C' => (
                    found.is_ascii_digit() || found.is_ascii_uppercase(),
                    "a digit or upper-case letter",
                ),
                _ => (found.is_ascii_digit(), "a digit"),
            };
            if !ok {
                return Err(IdError::Character {
                    kind: CERTIFICATE_ID,
                    position: position + 1,
                    found,
                    expected,
                });
            }
        }
        let body: String = text[..25].chars().filter(|c| *c != '-').collect();
        let expected = Self::check_character(&body);
        let found = text.chars().nth(26).unwrap_or_default();
        if found != expected {
            return Err(IdError::CheckCharacter {
                kind: CERTIFICATE_ID,
                found,
                expected,
            });
        }
        Ok(Self(text.to_owned()))
    }

    /// Builds an identifier from its parts, computing the check character.
    pub fn build(type_code: &str, division: &str, year: i32, serial: u32) -> Result<Self, IdError> {
        let body = format!("{type_code}{division}{year:04}{serial:08}");
        let text = format!(
            "{type_code}-{division}-{year:04}-{serial:08}-{}",
            Self::check_character(&body)
        );
        Self::parse(&text)
    }

    /// ISO 7064 MOD 37,36 (hybrid system) check character over `0-9A-Z`.
    pub fn check_character(body: &str) -> char {
        let mut product: u32 = 36;
        for byte in body.bytes() {
            let value = MOD36_ALPHABET.iter().position(|c| *c == byte).unwrap_or(0) as u32;
            let mut sum = (product + value) % 36;
            if sum == 0 {
                sum = 36;
            }
            product = (sum * 2) % 37;
        }
        MOD36_ALPHABET[((37 - product) % 36) as usize] as char
    }

    pub fn type_code(&self) -> &str {
        &self.0[..4]
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

macro_rules! text_identifier {
    ($(#[$doc:meta])* $name:ident, $kind:literal, $rule:literal, $valid:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub fn parse(text: &str) -> Result<Self, IdError> {
                if text.is_empty() {
                    return Err(IdError::Empty { kind: $kind });
                }
                let valid: fn(&str) -> bool = $valid;
                if !valid(text) {
                    return Err(IdError::Format { kind: $kind, value: text.to_owned(), rule: $rule });
                }
                Ok(Self(text.to_owned()))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = String::deserialize(deserializer)?;
                Self::parse(&text).map_err(serde::de::Error::custom)
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

fn is_slug(text: &str, max: usize) -> bool {
    text.len() <= max
        && text.starts_with(|c: char| c.is_ascii_lowercase())
        && text
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

text_identifier!(
    /// A registered department, e.g. `health`, `public_security`.
    DepartmentId, "department id", "lower-case letters, digits and _, starting with a letter, at most 40", |t| is_slug(t, 40)
);
text_identifier!(
    /// A purpose code from the registered catalogue, e.g. `household_registration`.
    PurposeCode, "purpose code", "lower-case letters, digits and _, starting with a letter, at most 60", |t| is_slug(t, 60)
);
text_identifier!(
    /// `<department>.<record>`, e.g. `health.birth_certificate`.
    RecordType, "record type", "<department>.<record>, each lower-case letters, digits and _", |t| {
        matches!(t.split_once('.'), Some((d, r)) if is_slug(d, 40) && is_slug(r, 60))
    }
);
text_identifier!(
    /// A signing key's id in the trust registry, e.g. `health-2026`.
    KeyId, "key id", "1-64 characters from a-z, A-Z, 0-9, '-', '_', '.'", |t| {
        t.len() <= 64 && t.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    }
);
text_identifier!(
    /// A record's unique id, chosen by the publisher: 1-128 characters.
    RecordId, "record id", "1-128 characters from a-z, A-Z, 0-9, '-', '_', '.', ':'", |t| {
        t.len() <= 128 && t.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
    }
);

impl RecordType {
    /// The department part of the record type.
    pub fn department_part(&self) -> &str {
        self.0.split_once('.').map(|(d, _)| d).unwrap_or_default()
    }
}

impl std::fmt::Display for ResidentId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::fmt::Display for CertificateId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn known_answers() -> serde_json::Value {
        let text = include_str!("../../../testdata/identifiers.json");
        serde_json::from_str(text).expect("testdata/identifiers.json is JSON")
    }

    fn today() -> CivilDate {
        CivilDate::new(2026, 11, 22).unwrap()
    }

    #[test]
    fn resident_id_known_answers() {
        let cases = known_answers();
        for valid in cases["resident_id"]["valid"].as_array().unwrap() {
            let text = valid.as_str().unwrap();
            assert!(
                ResidentId::parse_on(text, today()).is_ok(),
                "{text} should be valid"
            );
        }
        for invalid in cases["resident_id"]["invalid"].as_array().unwrap() {
            let text = invalid["value"].as_str().unwrap();
            assert!(
                ResidentId::parse_on(text, today()).is_err(),
                "{text:?} should be refused: {}",
                invalid["reason"]
            );
        }
    }

    fn check_resident(input: &str, expected: &str) {
        let error = ResidentId::parse_on(input, today()).unwrap_err();
        assert_eq!(error.to_string(), expected, "{input:?}");
    }

    #[test]
    fn resident_id_errors_say_what_is_wrong() {
        check_resident(
            "440104198503121230",
            "resident ID number check character is '0' but the other characters give '4'",
        );
        check_resident(
            "440104199002300116",
            "resident ID number has birth date 1990-02-30 which does not exist",
        );
        check_resident(
            "440104194902290117",
            "resident ID number has birth date 1949-02-29 which does not exist",
        );
        check_resident(
            "440104210101010119",
            "resident ID number has birth date 2101-01-01 which is in the future",
        );
        check_resident(
            "44010419850312123",
            "resident ID number must be 18 characters, got 17",
        );
        check_resident(
            "4401041985031212341",
            "resident ID number must be 18 characters, got 19",
        );
        check_resident(
            "4401041985A3121234",
            "resident ID number has 'A' at position 11 where a digit must be",
        );
        check_resident("", "resident ID number is empty");
        check_resident(
            " 440104198503121234",
            "resident ID number must be 18 characters, got 19",
        );
        check_resident(
            "44010419850312518x",
            "resident ID number has 'x' at position 18 where a digit or upper-case X must be",
        );
    }

    #[test]
    fn messages_without_values_carry_no_fragment_of_the_identifier() {
        let cases = known_answers();
        for invalid in cases["resident_id"]["invalid"].as_array().unwrap() {
            let text = invalid["value"].as_str().unwrap();
            let message = ResidentId::parse_on(text, today())
                .unwrap_err()
                .without_values();
            assert!(!message.contains('\''), "{message}");
            let digits: String = text.chars().filter(char::is_ascii_digit).collect();
            for window in digits.as_bytes().windows(4) {
                let fragment = std::str::from_utf8(window).unwrap();
                assert!(
                    !message.contains(fragment),
                    "{message:?} carries {fragment} of {text:?}"
                );
            }
        }
        let error = RecordId::parse("health record").unwrap_err();
        assert!(!error.without_values().contains("health record"));
    }

    #[test]
    fn credit_code_known_answers() {
        let cases = known_answers();
        for valid in cases["unified_social_credit_code"]["valid"]
            .as_array()
            .unwrap()
        {
            let text = valid.as_str().unwrap();
            assert!(CreditCode::parse(text).is_ok(), "{text} should be valid");
        }
        for invalid in cases["unified_social_credit_code"]["invalid"]
            .as_array()
            .unwrap()
        {
            let text = invalid["value"].as_str().unwrap();
            assert!(
                CreditCode::parse(text).is_err(),
                "{text:?}: {}",
                invalid["reason"]
            );
        }
        assert_eq!(
            CreditCode::parse("9144010105DFNF7L9I").unwrap_err().to_string(),
            "unified social credit code has 'I' at position 18 where a digit or an upper-case letter other than I, O, S, V, Z must be"
        );
    }

    #[test]
    fn built_credit_codes_are_the_known_answers() {
        let cases = known_answers();
        for valid in cases["unified_social_credit_code"]["valid"]
            .as_array()
            .unwrap()
        {
            let text = valid.as_str().unwrap();
            let built = CreditCode::build(&text[..2], &text[2..8], &text[8..16]).unwrap();
            assert_eq!(built.as_str(), text);
        }
    }

    #[test]
    fn certificate_id_round_trips_and_catches_every_single_substitution() {
        let id = CertificateId::build("H001", "440100", 2026, 42).unwrap();
        assert_eq!(CertificateId::parse(id.as_str()).unwrap(), id);
        assert_eq!(id.type_code(), "H001");
        // MOD 37,36 detects every single-character substitution.
        let text = id.as_str();
        for (position, original) in text.char_indices() {
            if original == '-' {
                continue;
            }
            for replacement in MOD36_ALPHABET.iter().map(|b| *b as char) {
                if replacement == original {
                    continue;
                }
                let mut changed = text.to_owned();
                changed.replace_range(position..position + 1, &replacement.to_string());
                assert!(
                    CertificateId::parse(&changed).is_err(),
                    "{changed} accepted"
                );
            }
        }
    }

    #[test]
    fn certificate_id_errors_say_what_is_wrong() {
        assert_eq!(
            CertificateId::parse("H001-440100-2026-0000004")
                .unwrap_err()
                .to_string(),
            "certificate identifier must be 27 characters, got 24"
        );
        assert_eq!(
            CertificateId::parse("H001_440100-2026-00000042-0")
                .unwrap_err()
                .to_string(),
            "certificate identifier has '_' at position 5 where a dash must be"
        );
    }

    #[test]
    fn slugs_are_checked() {
        assert!(DepartmentId::parse("health").is_ok());
        assert!(DepartmentId::parse("Health").is_err());
        assert!(RecordType::parse("health.birth_certificate").is_ok());
        assert_eq!(
            RecordType::parse("health.birth_certificate")
                .unwrap()
                .department_part(),
            "health"
        );
        assert!(RecordType::parse("birth_certificate").is_err());
        assert!(KeyId::parse("health-2026").is_ok());
        assert!(KeyId::parse("health 2026").is_err());
    }
}
