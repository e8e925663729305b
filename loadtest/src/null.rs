//! The null service: `TokenExchange` answering a fixed response with no
//! verification, no policy and no STS. Every run measures it beside
//! tokenbridge so the figures are ratios to the transport floor on the same
//! machine at the same moment.

use std::net::SocketAddr;

use tokenbridge_proto::v1::{
    GetCredentialsRequest, GetCredentialsResponse,
    token_exchange_server::{TokenExchange, TokenExchangeServer},
};
use tonic::{Request, Response, Status};

/// Answers every call with the same credentials.
#[derive(Debug, Default)]
pub struct NullService;

#[tonic::async_trait]
impl TokenExchange for NullService {
    async fn get_credentials(
        &self,
        _request: Request<GetCredentialsRequest>,
    ) -> Result<Response<GetCredentialsResponse>, Status> {
        Ok(Response::new(GetCredentialsResponse {
            access_key_id: "ASIANULLSERVICE00001".into(),
            secret_access_key: "null-service-secret-access-key-0000000000".into(),
            session_token: "n".repeat(600),
            expiration: Some(prost_types::Timestamp {
                seconds: 4_102_444_800,
                nanos: 0,
            }),
            assumed_role_arn: "arn:aws:sts::123456789012:assumed-role/LoadTest/null".into(),
            role_session_name: "null".into(),
        }))
    }
}

/// Serves the null service on `listener` until the process ends.
pub async fn serve(listener: tokio::net::TcpListener) -> Result<(), tonic::transport::Error> {
    tonic::transport::Server::builder()
        .add_service(TokenExchangeServer::new(NullService))
        .serve_with_incoming(
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
        )
        .await
}

/// The address line the `null-server` subcommand prints.
pub fn announce(addr: SocketAddr) -> String {
    format!("listening {addr}")
}
