//! Certificate encodings: URL-encoded PEM (Envoy, nginx, AWS ALB) and the
//! RFC 9440 byte sequence, both down to checked DER bytes.
//!
//! This sits on the Check path, so it makes one buffer for the percent-decoded
//! text (whitespace is squeezed out of the PEM body in place) and one for the
//! DER; nothing else allocates.

use base64::Engine as _;

use super::{IdentityError, Problem};

const BEGIN: &[u8] = b"-----BEGIN CERTIFICATE-----";
const END: &[u8] = b"-----END CERTIFICATE-----";

fn invalid(problem: Problem) -> IdentityError {
    IdentityError::Invalid {
        origin: None,
        problem,
    }
}

/// Percent-decodes `value` (never form-decodes: `+` stays `+`) and reads the
/// PEM certificate in it. Text before the first `BEGIN CERTIFICATE` line and
/// after its `END` line is ignored, so for a chain the first block (the leaf)
/// is taken.
pub fn url_pem_to_der(value: &str) -> Result<Vec<u8>, IdentityError> {
    let mut text = percent_decode(value.as_bytes()).map_err(invalid)?;
    pem_to_der(&mut text).map_err(invalid)
}

/// Decodes an RFC 9440 `client-cert` value, `:<standard base64 DER>:`.
pub fn client_cert_header_to_der(value: &str) -> Result<Vec<u8>, IdentityError> {
    let inner = value
        .trim_matches([' ', '\t'])
        .strip_prefix(':')
        .and_then(|v| v.strip_suffix(':'))
        .ok_or(invalid(Problem::NotByteSequence))?;
    let der = base64::engine::general_purpose::STANDARD
        .decode(inner)
        .map_err(|_| invalid(Problem::NotByteSequence))?;
    check_der(&der).map_err(invalid)?;
    Ok(der)
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Strict percent-decoding: a `%` must be followed by two hex digits.
fn percent_decode(input: &[u8]) -> Result<Vec<u8>, Problem> {
    let mut out = Vec::with_capacity(input.len());
    let mut parts = input.split(|&b| b == b'%');
    out.extend_from_slice(parts.next().unwrap_or_default());
    for part in parts {
        let at = out.len();
        let byte = match part {
            [hi, lo, ..] => hex_value(*hi)
                .zip(hex_value(*lo))
                .map(|(hi, lo)| (hi << 4) | lo),
            _ => None,
        };
        // `at` counts decoded bytes; good enough to find the spot in a log.
        out.push(byte.ok_or(Problem::PercentEncoding { at })?);
        out.extend_from_slice(part.get(2..).unwrap_or_default());
    }
    Ok(out)
}

/// Jumps between occurrences of the needle's first byte: a certificate body
/// is base64, which has no `-`, so this touches each byte about once.
fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    let first = *needle.first()?;
    let mut from = 0;
    loop {
        let at = from + haystack.get(from..)?.iter().position(|&b| b == first)?;
        if haystack.get(at..)?.starts_with(needle) {
            return Some(at);
        }
        from = at + 1;
    }
}

/// Reads the first PEM certificate in `text`, reusing `text` as scratch space.
fn pem_to_der(text: &mut [u8]) -> Result<Vec<u8>, Problem> {
    let start = find(text, BEGIN).ok_or(Problem::NotPem)? + BEGIN.len();
    let rest = text.get_mut(start..).ok_or(Problem::NotPem)?;
    let end = find(rest, END).ok_or(Problem::UnterminatedPem)?;
    let body = rest.get_mut(..end).ok_or(Problem::UnterminatedPem)?;
    // Squeeze out line breaks and spaces in place, a line at a time.
    let mut len = 0;
    let mut read = 0;
    while let Some(tail) = body.get(read..) {
        let Some(skip) = tail.iter().position(|b| !b.is_ascii_whitespace()) else {
            break;
        };
        let start = read + skip;
        let run = body
            .get(start..)
            .and_then(|t| t.iter().position(u8::is_ascii_whitespace))
            .unwrap_or(body.len() - start);
        body.copy_within(start..start + run, len);
        len += run;
        read = start + run;
    }
    let body = body.get(..len).unwrap_or_default();
    let der = base64::engine::general_purpose::STANDARD
        .decode(body)
        .map_err(|_| Problem::PemBase64)?;
    check_der(&der)?;
    Ok(der)
}

/// Checks that `der` is one ASN.1 SEQUENCE spanning all of it whose content
/// starts with another SEQUENCE (the TBSCertificate). Not a full X.509 parse:
/// enough to refuse garbage before it is hashed and looked up.
pub(super) fn check_der(der: &[u8]) -> Result<(), Problem> {
    let [0x30, first_len, rest @ ..] = der else {
        return Err(Problem::NotDer);
    };
    let (len, content) = match *first_len {
        n @ 0..=0x7f => (usize::from(n), rest),
        // 0x80 is the indefinite form, not allowed in DER; a certificate
        // never needs more than four length bytes.
        n @ 0x81..=0x84 => {
            let count = usize::from(n & 0x7f);
            let bytes = rest.get(..count).ok_or(Problem::NotDer)?;
            let len = bytes
                .iter()
                .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
            (len, rest.get(count..).ok_or(Problem::NotDer)?)
        }
        _ => return Err(Problem::NotDer),
    };
    if len != content.len() || content.first() != Some(&0x30) {
        return Err(Problem::NotDer);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decode_is_strict_and_keeps_plus() {
        assert_eq!(percent_decode(b"a+b%2Bc%0a").unwrap(), b"a+b+c\n");
        assert_eq!(
            percent_decode(b"ab%2").unwrap_err(),
            Problem::PercentEncoding { at: 2 }
        );
        assert_eq!(
            percent_decode(b"%zz").unwrap_err(),
            Problem::PercentEncoding { at: 0 }
        );
        assert_eq!(percent_decode(b"").unwrap(), b"");
    }

    #[test]
    fn der_length_forms() {
        assert_eq!(check_der(&[0x30, 0x02, 0x30, 0x00]), Ok(()));
        assert_eq!(check_der(&[0x30, 0x81, 0x02, 0x30, 0x00]), Ok(()));
        assert_eq!(check_der(&[0x30, 0x82, 0x00, 0x02, 0x30, 0x00]), Ok(()));
        // Length longer or shorter than the bytes.
        assert_eq!(check_der(&[0x30, 0x03, 0x30, 0x00]), Err(Problem::NotDer));
        assert_eq!(check_der(&[0x30, 0x01, 0x30, 0x00]), Err(Problem::NotDer));
        // Indefinite length, too many length bytes, truncated length.
        assert_eq!(check_der(&[0x30, 0x80, 0x30, 0x00]), Err(Problem::NotDer));
        assert_eq!(
            check_der(&[0x30, 0x85, 0, 0, 0, 0, 2, 0x30, 0]),
            Err(Problem::NotDer)
        );
        assert_eq!(check_der(&[0x30, 0x82, 0x00]), Err(Problem::NotDer));
        // Not a SEQUENCE outside or inside.
        assert_eq!(check_der(&[0x31, 0x02, 0x30, 0x00]), Err(Problem::NotDer));
        assert_eq!(check_der(&[0x30, 0x02, 0x02, 0x00]), Err(Problem::NotDer));
        assert_eq!(check_der(&[]), Err(Problem::NotDer));
    }

    #[test]
    fn pem_errors() {
        let mut no_begin = b"hello".to_vec();
        assert_eq!(pem_to_der(&mut no_begin), Err(Problem::NotPem));
        let mut no_end = b"-----BEGIN CERTIFICATE-----\nMAA=\n".to_vec();
        assert_eq!(pem_to_der(&mut no_end), Err(Problem::UnterminatedPem));
        let mut bad_b64 = b"-----BEGIN CERTIFICATE-----\nM*A=\n-----END CERTIFICATE-----".to_vec();
        assert_eq!(pem_to_der(&mut bad_b64), Err(Problem::PemBase64));
        let mut not_der = b"-----BEGIN CERTIFICATE-----\nMAA=\n-----END CERTIFICATE-----".to_vec();
        assert_eq!(pem_to_der(&mut not_der), Err(Problem::NotDer));
        let mut ok =
            b"junk\n-----BEGIN CERTIFICATE-----\r\n MAIw\n AA== \n-----END CERTIFICATE-----\n"
                .to_vec();
        assert_eq!(pem_to_der(&mut ok), Ok(vec![0x30, 0x02, 0x30, 0x00]));
    }
}
