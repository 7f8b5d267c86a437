//! Certificate encodings: URL-encoded PEM (Envoy, nginx, AWS ALB) and the
//! RFC 9440 byte sequence, both down to checked DER bytes.
//!
//! This sits on the Check path, so it makes one buffer for the percent-decoded
//! text (line breaks are dropped while decoding; other whitespace is squeezed
//! out of the PEM body in place, only if present) and one for the
//! DER; nothing else allocates.

use crate::fingerprint::hex_value;
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

/// Strict percent-decoding: a `%` must be followed by two hex digits.
/// Encoded line breaks are dropped: PEM markers hold none and the body
/// ignores them, and without them the body usually decodes in one pass.
fn percent_decode(input: &[u8]) -> Result<Vec<u8>, Problem> {
    let mut out = Vec::with_capacity(input.len());
    let mut rest = input;
    while let Some(i) = memchr::memchr(b'%', rest) {
        let at = input.len() - rest.len() + i;
        let (before, escape) = rest
            .split_at_checked(i)
            .ok_or(Problem::PercentEncoding { at })?;
        out.extend_from_slice(before);
        let byte = match escape {
            [_, hi, lo, ..] => hex_value(*hi)
                .zip(hex_value(*lo))
                .map(|(hi, lo)| (hi << 4) | lo),
            _ => None,
        }
        .ok_or(Problem::PercentEncoding { at })?;
        if byte != b'\n' && byte != b'\r' {
            out.push(byte);
        }
        rest = escape.get(3..).unwrap_or_default();
    }
    out.extend_from_slice(rest);
    Ok(out)
}

/// Reads the first PEM certificate in `text`, reusing `text` as scratch space.
fn pem_to_der(text: &mut [u8]) -> Result<Vec<u8>, Problem> {
    let start = memchr::memmem::find(text, BEGIN).ok_or(Problem::NotPem)? + BEGIN.len();
    let rest = text.get_mut(start..).ok_or(Problem::NotPem)?;
    let end = memchr::memmem::find(rest, END).ok_or(Problem::UnterminatedPem)?;
    let body = rest.get_mut(..end).ok_or(Problem::UnterminatedPem)?;
    let base64 = base64::engine::general_purpose::STANDARD;
    let der = match base64.decode(&*body) {
        Ok(der) => der,
        // Whitespace left in the body (raw PEM): squeeze it out and retry.
        Err(_) => base64
            .decode(squeeze_whitespace(body))
            .map_err(|_| Problem::PemBase64)?,
    };
    check_der(&der)?;
    Ok(der)
}

/// Moves the non-whitespace bytes of `body` to its front, a run at a time,
/// and returns them.
fn squeeze_whitespace(body: &mut [u8]) -> &[u8] {
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
    body.get(..len).unwrap_or_default()
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
        assert_eq!(percent_decode(b"a+b%2Bc%0a%0D%20").unwrap(), b"a+b+c ");
        assert_eq!(
            percent_decode(b"ab%2").unwrap_err(),
            Problem::PercentEncoding { at: 2 }
        );
        assert_eq!(
            percent_decode(b"%0Aab%2x").unwrap_err(),
            Problem::PercentEncoding { at: 5 }
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
