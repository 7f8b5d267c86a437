//! `x-forwarded-client-cert` (XFCC): a quote-aware scanner and the choice of
//! the trusted element's `Cert` value.
//!
//! Grammar, as Envoy writes it: `,` separates elements, `;` separates pairs,
//! `=` splits key from value, and a value may be double-quoted, in which case
//! `,`, `;` and `=` are literal and `\"` (or `\\`) escapes the next
//! character; any other backslash is kept as is, as Envoy does not escape it.
//! Keys are case-insensitive. Anything that does not fit (a stray quote, a
//! pair without `=`, an empty element) refuses the whole header, because a
//! lenient parser is where a forged second `Cert` would hide.

use std::borrow::Cow;

use super::{IdentityError, Problem, Source, XfccElement, url_pem_to_der};

fn invalid(problem: Problem) -> IdentityError {
    IdentityError::Invalid {
        origin: Some(Source::Xfcc),
        problem,
    }
}

/// Parses an XFCC value into its elements of unescaped `(key, value)` pairs;
/// keys keep the case they were sent in. An empty value has no elements.
pub fn parse_xfcc(value: &str) -> Result<Vec<Vec<(String, String)>>, IdentityError> {
    let mut elements = Vec::new();
    if value.trim().is_empty() {
        return Ok(elements);
    }
    let mut scanner = Scanner::new(value);
    let mut current = Vec::new();
    while let Some(pair) = scanner.next_pair().map_err(invalid)? {
        current.push((pair.key.to_owned(), pair.value.into_owned()));
        if pair.ends_element {
            elements.push(std::mem::take(&mut current));
        }
    }
    Ok(elements)
}

/// The DER certificate in the chosen element's single `Cert` key.
pub fn xfcc_certificate(value: &str, element: XfccElement) -> Result<Vec<u8>, IdentityError> {
    let mut scanner = Scanner::new(value);
    let mut elements = 0usize;
    let mut current = Slot::Absent;
    let mut chosen = Slot::Absent;
    while let Some(pair) = scanner.next_pair().map_err(invalid)? {
        if pair.key.eq_ignore_ascii_case("cert") {
            current = match current {
                Slot::Absent => Slot::One(pair.value),
                Slot::One(_) | Slot::Duplicate => Slot::Duplicate,
            };
        }
        if pair.ends_element {
            elements += 1;
            let slot = std::mem::replace(&mut current, Slot::Absent);
            match element {
                XfccElement::Only if elements > 1 => {
                    return Err(invalid(Problem::MultipleElements));
                }
                XfccElement::First if elements > 1 => {}
                XfccElement::Only | XfccElement::First | XfccElement::Last => chosen = slot,
            }
        }
    }
    match chosen {
        Slot::One(cert) => url_pem_to_der(&cert).map_err(|e| match e {
            IdentityError::Invalid { problem, .. } => invalid(problem),
            IdentityError::Missing => IdentityError::Missing,
        }),
        Slot::Duplicate => Err(invalid(Problem::DuplicateCert)),
        Slot::Absent => Err(invalid(Problem::MissingCert)),
    }
}

/// The `Cert` key(s) seen in one element.
enum Slot<'a> {
    Absent,
    One(Cow<'a, str>),
    Duplicate,
}

struct Pair<'a> {
    key: &'a str,
    value: Cow<'a, str>,
    ends_element: bool,
}

/// Yields pairs without allocating unless a quoted value holds an escape.
struct Scanner<'a> {
    input: &'a str,
    pos: usize,
    done: bool,
}

fn is_ows(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

impl<'a> Scanner<'a> {
    fn new(input: &'a str) -> Self {
        Self {
            input,
            pos: 0,
            done: false,
        }
    }

    fn skip_ows(&self, mut i: usize) -> usize {
        while self.input.as_bytes().get(i).copied().is_some_and(is_ows) {
            i += 1;
        }
        i
    }

    /// Slices at ASCII delimiters only, so this never splits a character.
    fn slice(&self, from: usize, to: usize) -> Result<&'a str, Problem> {
        self.input
            .get(from..to)
            .ok_or(Problem::ExpectedPair { at: from })
    }

    fn next_pair(&mut self) -> Result<Option<Pair<'a>>, Problem> {
        if self.done {
            return Ok(None);
        }
        let bytes = self.input.as_bytes();
        let start = self.skip_ows(self.pos);
        let mut i = start;
        loop {
            match bytes.get(i) {
                Some(b'=') => break,
                Some(b'"') => return Err(Problem::StrayQuote { at: i }),
                Some(b',' | b';') | None => return Err(Problem::ExpectedPair { at: start }),
                Some(_) => i += 1,
            }
        }
        let key = self.slice(start, i)?.trim_end_matches([' ', '\t']);
        if key.is_empty() {
            return Err(Problem::ExpectedPair { at: start });
        }
        let value_start = self.skip_ows(i + 1);
        let (value, after) = if bytes.get(value_start) == Some(&b'"') {
            let (value, close) = self.quoted(value_start)?;
            (value, self.skip_ows(close + 1))
        } else {
            self.unquoted(value_start)?
        };
        let ends_element = match bytes.get(after) {
            None => {
                self.done = true;
                true
            }
            Some(b';') => false,
            Some(b',') => true,
            Some(_) => return Err(Problem::AfterQuote { at: after }),
        };
        self.pos = after + 1;
        Ok(Some(Pair {
            key,
            value,
            ends_element,
        }))
    }

    /// Reads a value up to `,`, `;` or the end; returns it and the end index.
    fn unquoted(&self, from: usize) -> Result<(Cow<'a, str>, usize), Problem> {
        let tail = self.input.as_bytes().get(from..).unwrap_or_default();
        let i = from + memchr::memchr3(b'"', b',', b';', tail).unwrap_or(tail.len());
        if self.input.as_bytes().get(i) == Some(&b'"') {
            return Err(Problem::StrayQuote { at: i });
        }
        let value = self.slice(from, i)?.trim_end_matches([' ', '\t']);
        Ok((Cow::Borrowed(value), i))
    }

    /// Reads a quoted value whose opening quote is at `open`; returns the
    /// unescaped value and the index of the closing quote.
    fn quoted(&self, open: usize) -> Result<(Cow<'a, str>, usize), Problem> {
        let bytes = self.input.as_bytes();
        let mut owned: Option<String> = None;
        let mut segment = open + 1;
        let mut i = open + 1;
        loop {
            let tail = bytes.get(i..).unwrap_or_default();
            i += memchr::memchr2(b'"', b'\\', tail)
                .ok_or(Problem::UnterminatedQuote { at: open })?;
            match (bytes.get(i), bytes.get(i + 1)) {
                (Some(b'\\'), Some(b'"' | b'\\')) => {
                    owned
                        .get_or_insert_with(String::new)
                        .push_str(self.slice(segment, i)?);
                    segment = i + 1;
                    i += 2;
                }
                (Some(b'"'), _) => break,
                _ => i += 1,
            }
        }
        let tail = self.slice(segment, i)?;
        let value = match owned {
            None => Cow::Borrowed(tail),
            Some(mut s) => {
                s.push_str(tail);
                Cow::Owned(s)
            }
        };
        Ok((value, i))
    }
}
