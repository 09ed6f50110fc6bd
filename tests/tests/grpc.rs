//! Two tonic servers (the standard health service, no protoc), each with its
//! own handle on one Redis, with rate limit + sessions in gRPC metadata: the
//! limit is shared, the session id issued by one server works on the other,
//! and a denied call is `RESOURCE_EXHAUSTED` with `retry-after`.

use std::{
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use http::HeaderName;
use redlayer::{
    Redis,
    ratelimit::{Key, Policy, Quota, RateLimitLayer, RateLimiter},
    session::{Session, SessionLayer},
};
use redlayer_testkit::RedisServer;
use tonic::{
    Code,
    metadata::{Ascii, MetadataValue},
    transport::{Server, server::TcpIncoming},
};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

/// Counts the calls of a session into `x-calls` metadata.
#[derive(Clone)]
struct CountCalls<S> {
    inner: S,
}

impl<S, B, R> tower::Service<http::Request<B>> for CountCalls<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>> + Clone + Send + 'static,
    S::Future: Send,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let session = request.extensions().get::<Session>().cloned();
        Box::pin(async move {
            let calls = match session {
                Some(session) => session.increment("calls", 1).await.ok(),
                None => None,
            };
            let mut response = inner.call(request).await?;
            if let Some(calls) = calls {
                response.headers_mut().insert("x-calls", calls.into());
            }
            Ok(response)
        })
    }
}

async fn serve(redis: Redis) -> String {
    let limiter = RateLimiter::builder(redlayer::ratelimit::Store::redis(redis.clone()))
        .name("grpc")
        .policy(Policy::gcra("per-caller", Quota::per_minute(5).burst(5)).key(Key::header("x-api-key")))
        .build();
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter.set_service_status("", tonic_health::ServingStatus::Serving).await;
    let incoming = TcpIncoming::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = incoming.local_addr().unwrap();
    tokio::spawn(
        Server::builder()
            .layer(
                tower::ServiceBuilder::new()
                    .layer(RateLimitLayer::new(limiter))
                    .layer(SessionLayer::new(redis).header(HeaderName::from_static("x-session-id")))
                    .layer_fn(|inner| CountCalls { inner }),
            )
            .serve_with_incoming(health, incoming),
    );
    format!("http://{addr}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_tonic_servers_share_limit_and_sessions() {
    let server = RedisServer::start();
    let a = serve(Redis::connect(&server.url()).await.unwrap()).await;
    let b = serve(Redis::connect(&server.url()).await.unwrap()).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut clients = Vec::new();
    for url in [a, b] {
        let endpoint = tonic::transport::Endpoint::from_shared(url).unwrap().timeout(Duration::from_secs(5));
        clients.push(HealthClient::new(endpoint.connect().await.unwrap()));
    }
    let mut session: Option<MetadataValue<Ascii>> = None;
    let (mut ok, mut exhausted) = (0, 0);
    for i in 0..8 {
        let client = &mut clients[i % 2];
        let mut request = tonic::Request::new(HealthCheckRequest { service: String::new() });
        request.metadata_mut().insert("x-api-key", "caller-1".parse().unwrap());
        if let Some(id) = &session {
            request.metadata_mut().insert("x-session-id", id.clone());
        }
        match client.check(request).await {
            Ok(reply) => {
                ok += 1;
                if let Some(id) = reply.metadata().get("x-session-id") {
                    assert!(session.is_none(), "the id is issued once, then kept");
                    session = Some(id.clone());
                }
                let calls = reply.metadata().get("x-calls").unwrap().to_str().unwrap().to_owned();
                assert_eq!(calls, (i + 1).to_string(), "one session across both servers");
            }
            Err(status) => {
                assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                let retry: u64 = status.metadata().get("retry-after").unwrap().to_str().unwrap().parse().unwrap();
                assert!(retry >= 1);
                exhausted += 1;
            }
        }
    }
    assert_eq!((ok, exhausted), (5, 3), "5 per minute for one caller across two servers");
    // another caller is not limited by the first
    let mut request = tonic::Request::new(HealthCheckRequest { service: String::new() });
    request.metadata_mut().insert("x-api-key", "caller-2".parse().unwrap());
    clients[1].check(request).await.unwrap();
}
