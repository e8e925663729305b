//! Traces: the `tokenbridge-server` binary with `[telemetry]` pointing at a
//! real OTLP/gRPC receiver in the test (`opentelemetry-proto`'s
//! `TraceServiceServer` over tonic). The spans must form one tree per call,
//! under the caller's `traceparent`, and no attribute anywhere may carry a
//! token, a part of one, a secret access key or a session token.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    common::v1::{AnyValue, KeyValue, any_value},
    trace::v1::{ResourceSpans, Span, span::SpanKind, status::StatusCode},
};
use tokenbridge_proto::v1::token_exchange_client::TokenExchangeClient;
use tokenbridge_testing::{Issuer, JwksServer, Moto};
use tonic::{Code, Request, Response, Status};

use crate::{
    cli::{Server, free_port, request, write_config},
    common::*,
};

const ISSUED_TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
const ISSUED_PARENT: &str = "b7ad6b7169203331";
const DENIED_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const DENIED_PARENT: &str = "00f067aa0ba902b7";

/// An OTLP trace receiver that keeps what it is sent.
#[derive(Clone, Default)]
struct Receiver(Arc<Mutex<Vec<ResourceSpans>>>);

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        self.0
            .lock()
            .unwrap()
            .extend(request.into_inner().resource_spans);
        Ok(Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

async fn start_receiver() -> (SocketAddr, Receiver) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let receiver = Receiver::default();
    let service = TraceServiceServer::new(receiver.clone());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    (addr, receiver)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Every text in an attribute value, however nested.
fn texts(value: &AnyValue, out: &mut Vec<String>) {
    match &value.value {
        Some(any_value::Value::StringValue(s)) => out.push(s.clone()),
        Some(any_value::Value::BytesValue(b)) => out.push(String::from_utf8_lossy(b).into()),
        Some(any_value::Value::ArrayValue(a)) => a.values.iter().for_each(|v| texts(v, out)),
        Some(any_value::Value::KvlistValue(l)) => {
            for kv in &l.values {
                out.push(kv.key.clone());
                if let Some(v) = &kv.value {
                    texts(v, out);
                }
            }
        }
        Some(other) => out.push(format!("{other:?}")),
        None => {}
    }
}

fn attribute_texts(attributes: &[KeyValue], out: &mut Vec<String>) {
    for kv in attributes {
        out.push(kv.key.clone());
        if let Some(v) = &kv.value {
            texts(v, out);
        }
    }
}

/// An attribute of `span` as text (strings as they are, numbers and
/// booleans printed).
fn attr(span: &Span, key: &str) -> Option<String> {
    let value = span
        .attributes
        .iter()
        .find(|kv| kv.key == key)?
        .value
        .as_ref()?;
    match value.value.as_ref()? {
        any_value::Value::StringValue(s) => Some(s.clone()),
        any_value::Value::IntValue(i) => Some(i.to_string()),
        any_value::Value::BoolValue(b) => Some(b.to_string()),
        other => Some(format!("{other:?}")),
    }
}

/// The one span named `name` in trace `trace` whose parent is `parent`.
fn child<'a>(spans: &'a [Span], trace: &str, name: &str, parent: &[u8]) -> &'a Span {
    let found: Vec<&Span> = spans
        .iter()
        .filter(|s| s.name == name && hex(&s.trace_id) == trace && s.parent_span_id == parent)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "one {name} in trace {trace} under {}: {:#?}",
        hex(parent),
        spans
            .iter()
            .map(|s| (
                &s.name,
                hex(&s.trace_id),
                hex(&s.span_id),
                hex(&s.parent_span_id)
            ))
            .collect::<Vec<_>>()
    );
    found[0]
}

fn traceparent(
    trace: &str,
    parent: &str,
) -> tonic::metadata::MetadataValue<tonic::metadata::Ascii> {
    format!("00-{trace}-{parent}-01").parse().unwrap()
}

#[tokio::test]
async fn spans_reach_an_otlp_receiver_as_one_tree_per_call_with_no_secret() {
    let (otlp, receiver) = start_receiver().await;
    let issuer = Issuer::new();
    let jwks = JwksServer::start(issuer.clone(), 3600).await;
    let moto = Moto::shared().await;
    let dir = tempfile::tempdir().unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let config = write_config(dir.path(), &addr, &jwks.uri(), &moto.endpoint());
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&format!(
        "\n[telemetry]\notlp_endpoint = \"http://{otlp}\"\nservice_name = \"tokenbridge-trace-test\"\nsampling_ratio = 0.0\n"
    ));
    std::fs::write(&config, text).unwrap();
    let mut server = Server::spawn(&config, addr, "info");
    let channel = server.wait_serving().await;
    let mut client = TokenExchangeClient::new(channel);

    // Signed with a key Google rotated in after start-up: verifying it
    // fetches the keys again, inside the call.
    issuer.rotate();
    let token = issuer.token(&workload(), AUDIENCE);
    let mut req = request(&token, ROLE_A);
    req.metadata_mut()
        .insert("traceparent", traceparent(ISSUED_TRACE, ISSUED_PARENT));
    let creds = client.get_credentials(req).await.unwrap().into_inner();

    let stranger_token = issuer.token(&stranger(), AUDIENCE);
    let mut req = request(&stranger_token, ROLE_A);
    req.metadata_mut()
        .insert("traceparent", traceparent(DENIED_TRACE, DENIED_PARENT));
    let denied = client.get_credentials(req).await.unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);

    // A call without a trace context, sampled at 0.0: not exported.
    let unsampled = issuer.token(&single(), AUDIENCE);
    client
        .get_credentials(request(&unsampled, ROLE_C))
        .await
        .unwrap();

    // Buffered spans are exported at shutdown.
    server.sigterm();
    let (status, log) = server.wait_exit().await;
    assert!(status.success(), "{log}");

    let received = receiver.0.lock().unwrap().clone();
    assert!(!received.is_empty(), "no spans received; log:\n{log}");
    let mut spans = Vec::new();
    let mut all_texts = Vec::new();
    for rs in &received {
        let resource = rs.resource.as_ref().unwrap();
        attribute_texts(&resource.attributes, &mut all_texts);
        let service_name = resource
            .attributes
            .iter()
            .find(|kv| kv.key == "service.name")
            .and_then(|kv| kv.value.clone());
        let mut name = Vec::new();
        texts(&service_name.unwrap(), &mut name);
        assert_eq!(name, ["tokenbridge-trace-test"]);
        for ss in &rs.scope_spans {
            if let Some(scope) = &ss.scope {
                all_texts.push(scope.name.clone());
                attribute_texts(&scope.attributes, &mut all_texts);
            }
            for span in &ss.spans {
                all_texts.push(span.name.clone());
                all_texts.push(span.trace_state.clone());
                attribute_texts(&span.attributes, &mut all_texts);
                for event in &span.events {
                    all_texts.push(event.name.clone());
                    attribute_texts(&event.attributes, &mut all_texts);
                }
                for link in &span.links {
                    all_texts.push(link.trace_state.clone());
                    attribute_texts(&link.attributes, &mut all_texts);
                }
                if let Some(status) = &span.status {
                    all_texts.push(status.message.clone());
                }
                spans.push(span.clone());
            }
        }
    }

    // The issued call: the caller's trace, one tree.
    let root = child(
        &spans,
        ISSUED_TRACE,
        "tokenbridge.v1.TokenExchange/GetCredentials",
        &decode_hex(ISSUED_PARENT),
    );
    assert_eq!(root.kind, SpanKind::Server as i32);
    assert_eq!(attr(root, "rpc.system").as_deref(), Some("grpc"));
    assert_eq!(
        attr(root, "rpc.service").as_deref(),
        Some("tokenbridge.v1.TokenExchange")
    );
    assert_eq!(attr(root, "rpc.grpc.status_code").as_deref(), Some("0"));
    let exchange = child(&spans, ISSUED_TRACE, "exchange", &root.span_id);
    assert_eq!(
        attr(exchange, "sub").as_deref(),
        Some(workload().unique_id.as_str())
    );
    assert_eq!(attr(exchange, "role_arn").as_deref(), Some(ROLE_A));
    let verify = child(&spans, ISSUED_TRACE, "verify_token", &exchange.span_id);
    let fetch = child(&spans, ISSUED_TRACE, "jwks_fetch", &verify.span_id);
    assert_eq!(
        attr(fetch, "jwks_uri").as_deref(),
        Some(jwks.uri().as_str())
    );
    let policy = child(&spans, ISSUED_TRACE, "policy_decision", &exchange.span_id);
    assert_eq!(attr(policy, "allowed").as_deref(), Some("true"));
    let cache = child(&spans, ISSUED_TRACE, "credentials_cache", &exchange.span_id);
    assert_eq!(attr(cache, "result").as_deref(), Some("miss"));
    let sts = child(&spans, ISSUED_TRACE, "sts_assume_role", &cache.span_id);
    assert_eq!(attr(sts, "outcome").as_deref(), Some("ok"));
    assert_eq!(attr(sts, "region").as_deref(), Some("us-east-1"));
    assert_eq!(attr(sts, "role_arn").as_deref(), Some(ROLE_A));
    for inner in [exchange, verify, fetch, policy, cache, sts] {
        assert!(
            inner.start_time_unix_nano >= root.start_time_unix_nano
                && inner.end_time_unix_nano <= root.end_time_unix_nano,
            "{} within the call",
            inner.name
        );
    }

    // The refused call: its own trace, marked as an error.
    let root = child(
        &spans,
        DENIED_TRACE,
        "tokenbridge.v1.TokenExchange/GetCredentials",
        &decode_hex(DENIED_PARENT),
    );
    assert_eq!(attr(root, "rpc.grpc.status_code").as_deref(), Some("7"));
    assert_eq!(
        root.status.as_ref().map(|s| s.code),
        Some(StatusCode::Error as i32)
    );
    let exchange = child(&spans, DENIED_TRACE, "exchange", &root.span_id);
    let policy = child(&spans, DENIED_TRACE, "policy_decision", &exchange.span_id);
    assert_eq!(attr(policy, "allowed").as_deref(), Some("false"));
    assert!(
        !spans
            .iter()
            .any(|s| hex(&s.trace_id) == DENIED_TRACE && s.name == "sts_assume_role"),
        "a refused call never reaches STS"
    );

    // Sampling: the call with no trace context was not sampled at 0.0.
    assert!(
        !spans
            .iter()
            .any(|s| attr(s, "sub").as_deref() == Some(single().unique_id.as_str())),
        "an unsampled call was exported"
    );

    // No secret in any text of any span, event, link, scope or resource.
    let everything = all_texts.join("\n");
    for t in [&token, &stranger_token, &unsampled] {
        assert_no_token(&everything, t);
    }
    for secret in [&creds.secret_access_key, &creds.session_token] {
        assert!(secret.len() >= 16);
        assert!(
            !everything.contains(secret.as_str()),
            "a credential secret in the exported spans"
        );
    }
}

fn decode_hex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}
