//! Rate limiting a tonic gRPC server (the standard health service, so no
//! protoc is needed): per caller API key (`x-api-key` metadata) and per peer
//! IP, decided together. A denied call gets `RESOURCE_EXHAUSTED` (HTTP 200 +
//! `grpc-status: 8`) with `retry-after` and the `ratelimit*` fields as metadata.
//!
//! ```text
//! cargo run --example ratelimit_tonic                                   # in-memory store
//! REDIS_URL=redis://127.0.0.1:6379/ cargo run --example ratelimit_tonic  # shared in Redis
//! ```
//! It serves on 127.0.0.1:50051 and then calls itself 7 times with one API key
//! (`KEEP_SERVING=1` keeps it serving afterwards).

use std::{net::SocketAddr, time::Duration};

use redlayer::ratelimit::{Key, Policy, Quota, RateLimitLayer, RateLimiter, Store};
use tonic::transport::{Server, server::TcpConnectInfo};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    let store = match std::env::var("REDIS_URL") {
        Ok(url) if !url.is_empty() => Store::redis(redlayer::Redis::builder().connect_or_lazy(&url).await?),
        _ => Store::memory(),
    };

    // tonic puts the peer address in the request extensions as TcpConnectInfo:
    // a custom key extractor reads it.
    let peer = Key::custom(|parts| {
        parts.extensions.get::<TcpConnectInfo>().and_then(|info| info.remote_addr()).map(|a| a.ip().to_string())
    });
    let limiter = RateLimiter::builder(store)
        .name("grpc-health")
        .policy(Policy::gcra("per-caller", Quota::per_minute(5).burst(5)).key(Key::header("x-api-key")))
        .policy(Policy::sliding_window("per-ip", Quota::per_minute(100)).key(peer))
        .build();

    let (reporter, health) = tonic_health::server::health_reporter();
    reporter.set_service_status("", tonic_health::ServingStatus::Serving).await;

    let addr: SocketAddr = "127.0.0.1:50051".parse()?;
    let server = tokio::spawn(Server::builder().layer(RateLimitLayer::new(limiter)).serve(addr, health));
    println!("ratelimit_tonic: grpc://{addr}");
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut client =
        HealthClient::new(tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?.connect().await?);
    for i in 1..=7 {
        let mut request = tonic::Request::new(HealthCheckRequest { service: String::new() });
        request.metadata_mut().insert("x-api-key", "demo-key".parse()?);
        match client.check(request).await {
            Ok(reply) => {
                println!("call {i}: {:?}, ratelimit: {:?}", reply.get_ref().status(), reply.metadata().get("ratelimit"))
            }
            Err(status) => println!(
                "call {i}: {:?} {:?}, retry-after: {:?}, ratelimit: {:?}",
                status.code(),
                status.message(),
                status.metadata().get("retry-after"),
                status.metadata().get("ratelimit"),
            ),
        }
    }
    if std::env::var("KEEP_SERVING").is_ok() {
        server.await??;
    }
    Ok(())
}
