//! [`Fault::Endless`](super::Fault::Endless): a 200 whose body starts as
//! the endpoint's answer and never ends, plain or gzip, as a broken or
//! hostile Fleet could send. Gzip compresses the repeated rows about a
//! hundredfold or more, so a few megabytes on the wire inflate to gigabytes.

use axum::{
    body::{Body, Bytes},
    http::{HeaderValue, header},
    response::{IntoResponse, Response},
};

use super::spec::Shared;

/// Rows repeated per chunk (a chunk is then 30-60 KiB).
const ROWS_PER_CHUNK: usize = 1000;

/// The opening of `label`'s answer and one row that repeats after it.
fn opening_and_row(label: &str) -> (&'static str, &'static str) {
    match label {
        "query_report" => (
            r#"{"query_id":42,"report_clipped":false,"results":["#,
            r#"{"host_id":1,"host_name":"endless","columns":{"sha1":"ABCDEF0123456789ABCDEF0123456789ABCDEF01"}},"#,
        ),
        "host" => (
            r#"{"host":{"id":1,"hostname":"endless","software":["#,
            r#"{"id":1,"name":"endless","version":"1.0","source":"apps","vulnerabilities":[]},"#,
        ),
        _ => (
            r#"{"hosts":["#,
            r#"{"id":1,"hostname":"endless","platform":"darwin"},"#,
        ),
    }
}

/// A gzip member header: deflate, no name, no time, unknown OS.
const GZIP_HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];

/// `plain` as a raw deflate block ending in a full flush: it refers to
/// nothing before it, so it may be sent again and again in one stream,
/// costing the fake no CPU per chunk however fast the client reads.
fn deflate_block(plain: &[u8]) -> Bytes {
    let mut deflate = flate2::Compress::new(flate2::Compression::default(), false);
    let mut out = Vec::with_capacity(plain.len() + 1024);
    deflate
        .compress_vec(plain, &mut out, flate2::FlushCompress::Full)
        .unwrap();
    assert_eq!(deflate.total_in(), plain.len() as u64);
    Bytes::from(out)
}

/// The endless answer to `label`; every chunk sent is added to its byte count.
pub(super) fn endless(state: &Shared, label: &str, gzip: bool) -> Response {
    let (opening, row) = opening_and_row(label);
    let rows = row.repeat(ROWS_PER_CHUNK);
    let (mut first, repeated) = if gzip {
        let mut first = GZIP_HEADER.to_vec();
        first.extend_from_slice(&deflate_block(opening.as_bytes()));
        (Some(Bytes::from(first)), deflate_block(rows.as_bytes()))
    } else {
        (
            Some(Bytes::from_static(opening.as_bytes())),
            Bytes::from(rows),
        )
    };
    let (state, label) = (Shared::clone(state), label.to_owned());
    let chunks = std::iter::from_fn(move || {
        let sent = first.take().unwrap_or_else(|| repeated.clone());
        *state
            .lock()
            .unwrap()
            .bytes
            .entry(label.clone())
            .or_default() += sent.len();
        Some(Ok::<_, std::io::Error>(sent))
    });
    let body = Body::from_stream(tokio_stream::iter(chunks));
    let mut resp = ([(header::CONTENT_TYPE, "application/json")], body).into_response();
    if gzip {
        let h = resp.headers_mut();
        h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }
    resp
}
