//! A Check's answer as the gRPC service sends it: built for this Check, or
//! the host's allow answer encoded once and kept on its posture.
//!
//! A plain allow (no reasons) depends only on the host and the route: the
//! identity headers, the headers to remove and the dynamic metadata are the
//! same on every Check until the posture changes, and a new posture starts
//! with an empty memo. Building it takes some twenty small allocations and
//! encoding it walks nested messages; the kept bytes are copied instead.

use bytes::{Buf, BufMut, Bytes};
use envoy_types::pb::envoy::service::auth::v3::CheckResponse;
use prost::{
    DecodeError, Message,
    encoding::{DecodeContext, WireType},
};

/// The encode side of the service's codec.
#[derive(Debug, Clone, PartialEq)]
#[allow(
    clippy::large_enum_variant,
    reason = "moved once per Check; boxing would add an allocation to every built answer"
)]
pub enum Answer {
    Built(CheckResponse),
    /// A `CheckResponse`, already protobuf-encoded.
    Encoded(Bytes),
}

impl Answer {
    /// The answer as a message (decoding a kept one).
    pub fn into_response(self) -> Result<CheckResponse, DecodeError> {
        match self {
            Self::Built(response) => Ok(response),
            Self::Encoded(bytes) => CheckResponse::decode(bytes),
        }
    }
}

impl Message for Answer {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        match self {
            Self::Built(response) => response.encode_raw(buf),
            Self::Encoded(bytes) => buf.put_slice(bytes),
        }
    }

    /// Answers are only sent, never received: any field is skipped.
    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        prost::encoding::skip_field(wire_type, tag, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        match self {
            Self::Built(response) => response.encoded_len(),
            Self::Encoded(bytes) => bytes.len(),
        }
    }

    fn clear(&mut self) {
        *self = Self::Encoded(Bytes::new());
    }
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::google::rpc;

    use super::*;

    #[test]
    fn a_kept_answer_goes_out_byte_for_byte_as_the_built_one() {
        let response = CheckResponse {
            status: Some(rpc::Status {
                code: 7,
                message: "denied".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let built = Answer::Built(response.clone());
        let kept = Answer::Encoded(Bytes::from(response.encode_to_vec()));
        assert_eq!(built.encoded_len(), kept.encoded_len());
        assert_eq!(built.encode_to_vec(), kept.encode_to_vec());
        assert_eq!(kept.into_response().unwrap(), response);
        let mut cleared = built;
        cleared.clear();
        assert_eq!(cleared.encoded_len(), 0);
    }
}
