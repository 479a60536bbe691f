//! HTTP/1.1 as the daemon speaks it: a request head parsed strictly (anything
//! malformed is a 400, never a guess), the `Host`/`Origin` check that keeps a web
//! page from reading the gateway by DNS rebinding, and the response, always
//! closing the connection.

/// Largest request head accepted (request line and headers).
pub const MAX_REQUEST_BYTES: usize = 8 * 1024;
/// Largest request body (a command's JSON).
pub const MAX_BODY_BYTES: usize = 16 * 1024;

/// What in `req` names another site than this gateway (`Host: x`, `Origin: y`), if anything.
pub(super) fn foreign(req: &Request, allowed: &[String]) -> Option<String> {
    if let Some(host) = req.host.as_deref().filter(|h| !host_allowed(h, allowed)) {
        return Some(format!("Host {host:?}"));
    }
    if let Some(origin) = req.origin.as_deref() {
        let host = origin.strip_prefix("http://").or_else(|| origin.strip_prefix("https://"));
        if !host.is_some_and(|h| host_allowed(h, allowed)) {
            return Some(format!("Origin {origin:?}"));
        }
    }
    None
}

/// Whether a `host[:port]` names this gateway: an IP literal, a localhost name, or one of
/// `allowed` (lowercase, no trailing dot). A name someone else's DNS answers for is none of these.
pub fn host_allowed(host_port: &str, allowed: &[String]) -> bool {
    let host = match host_port.strip_prefix('[') {
        // [v6]:port
        Some(rest) => match rest.split_once(']') {
            Some((v6, _)) => return v6.parse::<std::net::Ipv6Addr>().is_ok(),
            None => return false,
        },
        None => match host_port.rsplit_once(':') {
            Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
            _ => host_port,
        },
    };
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    host.parse::<std::net::Ipv4Addr>().is_ok()
        || host == "localhost"
        || host.ends_with(".localhost")
        || allowed.contains(&host)
}

pub(super) fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n")
}

/// A parsed request: what is asked, and how.
#[derive(Debug, PartialEq)]
pub struct Request {
    pub method: Method,
    pub path: String,
    /// What follows `?`, undecoded.
    pub query: String,
    /// HEAD: the headers without the body.
    pub head_only: bool,
    /// From `Content-Length` (POST bodies; at most `MAX_BODY_BYTES`).
    pub content_length: usize,
    /// The `Host` header, if sent.
    pub host: Option<String>,
    /// The `Origin` header, if sent (browsers send it on cross-site and non-GET requests).
    pub origin: Option<String>,
}

/// The methods served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    /// Actions on the local API socket; no request body is read.
    Post,
}

/// Parse a request head. Errors are complete responses (400, 405, 431, 505).
pub fn parse_request(raw: &[u8]) -> Result<Request, Response> {
    if raw.len() > MAX_REQUEST_BYTES {
        return Err(Response::error(431, "request head too large"));
    }
    let end = head_end(raw).ok_or_else(|| Response::error(400, "incomplete request head"))?;
    let head =
        std::str::from_utf8(&raw[..end]).map_err(|_| Response::error(400, "request head is not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let parts: Vec<&str> = request_line.split(' ').collect();
    let [method, target, version] = parts.as_slice() else {
        return Err(Response::error(400, "malformed request line"));
    };
    if !version.starts_with("HTTP/") {
        return Err(Response::error(400, "malformed request line"));
    }
    if !matches!(*version, "HTTP/1.0" | "HTTP/1.1") {
        return Err(Response::error(505, "only HTTP/1.0 and HTTP/1.1"));
    }
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(Response::error(400, "malformed method"));
    }
    if !target.starts_with('/') || target.bytes().any(|b| b.is_ascii_control()) {
        return Err(Response::error(400, "malformed request target"));
    }
    let mut content_length = 0;
    let (mut host, mut origin) = (None, None);
    for line in lines {
        match line.split_once(':') {
            Some((name, value)) if !name.is_empty() && name.bytes().all(|b| b.is_ascii_graphic()) => {
                if name.eq_ignore_ascii_case("host") {
                    if host.is_some() {
                        return Err(Response::error(400, "more than one Host header"));
                    }
                    host = Some(value.trim().to_string());
                } else if name.eq_ignore_ascii_case("origin") {
                    origin = Some(value.trim().to_string());
                } else if name.eq_ignore_ascii_case("content-length") {
                    content_length = value
                        .trim()
                        .parse::<usize>()
                        .map_err(|_| Response::error(400, "malformed Content-Length"))?;
                    if content_length > MAX_BODY_BYTES {
                        return Err(Response::error(413, "request body too large"));
                    }
                }
            }
            _ => return Err(Response::error(400, "malformed header line")),
        }
    }
    let method = match *method {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        "POST" => Method::Post,
        _ => {
            return Err(
                Response::error(405, "only GET, HEAD and POST").with_header("Allow", "GET, HEAD, POST")
            )
        }
    };
    let target = target.split('#').next().unwrap_or_default();
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    Ok(Request {
        method,
        path: path.to_string(),
        query: query.to_string(),
        head_only: method == Method::Head,
        content_length,
        host,
        origin,
    })
}

/// An HTTP response, always closing the connection.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub(super) headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
    pub(super) head_only: bool,
}

impl Response {
    pub(super) fn ok(content_type: &str, body: Vec<u8>) -> Response {
        Response { status: 200, headers: vec![("Content-Type", content_type.into())], body, head_only: false }
    }

    pub(super) fn error(status: u16, message: &str) -> Response {
        Response {
            status,
            headers: vec![("Content-Type", "text/plain; charset=utf-8".into())],
            body: format!("{message}\n").into_bytes(),
            head_only: false,
        }
    }

    pub(super) fn with_header(mut self, name: &'static str, value: &str) -> Response {
        self.headers.push((name, value.into()));
        self
    }

    pub(super) fn to_bytes(&self) -> Vec<u8> {
        let reason = match self.status {
            200 => "OK",
            400 => "Bad Request",
            403 => "Forbidden",
            404 => "Not Found",
            405 => "Method Not Allowed",
            409 => "Conflict",
            413 => "Content Too Large",
            408 => "Request Timeout",
            421 => "Misdirected Request",
            503 => "Service Unavailable",
            431 => "Request Header Fields Too Large",
            505 => "HTTP Version Not Supported",
            _ => "Internal Server Error",
        };
        let mut out = format!("HTTP/1.1 {} {reason}\r\n", self.status);
        for (name, value) in &self.headers {
            out.push_str(&format!("{name}: {value}\r\n"));
        }
        out.push_str(&format!(
            "Content-Length: {}\r\nCache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\nConnection: close\r\n\r\n",
            self.body.len()
        ));
        let mut bytes = out.into_bytes();
        if !self.head_only {
            bytes.extend_from_slice(&self.body);
        }
        bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status_of(raw: &[u8]) -> u16 {
        match parse_request(raw) {
            Ok(_) => 200,
            Err(r) => r.status,
        }
    }

    #[test]
    fn well_formed_get_is_parsed_without_its_query() {
        let req =
            parse_request(b"GET /api/status?x=1 HTTP/1.1\r\nHost: gw\r\nAccept: */*\r\n\r\n").expect("ok");
        assert_eq!(
            req,
            Request {
                method: Method::Get,
                path: "/api/status".into(),
                query: "x=1".into(),
                head_only: false,
                content_length: 0,
                host: Some("gw".into()),
                origin: None,
            }
        );
        assert!(parse_request(b"HEAD / HTTP/1.0\r\n\r\n").expect("ok").head_only);
    }

    #[test]
    fn malformed_requests_get_400() {
        for raw in [
            &b"GET /\r\n\r\n"[..],
            b"GET  / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1 extra\r\n\r\n",
            b"get / HTTP/1.1\r\n\r\n",
            b"GET noslash HTTP/1.1\r\n\r\n",
            b"GET / FTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nno colon here\r\n\r\n",
            b"GET / HTTP/1.1\r\n: empty name\r\n\r\n",
            b"GET /\xff HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\n",
            b"\r\n\r\n",
        ] {
            assert_eq!(status_of(raw), 400, "{:?}", String::from_utf8_lossy(raw));
        }
    }

    #[test]
    fn other_methods_versions_and_oversized_heads_are_refused() {
        assert_eq!(status_of(b"PUT / HTTP/1.1\r\n\r\n"), 405);
        assert_eq!(status_of(b"DELETE /api/reload HTTP/1.1\r\n\r\n"), 405);
        assert_eq!(status_of(b"GET / HTTP/2.0\r\n\r\n"), 505);
        let mut big = b"GET / HTTP/1.1\r\nX: ".to_vec();
        big.resize(MAX_REQUEST_BYTES + 10, b'a');
        big.extend_from_slice(b"\r\n\r\n");
        assert_eq!(status_of(&big), 431);
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let alphabet = b"GET /HTP1.\r\n: \xff";
        for len in 0..2000 {
            let mut raw = Vec::with_capacity(len % 300);
            for _ in 0..len % 300 {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                raw.push(alphabet[(seed % alphabet.len() as u64) as usize]);
            }
            let _ = parse_request(&raw);
        }
    }

    #[test]
    fn only_names_of_this_gateway_are_allowed_hosts() {
        let allowed = vec!["gw1.farm.lan".to_string()];
        for ok in [
            "127.0.0.1",
            "127.0.0.1:9101",
            "192.168.1.20:9101",
            "[::1]:9101",
            "[fe80::1]",
            "localhost",
            "LOCALHOST:9101",
            "gw.localhost",
            "gw1.farm.lan",
            "GW1.farm.lan.:80",
        ] {
            assert!(host_allowed(ok, &allowed), "{ok}");
        }
        for refused in
            ["evil.example", "evil.example:9101", "127.0.0.1.evil.example", "[::1", "gw1.farm.lan.evil", ""]
        {
            assert!(!host_allowed(refused, &allowed), "{refused}");
        }
        let req =
            |extra: &str| parse_request(format!("GET / HTTP/1.1\r\n{extra}\r\n").as_bytes()).expect("ok");
        assert_eq!(foreign(&req(""), &allowed), None, "HTTP/1.0 style, no Host");
        assert_eq!(foreign(&req("Host: 10.0.0.5:9101\r\n"), &allowed), None);
        assert!(foreign(&req("Host: rebind.example:9101\r\n"), &allowed).is_some());
        assert!(foreign(&req("Host: 10.0.0.5\r\nOrigin: http://evil.example\r\n"), &allowed).is_some());
        assert!(foreign(&req("Host: 10.0.0.5\r\nOrigin: null\r\n"), &allowed).is_some());
        assert_eq!(foreign(&req("Host: 10.0.0.5\r\nOrigin: http://10.0.0.5:9101\r\n"), &allowed), None);
        assert_eq!(status_of(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"), 400);
    }

    #[test]
    fn head_response_has_length_but_no_body() {
        let mut r = Response::ok("text/plain", b"hello".to_vec());
        r.head_only = true;
        let text = String::from_utf8(r.to_bytes()).expect("ascii");
        assert!(text.contains("Content-Length: 5\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\n"), "{text}");
    }
}
