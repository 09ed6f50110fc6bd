//! The showcase server: every redlayer layer on one axum app.
//!
//! ```text
//! cargo run --example showcase                                 # in-memory backends
//! REDIS_URL=redis://127.0.0.1:6379/ cargo run --example showcase   # shared state in Redis
//! PORT=3001 REDIS_URL=... cargo run --example showcase         # a second instance
//! ```

use std::net::SocketAddr;

use axum::{Router, routing::get};

/// Where the showcase keeps its state.
enum Backend {
    Memory,
    Redis(redlayer::Redis),
}

const INDEX: &str = "redlayer showcase\n\
\n\
GET  /               this index\n";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,redlayer=info".into()),
        )
        .init();

    let backend = match std::env::var("REDIS_URL") {
        Ok(url) if !url.is_empty() => Backend::Redis(redlayer::Redis::connect(&url).await?),
        _ => Backend::Memory,
    };
    let port: u16 = std::env::var("PORT").ok().and_then(|p| p.parse().ok()).unwrap_or(3000);
    let addr = SocketAddr::from(([127, 0, 0, 1], port));

    match &backend {
        Backend::Memory => println!("showcase: in-memory backend (set REDIS_URL to share state in Redis)"),
        Backend::Redis(redis) => println!("showcase: Redis backend ({redis:?})"),
    }

    let app = Router::new().route("/", get(|| async { INDEX }));

    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!("showcase: listening on http://{addr}");
    axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
