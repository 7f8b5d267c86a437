//! Reading a Fleet answer under `fleet.max_body_bytes`.
//!
//! The cap counts bytes after decompression (reqwest inflates gzip as the
//! body streams in), because that is what is held: an outside test sent an
//! endless gzip body, 9 MB on the wire, and the buffered answer passed 2 GB
//! before the timeout ended it. Reading stops at the first chunk that would
//! go over, so at most the cap plus one chunk is ever held; the response is
//! then dropped, which closes its connection.

use bytes::Bytes;

/// Why a body was not read whole.
pub(super) enum BodyError {
    /// It grew past the cap; `read` bytes had been taken.
    TooLarge { read: u64 },
    /// It broke off (reset, timeout, bad gzip).
    Broken(reqwest::Error),
}

/// Bytes taken so far against a cap.
#[derive(Debug, Clone, Copy)]
pub(super) struct Budget {
    cap: u64,
    read: u64,
}

impl Budget {
    /// A budget of `cap` bytes.
    pub(super) fn new(cap: u64) -> Self {
        Self { cap, read: 0 }
    }

    /// Takes `n` more bytes; false (and nothing taken) when they would
    /// exceed the cap.
    pub(super) fn take(&mut self, n: usize) -> bool {
        let after = self.read.saturating_add(n as u64);
        if after > self.cap {
            return false;
        }
        self.read = after;
        true
    }

    /// Bytes taken.
    pub(super) fn read(&self) -> u64 {
        self.read
    }

    /// True when a declared `Content-Length` is already over the cap (a
    /// gzip answer declares none once reqwest inflates it).
    pub(super) fn refuses_length(&self, length: Option<u64>) -> bool {
        length.is_some_and(|n| n > self.cap)
    }
}

/// Reads `resp`'s whole body, stopping as soon as it would pass `cap` bytes.
pub(super) async fn read_capped(mut resp: reqwest::Response, cap: u64) -> Result<Bytes, BodyError> {
    let mut budget = Budget::new(cap);
    if budget.refuses_length(resp.content_length()) {
        return Err(BodyError::TooLarge { read: 0 });
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(BodyError::Broken)? {
        if !budget.take(chunk.len()) {
            return Err(BodyError::TooLarge {
                read: budget.read(),
            });
        }
        grow_within(&mut body, chunk.len(), cap);
        body.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(body))
}

/// Makes room for `more` bytes, doubling as a `Vec` would but never
/// reserving past `cap` (doubling alone could hold almost twice the cap).
fn grow_within(body: &mut Vec<u8>, more: usize, cap: u64) {
    let needed = body.len() + more;
    if needed <= body.capacity() {
        return;
    }
    let cap = usize::try_from(cap).unwrap_or(usize::MAX);
    let target = (body.capacity().saturating_mul(2))
        .max(needed)
        .min(cap.max(needed));
    body.reserve_exact(target - body.len());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_budget_takes_up_to_the_cap_and_refuses_the_chunk_that_would_pass_it() {
        let mut b = Budget::new(10);
        assert!(b.take(4));
        assert!(b.take(6));
        assert!(!b.take(1));
        assert_eq!(b.read(), 10);
        assert!(b.refuses_length(Some(11)));
        assert!(!b.refuses_length(Some(10)));
        assert!(!b.refuses_length(None));
    }

    #[test]
    fn growth_never_reserves_past_the_cap() {
        let mut body = Vec::new();
        for _ in 0..100 {
            grow_within(&mut body, 1000, 100_000);
            body.extend_from_slice(&[0; 1000]);
        }
        assert_eq!(body.len(), 100_000);
        assert!(body.capacity() <= 100_000 + 1000, "{}", body.capacity());
    }
}
