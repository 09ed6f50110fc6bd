//! The claim → run → complete flow (the async parts the future drives).

use std::{collections::VecDeque, sync::Arc};

use bytes::{Bytes, BytesMut};
use http::{HeaderValue, Request, Response, StatusCode, header, request::Parts};
use http_body::Body;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use redlayer_core::{
    FailurePolicy, ResponseBody,
    problem::{GrpcCode, Problem, grpc_response, is_grpc},
    report_degraded,
};
use redlayer_lock::LockGuard;

use crate::{
    PassBody,
    key::fingerprint,
    layer::Config,
    store::{Begin, Peek, StoredResponse},
};

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub(crate) type Answer<B> = Response<ResponseBody<PassBody<B>>>;

/// This request owns the key: it holds the lease and runs the handler.
pub(crate) struct Claim {
    config: Arc<Config>,
    id: String,
    guard: LockGuard,
}

pub(crate) enum Decision<ReqBody, ResBody: Body> {
    Respond(Answer<ResBody>),
    Run(Request<ReqBody>, Option<Claim>),
}

/// A refusal: an RFC 9457 problem document, or for a gRPC request (HTTP 200
/// with `grpc-status`: gRPC clients read a bare 4xx as a transport error) the
/// gRPC code of that status.
pub(crate) fn problem<B: Body>(grpc: bool, status: StatusCode, title: &'static str, detail: &str) -> Answer<B> {
    if grpc {
        let code = match status {
            StatusCode::CONFLICT => GrpcCode::Aborted,
            StatusCode::UNPROCESSABLE_ENTITY => GrpcCode::FailedPrecondition,
            StatusCode::PAYLOAD_TOO_LARGE => GrpcCode::ResourceExhausted,
            StatusCode::SERVICE_UNAVAILABLE => GrpcCode::Unavailable,
            _ => GrpcCode::InvalidArgument,
        };
        return grpc_response(code, &format!("{title}: {detail}"));
    }
    Problem::new(status, title).detail(detail).into_response()
}

/// Where the Idempotency-Key errors are documented: the draft's section
/// that defines them, linked from their answers as the draft asks.
const KEY_ERRORS_LINK: HeaderValue = HeaderValue::from_static(
    "<https://datatracker.ietf.org/doc/html/draft-ietf-httpapi-idempotency-key-header#name-error-scenarios>; \
     rel=\"describedby\"",
);

/// A [`problem`] about the key itself (missing, malformed, in flight,
/// reused): with a `Link` to the documentation of these errors.
pub(crate) fn key_problem<B: Body>(grpc: bool, status: StatusCode, title: &'static str, detail: &str) -> Answer<B> {
    let mut response = problem(grpc, status, title, detail);
    if !grpc {
        response.headers_mut().insert(header::LINK, KEY_ERRORS_LINK);
    }
    response
}

fn replay<B: Body>(stored: StoredResponse) -> Answer<B> {
    let mut response = Response::new(ResponseBody::full(stored.body));
    *response.status_mut() = stored.status;
    let headers = response.headers_mut();
    // Records written before a header became unstorable (`Set-Cookie`) never replay it either.
    for (name, value) in stored.headers.into_iter().filter(|(name, _)| storable_header(name)) {
        // Decoded records hold at most MAX_STORED_HEADERS lines: this never fails.
        let _ = headers.try_append(name, value);
    }
    headers.insert("idempotent-replayed", HeaderValue::from_static("true"));
    response
}

fn conflict<B: Body>(grpc: bool) -> Answer<B> {
    let mut response = key_problem(
        grpc,
        StatusCode::CONFLICT,
        "Request in progress",
        "a request with this Idempotency-Key is still being processed; retry later",
    );
    response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

fn mismatch<B: Body>(grpc: bool) -> Answer<B> {
    key_problem(
        grpc,
        StatusCode::UNPROCESSABLE_ENTITY,
        "Idempotency-Key reused",
        "this Idempotency-Key was already used with a different request (method, path or body)",
    )
}

/// Reads the request body (bounded), fingerprints it, and claims the key.
pub(crate) async fn decide<ReqBody, ResBody>(
    config: Arc<Config>,
    id: String,
    parts: Parts,
    body: ReqBody,
) -> Decision<ReqBody, ResBody>
where
    ReqBody: Body + From<Bytes>,
    ReqBody::Error: Into<BoxError>,
    ResBody: Body,
{
    let grpc = is_grpc(&parts.headers);
    let bytes = match Limited::new(body, config.max_request_body).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<LengthLimitError>() => {
            return Decision::Respond(problem(
                grpc,
                StatusCode::PAYLOAD_TOO_LARGE,
                "Request body too large",
                "the request body is larger than this endpoint accepts with an Idempotency-Key",
            ));
        }
        Err(_) => {
            return Decision::Respond(problem(
                grpc,
                StatusCode::BAD_REQUEST,
                "Bad request body",
                "the request body could not be read",
            ));
        }
    };
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let fp = fingerprint(&parts.method, path, &bytes);
    let request = Request::from_parts(parts, ReqBody::from(bytes));
    match claim(&config, &id, &fp, grpc).await {
        Ok(Ok(guard)) => Decision::Run(request, Some(Claim { config, id, guard })),
        Ok(Err(answer)) => Decision::Respond(answer),
        // Fail open only when the store is unreachable: a store that answers
        // with an error (out of memory, a corrupt record) is no reason to
        // run a payment without protection.
        Err(error) => match config.failure {
            FailurePolicy::FailOpen if error.is_unavailable() => {
                report_degraded("idempotency", FailurePolicy::FailOpen, &error);
                Decision::Run(request, None)
            }
            _ => {
                report_degraded("idempotency", FailurePolicy::FailClosed, &error);
                Decision::Respond(problem(
                    grpc,
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Service unavailable",
                    "idempotency cannot be guaranteed right now; retry with the same Idempotency-Key",
                ))
            }
        },
    }
}

async fn claim<B: Body>(
    config: &Config,
    id: &str,
    fp: &str,
    grpc: bool,
) -> redlayer_core::Result<Result<LockGuard, Answer<B>>> {
    let store = &config.store;
    match store.locks.try_acquire(id, config.lease).await? {
        // The running record outlives the longest run (a shorter retention
        // would let it expire under a running handler, and a retry run again).
        Some(guard) => match store
            .begin(
                id,
                fp,
                guard.fencing_token(),
                config
                    .retention
                    .max(config.max_hold.min(std::time::Duration::from_secs(86_400)).saturating_add(config.lease)),
            )
            .await?
        {
            Begin::Run => {
                // Renew the lease only while a handler actually runs.
                guard.start_watchdog(config.max_hold);
                Ok(Ok(guard))
            }
            Begin::Replay(stored) => Ok(Err(replay(stored))),
            Begin::Mismatch => Ok(Err(mismatch(grpc))),
        },
        None => Ok(Err(match store.peek(id, fp).await? {
            Peek::Busy => conflict(grpc),
            Peek::Replay(stored) => replay(stored),
            Peek::Mismatch => mismatch(grpc),
        })),
    }
}

/// Whether a response header is stored for replays: not the hop-by-hop ones,
/// nor `Set-Cookie` (a replay goes to whoever presents the key, and a cookie
/// is a credential of the first caller, often a session), nor `Date` (a
/// replay is a response of its own time; the server adds a fresh one).
fn storable_header(name: &header::HeaderName) -> bool {
    !matches!(
        name.as_str(),
        "set-cookie"
            | "set-cookie2"
            | "date"
            | "connection"
            | "keep-alive"
            | "proxy-connection"
            | "transfer-encoding"
            | "te"
            | "trailer"
            | "upgrade"
            | "content-length"
    )
}

/// Reads the handler's response (up to the limit), stores it if it can be
/// replayed, releases the lease, and hands the response on. A request
/// dropped while the body is read leaves an unfinished attempt, as an
/// unstorable response does: a retry runs the handler.
pub(crate) async fn finish<B>(claim: Claim, response: Response<B>) -> Answer<B>
where
    B: Body<Data = Bytes>,
{
    let Claim { config, id, guard } = claim;
    let (parts, body) = response.into_parts();
    // A gRPC answer is never stored (its status travels in trailers, or in
    // the head of a trailers-only error), and a stream must not wait for its
    // end: the attempt is forgotten at once and the body passes untouched.
    if is_grpc(&parts.headers) || !storable_status(parts.status) {
        redlayer_core::run_detached(settle(config, id, guard, None)).await;
        return Response::from_parts(parts, ResponseBody::inner(PassBody::new(body)));
    }
    let mut body = Box::pin(body);
    let mut read = VecDeque::new();
    let mut data = BytesMut::new();
    let mut storable = true;
    let mut error = None;
    let mut rest = None;
    loop {
        match body.frame().await {
            None => break,
            Some(Ok(frame)) => {
                match frame.data_ref() {
                    Some(chunk) => data.extend_from_slice(chunk),
                    None => storable = false, // trailers cannot be replayed
                }
                read.push_back(frame);
                if data.len() > config.max_response_body {
                    storable = false;
                    rest = Some(body);
                    break;
                }
            }
            Some(Err(e)) => {
                storable = false;
                error = Some(e);
                break;
            }
        }
    }
    let storable = storable && parts.headers.len() <= crate::store::MAX_STORED_HEADERS;
    let stored = storable.then(|| StoredResponse {
        status: parts.status,
        headers: parts
            .headers
            .iter()
            .filter(|(n, _)| storable_header(n))
            .map(|(n, v)| (n.clone(), v.clone()))
            .collect(),
        body: data.freeze(),
    });
    // Detached: a request dropped now (its client gave up just as the handler
    // finished) must still record the response, or the released lease would
    // let a retry run the finished handler again.
    redlayer_core::run_detached(settle(config, id, guard, stored)).await;
    Response::from_parts(parts, ResponseBody::inner(PassBody::resume(read, error, rest)))
}

/// Forgets the attempt of a request whose inner service failed (no response
/// to store) and releases its lease, in a task a dropped caller does not stop.
pub(crate) async fn forget(claim: Claim) {
    let Claim { config, id, guard } = claim;
    redlayer_core::run_detached(settle(config, id, guard, None)).await;
}

/// Whether an answer with this status may be replayed: not 5xx nor 1xx, and
/// not the answers of a moment (408 timeout, 409 conflict, 425 too early,
/// 429 rate limited: another layer or the handler refused *now*, the
/// operation did not run, and a retry should get to run it).
fn storable_status(status: StatusCode) -> bool {
    !status.is_server_error() && !status.is_informational() && !matches!(status.as_u16(), 408 | 409 | 425 | 429)
}

/// Stores the response of a finished handler (or forgets an attempt whose
/// response cannot be replayed) and releases its lease.
///
/// A store that fails for a reason that may pass (Redis slow, restarting, a
/// connection lost) is retried in the background while the lease is kept
/// renewed, so that a retry of the request gets 409 meanwhile and then the
/// replay, instead of running the handler again. It is retried until it
/// succeeds, another attempt took the record over, or `max_hold` has passed
/// since the handler finished.
async fn settle(config: Arc<Config>, id: String, guard: LockGuard, stored: Option<StoredResponse>) {
    let fence = guard.fencing_token();
    match stored {
        Some(stored) => {
            let first = config.store.complete(&id, fence, &stored, config.retention).await;
            if retry_later(&first)
                && let Ok(runtime) = tokio::runtime::Handle::try_current()
            {
                runtime.spawn(complete_later(config, id, guard, stored));
                return;
            }
            report_complete(&first);
            // Released in the background: a retry that comes meanwhile finds the record done.
            drop(guard);
        }
        None => {
            if let Err(error) = config.store.abandon(&id, fence).await {
                tracing::warn!(target: "redlayer", %error, "idempotency: could not forget an unstorable attempt");
            }
            // Released before answering, so that an immediate retry can run (and gets no 409).
            let _ = guard.release().await;
        }
    }
}

/// Whether a failed store may succeed if tried again (not a response the
/// memory store cannot hold).
fn retry_later(result: &redlayer_core::Result<bool>) -> bool {
    matches!(result, Err(e) if !matches!(e, redlayer_core::Error::InvalidInput(_)))
}

fn report_complete(result: &redlayer_core::Result<bool>) {
    match result {
        Ok(true) => {}
        Ok(false) => tracing::warn!(target: "redlayer", "idempotency: lease lost and taken over; response not stored"),
        Err(error) => tracing::warn!(target: "redlayer", %error, "idempotency: response not stored"),
    }
}

/// The retries of [`settle`]: every 100 ms at first, then up to every
/// 500 ms, with the lease held (and renewed by its watchdog, which stops at
/// `max_hold` after the claim, or when Redis is out of reach for the whole
/// lease: a retry of the request may then run the handler again).
async fn complete_later(config: Arc<Config>, id: String, guard: LockGuard, stored: StoredResponse) {
    const FIRST_DELAY: std::time::Duration = std::time::Duration::from_millis(100);
    const MAX_DELAY: std::time::Duration = std::time::Duration::from_millis(500);
    tracing::warn!(target: "redlayer", "idempotency: response not stored yet; retrying while the lease is held");
    // `max_hold` may be "no cap" (`Duration::MAX`): a day then.
    let give_up = tokio::time::Instant::now() + config.max_hold.min(std::time::Duration::from_secs(86_400));
    let mut delay = FIRST_DELAY;
    let result = loop {
        tokio::time::sleep(delay).await;
        let result = config.store.complete(&id, guard.fencing_token(), &stored, config.retention).await;
        if !retry_later(&result) || tokio::time::Instant::now() >= give_up {
            break result;
        }
        delay = (delay * 2).min(MAX_DELAY);
    };
    report_complete(&result);
    drop(guard);
}
