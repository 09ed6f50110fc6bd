//! A caching reverse proxy: an RFC 9111 shared cache (`redlayer::cache::CacheLayer`)
//! in front of one origin server.
//!
//! ```text
//! # an origin on 127.0.0.1:8000 first (any HTTP server, e.g. `python3 -m http.server 8000`),
//! # then the proxy on 127.0.0.1:8080, entries in memory:
//! cargo run --release --example cache_proxy
//!
//! # choose the ports / origin, share the cache in Redis:
//! PORT=8080 ORIGIN=http://127.0.0.1:8000 REDIS_URL=redis://127.0.0.1:6379/ \
//!     cargo run --release --example cache_proxy
//!
//! # and keep hot entries in this process too (a near cache of 64 MiB,
//! # kept coherent by Redis client tracking):
//! NEAR_CACHE_MB=64 REDIS_URL=redis://127.0.0.1:6379/ cargo run --release --example cache_proxy
//!
//! # the same with arguments:
//! cargo run --release --example cache_proxy -- --listen 127.0.0.1:8080 --upstream http://127.0.0.1:8000
//! ```
//!
//! Every request (any method, headers and body) is forwarded to the origin
//! with hyper-util's client; hop-by-hop headers are dropped both ways. GET and
//! HEAD go through the cache; successful unsafe methods invalidate. Each
//! response carries a `Cache-Status` header saying what the cache did. An
//! unreachable origin answers `502 Bad Gateway`, or the stale copy the cache
//! holds when the copy allows it (`redlayer::cache::OriginUnreachable`).

use std::{convert::Infallible, net::SocketAddr, time::Duration};

use axum::{Router, body::Body};
use http::{HeaderMap, Request, Response, StatusCode, Uri, header};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use redlayer::cache::CacheLayer;
use tower::Layer;

const HOP_BY_HOP: &[&str] =
    &["connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade"];

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<String> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|n| n.trim().to_ascii_lowercase()))
        .filter(|n| !n.is_empty())
        .collect();
    for name in HOP_BY_HOP.iter().copied().chain(named.iter().map(String::as_str)) {
        headers.remove(name);
    }
}

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1).cloned())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn,redlayer=warn".into()),
        )
        .init();

    let addr: SocketAddr = match arg("--listen") {
        Some(listen) => listen.parse()?,
        None => {
            let port: u16 = std::env::var("PORT").ok().and_then(|p| p.parse().ok()).unwrap_or(8080);
            SocketAddr::from(([127, 0, 0, 1], port))
        }
    };
    let origin =
        arg("--upstream").or_else(|| std::env::var("ORIGIN").ok()).unwrap_or_else(|| "http://127.0.0.1:8000".into());
    let origin: Uri = origin.trim_end_matches('/').parse()?;
    let (scheme, authority) = (
        origin.scheme().cloned().unwrap_or(http::uri::Scheme::HTTP),
        origin.authority().cloned().ok_or("ORIGIN needs a host")?,
    );

    let layer = match std::env::var("REDIS_URL") {
        Ok(url) if !url.is_empty() => {
            println!("cache_proxy: entries in Redis at {url}");
            // A cluster node's URL gives a cluster handle; while Redis is
            // down the proxy starts anyway, forwarding uncached until it is up.
            let store = redlayer::cache::Store::redis(redlayer::Redis::builder().connect_or_lazy(&url).await?);
            match std::env::var("NEAR_CACHE_MB").ok().and_then(|mb| mb.parse::<usize>().ok()) {
                Some(mb) if mb > 0 => {
                    println!("cache_proxy: near cache of {mb} MiB");
                    CacheLayer::with_store(store.with_near_cache(mb << 20)?)
                }
                _ => CacheLayer::with_store(store),
            }
        }
        _ => {
            println!("cache_proxy: entries in memory (set REDIS_URL to share them in Redis)");
            CacheLayer::memory()
        }
    }
    // As RFC 9111 3.1 has a shared cache do: a cacheable response with
    // Set-Cookie is stored with its cookie (the origin marks per-user answers
    // private). Library users keep the default: not stored.
    .replay_set_cookie(true);

    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(Duration::from_secs(5)));
    // Idle connections are dropped before common keep-alive timeouts (Node's
    // 5 s), so a connection the origin is closing is not picked from the pool.
    let client: Client<HttpConnector, Body> =
        Client::builder(TokioExecutor::new()).pool_idle_timeout(Duration::from_secs(4)).build(connector);

    let forward = tower::service_fn(move |req: Request<Body>| {
        let client = client.clone();
        let (scheme, authority) = (scheme.clone(), authority.clone());
        async move {
            let (mut parts, body) = req.into_parts();
            let pq = parts.uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
            parts.uri =
                Uri::builder().scheme(scheme).authority(authority).path_and_query(pq).build().unwrap_or_default();
            parts.version = http::Version::HTTP_11;
            strip_hop_by_hop(&mut parts.headers);
            // An idempotent request without a body is sent once more if the
            // first attempt fails (a pooled connection closed under it).
            let again = (parts.method.is_idempotent() && http_body::Body::size_hint(&body).exact() == Some(0))
                .then(|| (parts.method.clone(), parts.uri.clone(), parts.headers.clone()));
            let mut result = client.request(Request::from_parts(parts, body)).await;
            if result.is_err()
                && let Some((method, uri, headers)) = again
            {
                let mut retry = Request::new(Body::empty());
                (*retry.method_mut(), *retry.uri_mut(), *retry.headers_mut()) = (method, uri, headers);
                result = client.request(retry).await;
            }
            let response = match result {
                Ok(res) => {
                    let (mut parts, body) = res.into_parts();
                    strip_hop_by_hop(&mut parts.headers);
                    Response::from_parts(parts, Body::new(body))
                }
                Err(e) => {
                    tracing::warn!(%e, "origin unreachable");
                    let mut res = Response::new(Body::from("bad gateway"));
                    *res.status_mut() = StatusCode::BAD_GATEWAY;
                    // The cache may answer with a stale copy instead (RFC 9111 4.2.4).
                    res.extensions_mut().insert(redlayer::cache::OriginUnreachable);
                    res
                }
            };
            Ok::<_, Infallible>(response)
        }
    });

    let app = Router::new().fallback_service(layer.layer(forward));
    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!("cache_proxy: listening on http://{addr}, origin {origin}");
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
