//! `grpc.health.v1.Health` for the overall service (`""`) and
//! `tokenbridge.v1.TokenExchange`, which share one status.
//!
//! Written over tonic-health's generated types rather than its ready-made
//! service for one reason: on shutdown every `Watch` stream receives
//! NOT_SERVING and then ends, so long-lived watchers do not hold the graceful
//! shutdown open until the drain timeout.

use tokenbridge_proto::v1::token_exchange_server::SERVICE_NAME;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use tonic_health::pb::{
    HealthCheckRequest, HealthCheckResponse,
    health_check_response::ServingStatus,
    health_server::{Health, HealthServer},
};

#[derive(Debug, Clone, Copy, Default)]
struct State {
    serving: bool,
    stopping: bool,
}

impl State {
    fn status(self) -> i32 {
        if self.serving && !self.stopping {
            ServingStatus::Serving as i32
        } else {
            ServingStatus::NotServing as i32
        }
    }
}

/// Sets the health status.
#[derive(Debug, Clone)]
pub struct HealthHandle {
    state: watch::Sender<State>,
}

impl HealthHandle {
    /// Reports SERVING (unless shutting down).
    pub fn set_serving(&self) {
        self.state.send_modify(|s| s.serving = true);
    }

    /// Reports NOT_SERVING for good and ends every `Watch` stream.
    pub fn shutting_down(&self) {
        self.state.send_modify(|s| s.stopping = true);
    }

    /// Whether the service reports SERVING: Google's keys loaded, not
    /// shutting down (the admin listener's `/readyz`).
    pub fn is_serving(&self) -> bool {
        self.state.borrow().status() == ServingStatus::Serving as i32
    }

    /// Whether a shutdown has begun.
    pub fn is_stopping(&self) -> bool {
        self.state.borrow().stopping
    }
}

/// The health service and the handle that drives it; starts NOT_SERVING.
pub fn health() -> (HealthHandle, HealthServer<HealthService>) {
    let (state, _) = watch::channel(State::default());
    let service = HealthService {
        state: state.clone(),
    };
    (HealthHandle { state }, HealthServer::new(service))
}

/// The `Health` service.
#[derive(Debug)]
pub struct HealthService {
    state: watch::Sender<State>,
}

fn known(service: &str) -> Result<(), Status> {
    if service.is_empty() || service == SERVICE_NAME {
        Ok(())
    } else {
        Err(Status::not_found(format!(
            "unknown service `{}`",
            tokenbridge_policy::rules::shorten(service)
        )))
    }
}

#[tonic::async_trait]
impl Health for HealthService {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        known(&request.get_ref().service)?;
        let status = self.state.borrow().status();
        Ok(Response::new(HealthCheckResponse { status }))
    }

    type WatchStream = ReceiverStream<Result<HealthCheckResponse, Status>>;

    async fn watch(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        known(&request.get_ref().service)?;
        let mut state = self.state.subscribe();
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            loop {
                let now = *state.borrow_and_update();
                if tx
                    .send(Ok(HealthCheckResponse {
                        status: now.status(),
                    }))
                    .await
                    .is_err()
                    || now.stopping
                {
                    return;
                }
                if state.changed().await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}
