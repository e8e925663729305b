//! The exchange on the wire: the `TokenExchange` gRPC service and the one
//! mapping from errors to status codes ([`grpc`]), what callers may ask of
//! it ([`limits`]), and TLS with certificate reloads ([`tls`]).

pub mod grpc;
pub mod guard;
pub mod http;
pub mod limits;
pub mod tls;
