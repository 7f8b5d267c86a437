//! The admin API as the gRPC service `fleet_authz.v1.Admin`. Same answers as
//! the HTTP side; bad input is `INVALID_ARGUMENT`, an unknown host or
//! fingerprint `NOT_FOUND`, a missing token `UNAUTHENTICATED`, and `Sync`
//! without a syncable source `UNIMPLEMENTED` (with no cluster leader to run
//! it, `UNAVAILABLE`).

use tonic::{Request, Response, Status, service::interceptor::InterceptedService};

use super::{AdminState, AdminToken, ExplainQuery, NO_SYNC_SOURCE, host_json};
use crate::{
    decision::SyncFailure,
    fingerprint::Fingerprint,
    posture::HostId,
    proto::v1::{
        ExplainRequest, ExplainResponse, GetFingerprintRequest, GetHostRequest, HostResponse,
        SyncRequest, SyncResponse,
        admin_server::{Admin, AdminServer},
    },
};

/// `fleet_authz.v1.Admin` over the shared admin state.
#[derive(Debug, Clone)]
pub struct AdminService {
    state: AdminState,
}

/// The tonic service with the bearer-token check in front.
pub type AuthedAdminServer = InterceptedService<AdminServer<AdminService>, TokenCheck>;

/// Refuses calls without the admin bearer token (when one is configured).
#[derive(Debug, Clone)]
pub struct TokenCheck(Option<AdminToken>);

impl tonic::service::Interceptor for TokenCheck {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let Some(token) = &self.0 else {
            return Ok(request);
        };
        let presented = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        if token.verify(presented) {
            Ok(request)
        } else {
            Err(Status::unauthenticated(
                "missing or wrong admin bearer token",
            ))
        }
    }
}

/// Builds the service, token check included.
pub fn server(state: AdminState) -> AuthedAdminServer {
    let check = TokenCheck(state.token.clone());
    AdminServer::with_interceptor(AdminService { state }, check)
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn explain(
        &self,
        request: Request<ExplainRequest>,
    ) -> Result<Response<ExplainResponse>, Status> {
        let r = request.into_inner();
        let query = ExplainQuery {
            sha1: r.sha1,
            context: r.context,
            host: r.host,
            path: r.path,
        };
        let (outcome, doc) = self
            .state
            .explain(&query)
            .map_err(Status::invalid_argument)?;
        let d = &outcome.decision;
        Ok(Response::new(ExplainResponse {
            decision_json: doc.to_string(),
            allowed: d.answer_allows(),
            route: d.route.to_string(),
            reason_kinds: d.reason_kinds().into_iter().map(str::to_owned).collect(),
        }))
    }

    async fn get_host(
        &self,
        request: Request<GetHostRequest>,
    ) -> Result<Response<HostResponse>, Status> {
        let id = request.into_inner().id;
        let host = self
            .state
            .authorizer
            .store
            .host(HostId(id))
            .ok_or_else(|| Status::not_found(format!("host {id} is not known")))?;
        Ok(Response::new(HostResponse {
            host_json: host_json(&host).to_string(),
        }))
    }

    async fn get_fingerprint(
        &self,
        request: Request<GetFingerprintRequest>,
    ) -> Result<Response<HostResponse>, Status> {
        let fp = Fingerprint::parse(&request.into_inner().sha1)
            .map_err(|e| Status::invalid_argument(format!("sha1: {e}")))?;
        let host = self
            .state
            .authorizer
            .store
            .lookup(&fp)
            .ok_or_else(|| Status::not_found(format!("no host holds certificate {fp}")))?;
        Ok(Response::new(HostResponse {
            host_json: host_json(&host).to_string(),
        }))
    }

    async fn sync(&self, _: Request<SyncRequest>) -> Result<Response<SyncResponse>, Status> {
        let trigger = self
            .state
            .sync
            .as_ref()
            .ok_or_else(|| Status::unimplemented(NO_SYNC_SOURCE))?;
        let response = match trigger.sync_forced(false).await {
            Ok(synced) => SyncResponse {
                ok: true,
                error: String::new(),
                hosts: synced.hosts as u64,
            },
            Err(SyncFailure::Failed(error)) => SyncResponse {
                ok: false,
                error,
                hosts: self.state.authorizer.store.host_count() as u64,
            },
            // Nobody to run it: the service cannot do what was asked now.
            Err(SyncFailure::Unavailable(error)) => return Err(Status::unavailable(error)),
        };
        Ok(Response::new(response))
    }
}
