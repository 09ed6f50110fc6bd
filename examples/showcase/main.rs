//! The showcase server: the redlayer layers on one axum app.
//!
//! ```text
//! cargo run --example showcase                                      # in-memory backends
//! REDIS_URL=redis://127.0.0.1:6379/ cargo run --example showcase    # shared state in Redis
//! PORT=3001 REDIS_URL=redis://127.0.0.1:6379/ cargo run --example showcase   # a second instance
//! REDIS_URL=redis://127.0.0.1:7000/ cargo run --example showcase    # any node of a Redis Cluster
//! ```
//!
//! Each capability has its own module with its routes and their layers.

mod cache;
mod payments;
mod ratelimit;
mod sessions;

use std::net::SocketAddr;

use axum::{Router, routing::get};

/// Where the showcase keeps its state: Redis when `REDIS_URL` is set, the
/// in-memory backends otherwise.
#[derive(Clone)]
pub struct Backend {
    /// The shared handle, or `None` for the in-memory backends.
    pub redis: Option<redlayer::Redis>,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,redlayer=info".into()),
        )
        .init();

    let backend = match std::env::var("REDIS_URL") {
        // Starts while Redis is down too (with a warning): every layer then
        // answers by its failure policy until Redis is up.
        Ok(url) if !url.is_empty() => Backend { redis: Some(redlayer::Redis::builder().connect_or_lazy(&url).await?) },
        _ => Backend { redis: None },
    };
    let port: u16 = std::env::var("PORT").ok().and_then(|p| p.parse().ok()).unwrap_or(3000);
    let addr = SocketAddr::from(([127, 0, 0, 1], port));

    match &backend.redis {
        None => println!("showcase: in-memory backend (set REDIS_URL to share state in Redis)"),
        Some(redis) => println!("showcase: Redis backend ({redis:?})"),
    }

    let index: String = [
        "redlayer showcase\n\nGET  /                    this index\n",
        ratelimit::INDEX,
        sessions::INDEX,
        payments::INDEX,
        cache::INDEX,
    ]
    .concat();
    let app = Router::new()
        .route("/", get(move || async move { index }))
        .merge(ratelimit::routes(&backend))
        .merge(sessions::routes(&backend))
        .merge(payments::routes(&backend))
        .merge(cache::routes(&backend));

    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!("showcase: listening on http://{addr}");
    axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
