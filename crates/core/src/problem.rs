//! Answers of the layers' own: RFC 9457 problem documents for HTTP clients,
//! and trailers-only gRPC statuses for gRPC clients.

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, StatusCode, header};

use crate::body::ResponseBody;

/// `application/problem+json`.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// gRPC status codes the layers use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum GrpcCode {
    /// 3: the request was malformed (bad idempotency key).
    InvalidArgument = 3,
    /// 6: already exists / conflicting request in flight.
    AlreadyExists = 6,
    /// 8: rate limited.
    ResourceExhausted = 8,
    /// 9: precondition failed (same key, other payload).
    FailedPrecondition = 9,
    /// 10: aborted (lock not acquired).
    Aborted = 10,
    /// 13: an internal error (not worth retrying as is).
    Internal = 13,
    /// 14: the backing store is unavailable.
    Unavailable = 14,
    /// 16: no valid session.
    Unauthenticated = 16,
}

/// True when the request is gRPC (`content-type: application/grpc*`).
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|ct| ct.starts_with("application/grpc"))
}

/// An RFC 9457 problem document.
#[derive(Debug, Clone)]
#[must_use]
pub struct Problem {
    status: StatusCode,
    title: &'static str,
    detail: Option<String>,
    type_uri: &'static str,
    extra: Vec<(&'static str, serde_json::Value)>,
}

impl Problem {
    /// A problem with this status and a short, constant title. The title is
    /// written only with a [`type_uri`](Problem::type_uri) of its own: with
    /// the default `about:blank`, RFC 9457 4.2.1 has the title be the
    /// status's reason phrase, so that one is written instead.
    pub fn new(status: StatusCode, title: &'static str) -> Self {
        Problem { status, title, detail: None, type_uri: "about:blank", extra: Vec::new() }
    }

    /// A longer, human-readable explanation of this occurrence.
    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    /// A URI identifying the problem type (default `about:blank`).
    pub fn type_uri(mut self, type_uri: &'static str) -> Self {
        self.type_uri = type_uri;
        self
    }

    /// An extension member.
    pub fn extension(mut self, name: &'static str, value: impl Into<serde_json::Value>) -> Self {
        self.extra.push((name, value.into()));
        self
    }

    /// The status code.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The JSON document: `type`, `title`, `status`, `detail`, then the
    /// extension members in the order they were added (one whose name is a
    /// standard member's is left out).
    pub fn to_json(&self) -> Bytes {
        let mut out = Vec::with_capacity(192);
        // Serializing borrowed fields cannot fail: no map keys other than strings, no I/O.
        let _ = serde_json::to_writer(&mut out, self);
        Bytes::from(out)
    }

    /// The HTTP response: the status, `content-type: application/problem+json`, the document.
    pub fn into_response<B>(self) -> Response<ResponseBody<B>> {
        let body = self.to_json();
        let mut response = Response::new(ResponseBody::full(body));
        *response.status_mut() = self.status;
        response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        response
    }
}

/// Written member by member, straight from the borrowed fields (no
/// intermediate `serde_json::Value` map: the 429 of a rate-limit flood is
/// built for every request).
impl serde::Serialize for Problem {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        const STANDARD: [&str; 4] = ["type", "title", "status", "detail"];
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("type", self.type_uri)?;
        let title = match self.type_uri {
            "about:blank" => self.status.canonical_reason().unwrap_or(self.title),
            _ => self.title,
        };
        map.serialize_entry("title", title)?;
        map.serialize_entry("status", &self.status.as_u16())?;
        if let Some(detail) = &self.detail {
            map.serialize_entry("detail", detail)?;
        }
        for (name, value) in self.extra.iter().filter(|(name, _)| !STANDARD.contains(name)) {
            map.serialize_entry(name, value)?;
        }
        map.end()
    }
}

/// A trailers-only gRPC answer: HTTP 200, `content-type: application/grpc`,
/// `grpc-status` and a percent-encoded `grpc-message`.
pub fn grpc_response<B>(code: GrpcCode, message: &str) -> Response<ResponseBody<B>> {
    let mut response = Response::new(ResponseBody::empty());
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    headers.insert("grpc-status", HeaderValue::from(code as u16));
    if let Ok(message) = HeaderValue::from_str(&percent_encode(message)) {
        headers.insert("grpc-message", message);
    }
    response
}

/// Percent-encodes a grpc-message as the gRPC spec asks (bytes outside 0x20..=0x7E and `%`).
fn percent_encode(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for b in message.bytes() {
        if (0x20..=0x7E).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problem_document_has_the_rfc_9457_members() {
        let response: Response<ResponseBody<String>> =
            Problem::new(StatusCode::TOO_MANY_REQUESTS, "Too Many Requests").detail("slow down").into_response();
        assert_eq!(response.status(), 429);
        assert_eq!(response.headers()[header::CONTENT_TYPE], PROBLEM_JSON);
        let doc: serde_json::Value = serde_json::from_slice(
            &Problem::new(StatusCode::TOO_MANY_REQUESTS, "Too Many Requests").extension("retry_after", 3).to_json(),
        )
        .unwrap();
        assert_eq!(doc["status"], 429);
        assert_eq!(doc["title"], "Too Many Requests");
        assert_eq!(doc["retry_after"], 3);
    }

    #[test]
    fn problem_document_escapes_text_and_keeps_the_standard_members() {
        let json = Problem::new(StatusCode::CONFLICT, "Conflict")
            .detail("key \"a\\b\"\n in flight")
            .extension("status", 200)
            .extension("policies", serde_json::Value::from(vec!["per-ip", "per-\"key\""]))
            .to_json();
        let doc: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(doc["status"], 409, "an extension cannot replace a standard member: {doc}");
        assert_eq!(doc["detail"], "key \"a\\b\"\n in flight");
        assert_eq!(doc["policies"][1], "per-\"key\"");
        assert_eq!(doc["type"], "about:blank");
        // With about:blank the title is the status phrase (RFC 9457 4.2.1); a type of its own keeps its title.
        let blank = Problem::new(StatusCode::CONFLICT, "Resource busy").to_json();
        assert_eq!(serde_json::from_slice::<serde_json::Value>(&blank).unwrap()["title"], "Conflict");
        let typed = Problem::new(StatusCode::CONFLICT, "Resource busy").type_uri("https://example.test/busy").to_json();
        assert_eq!(serde_json::from_slice::<serde_json::Value>(&typed).unwrap()["title"], "Resource busy");
        assert_eq!(std::str::from_utf8(&json).unwrap().matches("\"status\"").count(), 1);
    }

    #[test]
    fn grpc_answers_are_http_200_with_a_status() {
        let response: Response<ResponseBody<String>> = grpc_response(GrpcCode::ResourceExhausted, "rate limited: 100%");
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["grpc-status"], "8");
        assert_eq!(response.headers()["grpc-message"], "rate limited: 100%25");
    }
}
