//! Envoy's `envoy.service.auth.v3.Authorization` gRPC service over an
//! [`Authorizer`], decoding the lean request ([`super::wire`]) instead of the
//! generated `CheckRequest`. Same service name, method and wire format as the
//! generated server: Envoy cannot tell them apart.

use std::{
    convert::Infallible,
    sync::Arc,
    task::{Context, Poll},
};

use tonic::{
    Status,
    codegen::{Body as HttpBody, Service, StdError, http},
    server::{Grpc, NamedService, UnaryService},
};

use super::{AllowMemo, Answer, wire};
use crate::{
    bypass::Door,
    decision::{Authorizer, BoxFuture},
};

/// The gRPC path of the one method.
const CHECK: &str = "/envoy.service.auth.v3.Authorization/Check";
/// Largest CheckRequest read. Envoy's request headers are capped at 60 KiB
/// by default and a certificate is a few KiB; a request body is only sent
/// when `with_request_body` is configured, and capped there.
pub const MAX_CHECK_REQUEST_BYTES: usize = 1024 * 1024;

/// The Authorization service; add it to a tonic `Server`.
#[derive(Debug, Clone)]
pub struct AuthzService {
    authorizer: Arc<Authorizer>,
    /// Plain allows, encoded once per host posture.
    memo: Arc<AllowMemo>,
    /// Offers the self-service bypass on deny pages, when set.
    door: Option<Arc<Door>>,
}

impl AuthzService {
    /// Wraps a shared authorizer.
    pub fn new(authorizer: Arc<Authorizer>) -> Self {
        Self {
            authorizer,
            memo: Arc::default(),
            door: None,
        }
    }

    /// Deny pages offer the bypass of `door` where one applies.
    pub fn with_door(mut self, door: Arc<Door>) -> Self {
        self.door = Some(door);
        self
    }
}

impl NamedService for AuthzService {
    const NAME: &'static str = "envoy.service.auth.v3.Authorization";
}

/// One Check call. A deny is a successful RPC: the handler never returns an
/// error status.
struct Check(Arc<Authorizer>, Arc<AllowMemo>, Option<Arc<Door>>);

impl UnaryService<wire::CheckRequest> for Check {
    type Response = Answer;
    type Future = BoxFuture<'static, Result<tonic::Response<Answer>, Status>>;

    fn call(&mut self, request: tonic::Request<wire::CheckRequest>) -> Self::Future {
        let (authorizer, memo, door) = (Arc::clone(&self.0), Arc::clone(&self.1), self.2.clone());
        Box::pin(async move {
            let response = authorizer
                .check_lean(request.get_ref(), &memo, door.as_deref())
                .await;
            Ok(tonic::Response::new(response))
        })
    }
}

impl<B> Service<http::Request<B>> for AuthzService
where
    B: HttpBody + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if request.uri().path() != CHECK {
            let path = request.uri().path().to_owned();
            return Box::pin(async move {
                Ok(Status::unimplemented(format!("no method {path}")).into_http())
            });
        }
        let check = Check(
            Arc::clone(&self.authorizer),
            Arc::clone(&self.memo),
            self.door.clone(),
        );
        Box::pin(async move {
            let codec = tonic_prost::ProstCodec::<Answer, wire::CheckRequest>::default();
            let mut grpc = Grpc::new(codec).max_decoding_message_size(MAX_CHECK_REQUEST_BYTES);
            Ok(grpc.unary(check, request).await)
        })
    }
}
