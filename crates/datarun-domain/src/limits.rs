//! Bounds on everything a publisher sends, checked before anything else reads it, so
//! that no single message can exhaust the hub or make its dead-letter copy undeliverable.

use crate::envelope::header;
use crate::reason::{RejectReason, Rejection};

/// The largest Avro payload (the Kafka value) the hub accepts.
pub const MAX_VALUE_BYTES: usize = 1 << 20;
/// The largest Kafka message key (the subject's identifier, in practice).
pub const MAX_KEY_BYTES: usize = 256;
/// The most headers a message may carry: the envelope's eight and room for tracing.
pub const MAX_HEADERS: usize = 32;
/// The longest header name.
pub const MAX_HEADER_NAME_BYTES: usize = 64;
/// The longest value of a header that is not part of the envelope (tracing and the like).
pub const MAX_HEADER_VALUE_BYTES: usize = 1024;
/// The longest envelope header value: the signature's 128 hex characters.
pub const MAX_ENVELOPE_HEADER_BYTES: usize = 128;

/// A header name as it may appear in a rejection's field path: printable ASCII, bounded.
pub fn printable_name(name: &[u8]) -> String {
    let mut shown: String = name
        .iter()
        .take(MAX_HEADER_NAME_BYTES)
        .map(|&b| if b.is_ascii_graphic() { b as char } else { '?' })
        .collect();
    if name.len() > MAX_HEADER_NAME_BYTES {
        shown.push('…');
    }
    shown
}

/// Checks every bound of a message and that no envelope header appears twice.
pub fn check_message(
    key: Option<&[u8]>,
    value: &[u8],
    headers: &[(&[u8], &[u8])],
) -> Result<(), Rejection> {
    if headers.len() > MAX_HEADERS {
        return Err(Rejection::new(
            RejectReason::Oversized,
            format!(
                "the message has {} headers, at most {MAX_HEADERS} are allowed",
                headers.len()
            ),
        ));
    }
    for (name, header_value) in headers {
        if name.len() > MAX_HEADER_NAME_BYTES {
            return Err(Rejection::at(
                RejectReason::Oversized,
                printable_name(name),
                format!(
                    "a header name is {} bytes, at most {MAX_HEADER_NAME_BYTES} are allowed",
                    name.len()
                ),
            ));
        }
        let envelope = header::ALL.iter().any(|h| h.as_bytes() == *name);
        let limit = if envelope {
            MAX_ENVELOPE_HEADER_BYTES
        } else {
            MAX_HEADER_VALUE_BYTES
        };
        if header_value.len() > limit {
            return Err(Rejection::at(
                RejectReason::Oversized,
                printable_name(name),
                format!(
                    "the header value is {} bytes, at most {limit} are allowed",
                    header_value.len()
                ),
            ));
        }
    }
    if let Some(key) = key.filter(|key| key.len() > MAX_KEY_BYTES) {
        return Err(Rejection::at(
            RejectReason::Oversized,
            "key",
            format!(
                "the message key is {} bytes, at most {MAX_KEY_BYTES} are allowed",
                key.len()
            ),
        ));
    }
    if value.len() > MAX_VALUE_BYTES {
        return Err(Rejection::at(
            RejectReason::Oversized,
            "value",
            format!(
                "the payload is {} bytes, at most {MAX_VALUE_BYTES} are allowed",
                value.len()
            ),
        ));
    }
    for name in header::ALL {
        let count = headers
            .iter()
            .filter(|(h, _)| *h == name.as_bytes())
            .count();
        if count > 1 {
            return Err(Rejection::at(
                RejectReason::EnvelopeInvalid,
                name,
                format!("the header appears {count} times; an envelope header must appear once"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(
        key: usize,
        value: usize,
        headers: &[(&[u8], usize)],
        expected: Option<(RejectReason, &str)>,
    ) {
        let key = vec![b'k'; key];
        let value = vec![0u8; value];
        let values: Vec<Vec<u8>> = headers.iter().map(|(_, n)| vec![b'v'; *n]).collect();
        let pairs: Vec<(&[u8], &[u8])> = headers
            .iter()
            .zip(&values)
            .map(|((name, _), v)| (*name, v.as_slice()))
            .collect();
        let got = check_message(Some(&key), &value, &pairs)
            .err()
            .map(|r| (r.reason, r.field.unwrap_or_default()));
        assert_eq!(
            got,
            expected.map(|(reason, field)| (reason, field.to_owned())),
            "{headers:?}"
        );
    }

    #[test]
    fn bounds() {
        use RejectReason::*;
        let record_id = header::RECORD_ID.as_bytes();
        let signature = header::SIGNATURE.as_bytes();
        check(18, 500, &[(record_id, 40), (signature, 128)], None);
        check(18, MAX_VALUE_BYTES, &[], None);
        check(18, MAX_VALUE_BYTES + 1, &[], Some((Oversized, "value")));
        check(MAX_KEY_BYTES + 1, 10, &[], Some((Oversized, "key")));
        check(
            18,
            10,
            &[(record_id, 600_000)],
            Some((Oversized, header::RECORD_ID)),
        );
        check(18, 10, &[(b"traceparent", MAX_HEADER_VALUE_BYTES)], None);
        check(
            18,
            10,
            &[(b"traceparent", MAX_HEADER_VALUE_BYTES + 1)],
            Some((Oversized, "traceparent")),
        );
        let long_name = vec![b'h'; 70];
        let shown = printable_name(&long_name);
        check(
            18,
            10,
            &[(&long_name, 1)],
            Some((Oversized, shown.as_str())),
        );
        let many: Vec<(&[u8], usize)> = (0..MAX_HEADERS + 1).map(|_| (&b"x"[..], 1)).collect();
        check(18, 10, &many, Some((Oversized, "")));
        check(
            18,
            10,
            &[(signature, 128), (signature, 128)],
            Some((EnvelopeInvalid, header::SIGNATURE)),
        );
        // Repeated non-envelope headers are someone else's business.
        check(18, 10, &[(b"trace", 1), (b"trace", 1)], None);
    }

    #[test]
    fn header_names_are_shown_printable_and_bounded() {
        assert_eq!(printable_name(b"a\nb\xff"), "a?b?");
        assert_eq!(printable_name(&[b'x'; 100]).chars().count(), 65);
    }
}
