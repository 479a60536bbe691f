//! The gateway's one HTTP listener (`[http] listen`) and its local API socket
//! (`[api] socket`): a deliberately small HTTP/1.1 server for three read-only
//! GET routes, `/metrics`, `/` (the status page) and `/api/status`, and, on
//! the unix socket only, the field tools' routes: `POST /api/reload` (device
//! registry, keys, rules), `POST /api/actuate` (a JSON body: target, command,
//! args; the caller's uid goes to the audit log), `GET /api/points/<device>`
//! and `GET /api/audit?limit=N`. Reaching the socket is enough to read; the two
//! POST routes also need the caller in `[api] operators` (see `operators`).
//! One request per connection; the request head is bounded in size and time,
//! and anything malformed gets a 400 rather than a guess.
//!
//! The HTTP listener answers only requests whose `Host` (and `Origin`, when sent) names
//! this gateway: an IP literal, `localhost`, or one of `[http] allowed_hosts`. A web
//! page that rebinds its own DNS name to the gateway's address therefore cannot read
//! it from a browser. Connections are bounded in number, per peer address and in all,
//! and one that does not send its request head in time is closed.
//!
//! Neither listener is needed to keep uplinks safe: if one cannot be opened
//! the daemon says so at error level and keeps forwarding.

use std::collections::HashMap;
use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;
use tracing::{debug, error, info};

use super::operators::{authorize, Operator, Peer, RELOAD};
use super::{History, Status};
use crate::metrics::{self, Metrics};
use crate::view::GatewayView;
use serde::Deserialize;
use std::net::SocketAddr;

/// `[http]`: the listener serving `/metrics`, the status page `/` and `/api/status`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSection {
    /// Address and port; loopback by default (the page and metrics carry no secrets,
    /// but expose them beyond the gateway only on purpose, e.g. `0.0.0.0:9101`).
    #[serde(default = "default_http_listen")]
    pub listen: SocketAddr,
    /// Host names (besides IP literals and localhost) requests may name in `Host`;
    /// others get 421, so a web page cannot read the gateway by rebinding its DNS.
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
}

impl Default for HttpSection {
    fn default() -> Self {
        HttpSection { listen: default_http_listen(), allowed_hosts: Vec::new() }
    }
}

/// `[api]`: the local API on a unix socket, used by `berrygw status`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiSection {
    /// Socket path, created mode 0660 (owner and group may read status).
    #[serde(default = "default_api_socket")]
    pub socket: PathBuf,
    /// Who may act (actuate, reload) besides root and the daemon's own user.
    #[serde(default)]
    pub operators: Vec<crate::status::operators::Operator>,
}

impl Default for ApiSection {
    fn default() -> Self {
        ApiSection { socket: default_api_socket(), operators: Vec::new() }
    }
}

/// Where `berrygw status` looks when no configuration names the socket.
pub const DEFAULT_API_SOCKET: &str = "/run/berrygw/api.sock";

fn default_http_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9101))
}

fn default_api_socket() -> PathBuf {
    PathBuf::from(DEFAULT_API_SOCKET)
}

/// Largest request head accepted (request line and headers).
pub const MAX_REQUEST_BYTES: usize = 8 * 1024;
/// A client gets this long to send its request head (and then its body).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
/// Connections served at once per listener. Over it, the HTTP listener answers 503 at
/// once; the local API's callers wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 64;
/// Connections one peer address may hold open on the HTTP listener; more get 503.
const MAX_CONNECTIONS_PER_PEER: usize = 8;
/// How long a refused connection is kept to be closed gracefully after its 503.
const REFUSE_LINGER: Duration = Duration::from_secs(1);

const PAGE: &str = include_str!("page.html");

/// What every route reads.
pub struct Site {
    view: GatewayView,
    metrics: Metrics,
    history: watch::Receiver<History>,
    /// Host names, beyond IP literals and localhost, the HTTP listener answers to.
    allowed_hosts: Vec<String>,
    /// Who may act on the local API socket (besides root and the daemon's user).
    operators: Vec<Operator>,
}

/// The running listeners; `stop` ends them and removes the socket file.
pub struct Served {
    tasks: Vec<JoinHandle<()>>,
    socket: Option<PathBuf>,
}

impl Served {
    /// Stop listening and remove the API socket.
    pub fn stop(self) {
        for t in self.tasks {
            t.abort();
        }
        if let Some(path) = self.socket {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Open the HTTP listener and the API socket named in `cfg` over `view`.
pub async fn serve(http: &HttpSection, api: &ApiSection, view: GatewayView) -> Served {
    let (history_tx, history) = watch::channel(History::default());
    let mut tasks = vec![tokio::spawn(super::sample_history(view.clone(), history_tx))];
    let allowed_hosts =
        http.allowed_hosts.iter().map(|h| h.trim_end_matches('.').to_ascii_lowercase()).collect();
    let operators = api.operators.clone();
    let site =
        Arc::new(Site { metrics: Metrics::new(view.clone()), view, history, allowed_hosts, operators });

    match TcpListener::bind(http.listen).await {
        Ok(listener) => {
            info!(listen = %http.listen, "status page and metrics at http://{}/", http.listen);
            tasks.push(tokio::spawn(accept_tcp(listener, site.clone())));
        }
        Err(e) => error!(
            "cannot listen on {} ([http] listen): {e}; no status page or metrics until restarted (forwarding continues)",
            http.listen
        ),
    }
    let socket = match bind_socket(&api.socket) {
        Ok(listener) => {
            info!(socket = %api.socket.display(), "local API listening");
            tasks.push(tokio::spawn(accept_unix(listener, site)));
            Some(api.socket.clone())
        }
        Err(e) => {
            error!(
                "cannot open the local API socket {} ([api] socket): {e}; `berrygw status` will not answer (forwarding continues)",
                api.socket.display()
            );
            None
        }
    };
    Served { tasks, socket }
}

/// Bind the unix socket at `path`, replacing a stale file but never a live daemon's socket.
fn bind_socket(path: &Path) -> std::io::Result<UnixListener> {
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                "another process answers on it (is a second berrygw running?)",
            ));
        }
        std::fs::remove_file(path)?;
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    Ok(listener)
}

/// Open connections of the HTTP listener, in all and by peer address.
#[derive(Default)]
struct Connections {
    total: usize,
    by_peer: HashMap<IpAddr, usize>,
}

/// A connection counted in `Connections`; uncounted when dropped.
struct Admitted {
    connections: Arc<Mutex<Connections>>,
    peer: IpAddr,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        if let Ok(mut c) = self.connections.lock() {
            c.total = c.total.saturating_sub(1);
            if let Some(n) = c.by_peer.get_mut(&self.peer) {
                *n -= 1;
                if *n == 0 {
                    c.by_peer.remove(&self.peer);
                }
            }
        }
    }
}

/// Counts a new connection from `peer`, or None when over a bound.
fn admit(connections: &Arc<Mutex<Connections>>, peer: IpAddr) -> Option<Admitted> {
    let mut c = connections.lock().ok()?;
    let mine = c.by_peer.get(&peer).copied().unwrap_or(0);
    if c.total >= MAX_CONNECTIONS || mine >= MAX_CONNECTIONS_PER_PEER {
        return None;
    }
    c.total += 1;
    c.by_peer.insert(peer, mine + 1);
    Some(Admitted { connections: connections.clone(), peer })
}

async fn accept_tcp(listener: TcpListener, site: Arc<Site>) {
    let connections = Arc::new(Mutex::new(Connections::default()));
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let Some(admitted) = admit(&connections, peer.ip()) else {
                    // Refused without serving: a short answer if the socket takes it now, then
                    // closed gracefully (see `refuse`).
                    debug!(%peer, "http connection refused: too many open");
                    let _ = stream.try_write(&Response::error(503, "too many connections").to_bytes());
                    tokio::spawn(refuse(stream));
                    continue;
                };
                let site = site.clone();
                tokio::spawn(async move {
                    debug!(%peer, "http connection");
                    handle(stream, &site, Listener::Http).await;
                    drop(admitted);
                });
            }
            // Out of file descriptors and the like: back off instead of spinning.
            Err(e) => {
                debug!("http accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Close a refused connection so that the client reads its 503: end our side (FIN), then
/// read and drop what the client sent, for at most [`REFUSE_LINGER`]. Closing a socket with
/// the client's request still unread makes the kernel send a reset instead, and a client
/// whose request arrived before the close (any slow machine; always under qemu) then got
/// "connection reset" instead of the answer.
async fn refuse(mut stream: tokio::net::TcpStream) {
    let _ = tokio::time::timeout(REFUSE_LINGER, async {
        let _ = stream.shutdown().await;
        let mut sink = [0u8; 1024];
        while let Ok(n) = stream.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

async fn accept_unix(listener: UnixListener, site: Arc<Site>) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else { return };
        match listener.accept().await {
            Ok((stream, _)) => {
                let peer = match stream.peer_cred() {
                    Ok(cred) => {
                        debug!(uid = cred.uid(), pid = ?cred.pid(), "local API connection");
                        Some(Peer { uid: cred.uid(), gid: cred.gid() })
                    }
                    Err(e) => {
                        debug!("local API connection, peer unknown: {e}");
                        None
                    }
                };
                let site = site.clone();
                tokio::spawn(async move {
                    handle(stream, &site, Listener::LocalApi { peer }).await;
                    drop(permit);
                });
            }
            Err(e) => {
                debug!("local API accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Which listener a request came in on: changes are served on the local API socket only.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Listener {
    Http,
    /// The unix socket; the peer when the kernel told it.
    LocalApi {
        peer: Option<Peer>,
    },
}

/// Largest request body (a command's JSON).
const MAX_BODY_BYTES: usize = 16 * 1024;

/// Serve one request on `stream`, then close it.
async fn handle<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, site: &Site, listener: Listener) {
    let response = match tokio::time::timeout(REQUEST_TIMEOUT, read_head(&mut stream)).await {
        Err(_) => Response::error(408, "request head not received in time"),
        Ok(Err(e)) => {
            debug!("http read: {e}");
            return;
        }
        Ok(Ok(None)) => return,
        Ok(Ok(Some(head))) => match parse_request(&head) {
            Ok(req) if listener == Listener::Http && foreign(&req, &site.allowed_hosts).is_some() => {
                let what = foreign(&req, &site.allowed_hosts).unwrap_or_default();
                debug!("http request refused: {what}");
                Response::error(421, &format!("{what} does not name this gateway; ask by its IP address, localhost, or a name in [http] allowed_hosts"))
            }
            Ok(req) if req.method == Method::Post => {
                match tokio::time::timeout(REQUEST_TIMEOUT, read_body(&mut stream, &head, req.content_length))
                    .await
                {
                    Ok(Ok(body)) => post(&req, &body, site, listener).await,
                    Ok(Err(e)) => Response::error(400, &format!("request body: {e}")),
                    Err(_) => Response::error(408, "request body not received in time"),
                }
            }
            Ok(req) => route(&req, site, listener),
            Err(rejection) => rejection,
        },
    };
    let _ = stream.write_all(&response.to_bytes()).await;
    let _ = stream.shutdown().await;
}

/// What in `req` names another site than this gateway (`Host: x`, `Origin: y`), if anything.
fn foreign(req: &Request, allowed: &[String]) -> Option<String> {
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

/// The request head, or None when the peer closed before sending anything.
/// A head over `MAX_REQUEST_BYTES` is cut there (and then refused by `parse_request`).
async fn read_head<S: AsyncRead + Unpin>(stream: &mut S) -> std::io::Result<Option<Vec<u8>>> {
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok((!head.is_empty()).then_some(head));
        }
        head.extend_from_slice(&chunk[..n]);
        if head_end(&head).is_some() || head.len() > MAX_REQUEST_BYTES {
            return Ok(Some(head));
        }
    }
}

/// The body of a request whose head (and maybe the start of the body) is in `head`.
async fn read_body<S: AsyncRead + Unpin>(
    stream: &mut S,
    head: &[u8],
    length: usize,
) -> std::io::Result<Vec<u8>> {
    let start = head_end(head).map_or(head.len(), |e| e + 4);
    let mut body = head.get(start..).unwrap_or_default().to_vec();
    let mut chunk = [0u8; 1024];
    while body.len() < length {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "body shorter than Content-Length",
            ));
        }
        body.extend_from_slice(&chunk[..n]);
    }
    body.truncate(length);
    Ok(body)
}

fn head_end(buf: &[u8]) -> Option<usize> {
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

/// Actions. Only on the local API socket (the HTTP listener may be open to a whole LAN),
/// and only for callers `[api] operators` allows (see `operators`); refusals are audited.
async fn post(req: &Request, body: &[u8], site: &Site, listener: Listener) -> Response {
    let Listener::LocalApi { peer } = listener else {
        return Response::error(405, "actions are served on the local API socket only")
            .with_header("Allow", "GET, HEAD");
    };
    let uid = peer.map(|p| p.uid);
    let refuse = |target: String, command: String, why: String| {
        let actuation = site.view.actuation.clone();
        async move {
            let actor = uid.map_or_else(|| "uid unknown".to_string(), |u| format!("uid {u}"));
            tracing::warn!(actor, target, command, "local API: refused: {why}");
            let body = match &actuation {
                Some(a) => serde_json::to_value(a.refuse_local(actor, &target, &command, why.clone()).await)
                    .unwrap_or_default(),
                None => {
                    serde_json::json!({ "outcome": "refused", "reason": "not_an_operator", "message": why })
                }
            };
            json_response(403, &body)
        }
    };
    match req.path.as_str() {
        "/api/reload" => {
            if let Err(why) = authorize(&site.operators, peer, "gateway", RELOAD) {
                return refuse("gateway".into(), RELOAD.into(), why).await;
            }
            let (status, body) = match crate::view::reload(&site.view).await {
                Ok(r) => {
                    info!("local API: reloaded: {r}");
                    (200, serde_json::json!({ "reloaded": true, "report": r.to_string() }))
                }
                Err(e) => {
                    error!("local API: NOT reloaded, what was in force stays: {e}");
                    (409, serde_json::json!({ "reloaded": false, "error": e }))
                }
            };
            json_response(status, &body)
        }
        "/api/actuate" => {
            let Some(actuation) = &site.view.actuation else {
                return Response::error(404, "no field devices on this gateway ([field] is not configured)");
            };
            #[derive(serde::Deserialize)]
            #[serde(deny_unknown_fields)]
            struct Ask {
                target: String,
                command: String,
                #[serde(default)]
                args: serde_json::Value,
            }
            let ask: Ask = match serde_json::from_slice(body) {
                Ok(a) => a,
                Err(e) => {
                    return Response::error(
                        400,
                        &format!("expected {{\"target\", \"command\", \"args\"}}: {e}"),
                    )
                }
            };
            if let Err(why) = authorize(&site.operators, peer, &ask.target, &ask.command) {
                return refuse(ask.target.clone(), ask.command.clone(), why).await;
            }
            let args = if ask.args.is_null() { serde_json::json!({}) } else { ask.args };
            let entry = actuation.local(uid, &ask.target, &ask.command, args).await;
            json_response(200, &serde_json::to_value(&entry).unwrap_or_default())
        }
        _ => Response::error(404, "not found; POST /api/reload or /api/actuate"),
    }
}

fn json_response(status: u16, body: &serde_json::Value) -> Response {
    let mut r = Response::ok("application/json", body.to_string().into_bytes());
    r.status = status;
    r
}

/// `limit=N` from a query string (default 50, at most 1000).
fn query_limit(query: &str) -> usize {
    query
        .split('&')
        .find_map(|kv| kv.strip_prefix("limit="))
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(50)
        .clamp(1, 1000)
}

fn route(req: &Request, site: &Site, listener: Listener) -> Response {
    let local = matches!(listener, Listener::LocalApi { .. });
    let mut response = match req.path.as_str() {
        "/" | "/index.html" => Response::ok("text/html; charset=utf-8", PAGE.into()).with_header(
            "Content-Security-Policy",
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'",
        ),
        "/metrics" => Response::ok(metrics::CONTENT_TYPE, site.metrics.encode().into_bytes()),
        "/api/status" => {
            let status = Status::collect(&site.view, &site.history.borrow());
            match serde_json::to_vec(&status) {
                Ok(body) => Response::ok("application/json", body),
                Err(e) => Response::error(500, &format!("status not encodable: {e}")),
            }
        }
        "/api/audit" if local => match &site.view.actuation {
            Some(a) => match a.audit(query_limit(&req.query), None) {
                Ok(entries) => json_response(200, &serde_json::to_value(entries).unwrap_or_default()),
                Err(e) => Response::error(500, &format!("audit log: {e:#}")),
            },
            None => Response::error(404, "no field devices on this gateway ([field] is not configured)"),
        },
        p if local && p.starts_with("/api/points/") => {
            let target = &p["/api/points/".len()..];
            match site.view.actuation.as_ref().and_then(|a| a.points(target)) {
                Some(points) => json_response(200, &points),
                None => Response::error(404, &format!("no field device named {target:?}")),
            }
        }
        _ => Response::error(404, "not found; try /, /metrics or /api/status"),
    };
    if req.head_only {
        response.head_only = true;
    }
    response
}

/// An HTTP response, always closing the connection.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
    head_only: bool,
}

impl Response {
    fn ok(content_type: &str, body: Vec<u8>) -> Response {
        Response { status: 200, headers: vec![("Content-Type", content_type.into())], body, head_only: false }
    }

    fn error(status: u16, message: &str) -> Response {
        Response {
            status,
            headers: vec![("Content-Type", "text/plain; charset=utf-8".into())],
            body: format!("{message}\n").into_bytes(),
            head_only: false,
        }
    }

    fn with_header(mut self, name: &'static str, value: &str) -> Response {
        self.headers.push((name, value.into()));
        self
    }

    fn to_bytes(&self) -> Vec<u8> {
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
