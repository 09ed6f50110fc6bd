//! A tiny HTTP/1.1 client for the setup and checks around the wrk runs
//! (obtaining a session cookie, storing a response to replay, probing what
//! each scenario answers). Not used under load.

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// One request as wrk sends it.
#[derive(Clone, Debug)]
pub struct Request {
    pub method: &'static str,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
    /// A header whose value is new on every request (an sf-string: `"<run>-<n>"`).
    pub unique_header: Option<&'static str>,
    /// Append `?n=<run>-<n>` to the path on every request.
    pub unique_query: bool,
}

impl Request {
    pub fn get(path: &str) -> Self {
        Request {
            method: "GET",
            path: path.into(),
            headers: Vec::new(),
            body: String::new(),
            unique_header: None,
            unique_query: false,
        }
    }

    pub fn post(path: &str, body: &str) -> Self {
        Request { method: "POST", body: body.into(), ..Self::get(path) }.header("content-type", "application/json")
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    pub fn unique_header(mut self, name: &'static str) -> Self {
        self.unique_header = Some(name);
        self
    }

    pub fn unique_query(mut self) -> Self {
        self.unique_query = true;
        self
    }

    /// Whether wrk can send it as a plain URL (GET, no headers, no body).
    pub fn is_plain(&self) -> bool {
        self.method == "GET" && self.headers.is_empty() && self.unique_header.is_none() && !self.unique_query
    }

    /// The wrk Lua script sending this request; `run` makes unique values
    /// differ between runs.
    pub fn wrk_lua(&self, run: &str) -> String {
        let mut lua = format!("wrk.method = {}\nwrk.body = {}\n", lua_str(self.method), lua_str(&self.body));
        for (name, value) in &self.headers {
            lua += &format!("wrk.headers[{}] = {}\n", lua_str(name), lua_str(value));
        }
        if self.unique_header.is_some() || self.unique_query {
            lua += "local n = 0\nrequest = function()\n  n = n + 1\n";
            lua += &format!("  local id = {} .. n\n", lua_str(&format!("{run}-")));
            if let Some(name) = self.unique_header {
                lua += &format!("  wrk.headers[{}] = '\"' .. id .. '\"'\n", lua_str(name));
            }
            let path = if self.unique_query {
                format!("{} .. id", lua_str(&format!("{}?n=", self.path)))
            } else {
                lua_str(&self.path)
            };
            lua += &format!("  return wrk.format(nil, {path})\nend\n");
        }
        lua
    }

    /// Sends it once to `addr` (`host:port`), with `unique` as the unique value.
    pub async fn send(&self, addr: &str, unique: &str) -> Response {
        let mut path = self.path.clone();
        if self.unique_query {
            path = format!("{path}?n={unique}");
        }
        let mut head = format!("{} {path} HTTP/1.1\r\nconnection: close\r\n", self.method);
        if !self.headers.iter().any(|(name, _)| name.eq_ignore_ascii_case("host")) {
            head += &format!("host: {addr}\r\n");
        }
        for (name, value) in &self.headers {
            head += &format!("{name}: {value}\r\n");
        }
        if let Some(name) = self.unique_header {
            head += &format!("{name}: \"{unique}\"\r\n");
        }
        head += &format!("content-length: {}\r\n\r\n{}", self.body.len(), self.body);
        let mut stream = TcpStream::connect(addr).await.expect("connect to scenario");
        stream.write_all(head.as_bytes()).await.expect("send request");
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.expect("read response");
        Response::parse(&String::from_utf8_lossy(&raw))
    }
}

/// A Lua string literal.
fn lua_str(s: &str) -> String {
    let mut out = String::from("\"");
    for b in s.bytes() {
        match b {
            b'"' | b'\\' => {
                out.push('\\');
                out.push(b as char);
            }
            0x20..=0x7e => out.push(b as char),
            _ => out += &format!("\\{b:03}"),
        }
    }
    out + "\""
}

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    fn parse(raw: &str) -> Self {
        let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((raw, ""));
        let mut lines = head.lines();
        let status = lines.next().and_then(|l| l.split_whitespace().nth(1)).and_then(|s| s.parse().ok()).unwrap_or(0);
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        // Bodies here are small; a chunked one is de-chunked crudely (one chunk).
        let chunked = raw.to_ascii_lowercase().contains("transfer-encoding: chunked");
        let body = if chunked { body.split("\r\n").nth(1).unwrap_or_default().to_string() } else { body.to_string() };
        Response { status, headers, body }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}
