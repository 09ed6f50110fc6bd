//! The servers under load, one per scenario, each on its own loopback port,
//! one file per crate.

pub mod cache;
mod core;
mod idempotency;
pub mod lock;
#[cfg(feature = "peers")]
mod peers;
mod ratelimit;
mod session;
mod stack;

use std::{future::Future, net::SocketAddr, pin::Pin};

use axum::Router;

use crate::http::Request;

pub use self::core::{FLOOR, HELLO};

/// A future returned by a [`Check`].
pub type CheckFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Something measured around a scenario's runs (e.g. lost updates).
pub trait Check: Send + Sync {
    /// Called once after the probe, before the first round.
    fn before(&self) -> CheckFuture<'_, ()>;
    /// Called after the last round with the number of responses wrk counted
    /// over all rounds; returns a line for BENCHMARKS.md.
    fn after(&self, sent: u64) -> CheckFuture<'_, String>;
}

pub struct Scenario {
    /// The crate (or `core`), for `--only`.
    pub group: &'static str,
    pub name: &'static str,
    pub about: &'static str,
    /// `host:port` of its server.
    pub addr: String,
    /// What wrk sends.
    pub request: Request,
    /// The status every response must have (checked by a probe before the
    /// rounds and by wrk's non-2xx count during them).
    pub expect: u16,
    pub check: Option<Box<dyn Check>>,
    /// Other scenarios this one is compared with in the text (e.g. a cache
    /// hit with the same page uncached, or a peer crate), when they ran.
    pub versus: Vec<&'static str>,
}

impl Scenario {
    fn new(group: &'static str, name: &'static str, about: &'static str, addr: String, request: Request) -> Self {
        Scenario { group, name, about, addr, request, expect: 200, check: None, versus: Vec::new() }
    }

    fn expect(mut self, status: u16) -> Self {
        self.expect = status;
        self
    }

    fn versus(mut self, other: &'static str) -> Self {
        self.versus.push(other);
        self
    }

    fn check(mut self, check: impl Check + 'static) -> Self {
        self.check = Some(Box::new(check));
        self
    }

    pub fn url(&self) -> String {
        format!("http://{}{}", self.addr, self.request.path)
    }

    /// The wrk script for one run, if the request needs one.
    pub fn wrk_lua(&self, run: &str) -> Option<String> {
        (!self.request.is_plain()).then(|| self.request.wrk_lua(run))
    }
}

/// Serves `app` on a fresh loopback port; returns `host:port`.
async fn serve(app: Router) -> String {
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await.expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    tokio::spawn(async move { axum::serve(listener, app).await.expect("serve") });
    addr
}

/// Like [`serve`], with axum's `ConnectInfo<SocketAddr>` (peer IP keys).
async fn serve_with_peer(app: Router) -> String {
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await.expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    tokio::spawn(async move {
        axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await.expect("serve")
    });
    addr
}

/// Starts every wrk scenario's server against the redis-server at `redis_url`.
pub async fn start_all(redis_url: &str) -> Vec<Scenario> {
    let handle = redlayer::Redis::connect(redis_url).await.expect("redlayer handle");
    let mut all = core::start(redis_url, &handle).await;
    all.extend(session::start(&handle).await);
    all.extend(idempotency::start(&handle).await);
    all.extend(ratelimit::start(&handle).await);
    all.extend(cache::start(&handle).await);
    all.extend(stack::start(&handle).await);
    #[cfg(feature = "peers")]
    all.extend(peers::start(redis_url).await);
    all
}
