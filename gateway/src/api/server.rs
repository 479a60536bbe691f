//! The two listeners: TCP (`[http] listen`: status page, metrics, `/api/status`)
//! and the unix socket (`[api] socket`, mode 0660). One request per connection;
//! the head and body are bounded in size and time; connections are bounded in
//! number, per peer address and in all (over it, TCP gets a 503 at once).

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

use super::http::{foreign, head_end, parse_request, Method, Response, MAX_REQUEST_BYTES};
use super::operators::Peer;
use super::routes::{post, route, Listener, Routes};
use super::{ApiSection, HttpSection};
use crate::ledger::Ledger;
use crate::metrics::Metrics;
use crate::status::sample_history;
use crate::status::History;
use crate::view::GatewayView;

/// A client gets this long to send its request head (and then its body).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
/// Connections served at once per listener. Over it, the HTTP listener answers 503 at
/// once; the local API's callers wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 64;
/// Connections one peer address may hold open on the HTTP listener; more get 503.
const MAX_CONNECTIONS_PER_PEER: usize = 8;
/// How long a refused connection is kept to be closed gracefully after its 503.
const REFUSE_LINGER: Duration = Duration::from_secs(1);

/// The running listeners; `stop` ends them and removes the socket file.
pub struct Served {
    tasks: Vec<JoinHandle<()>>,
    socket: Option<PathBuf>,
}

impl Served {
    /// Stop listening and remove the API socket; the listeners are closed on return (so a
    /// new `serve` may bind the same address at once).
    pub async fn stop(self) {
        for t in &self.tasks {
            t.abort();
        }
        for t in self.tasks {
            let _ = t.await;
        }
        if let Some(path) = self.socket {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Open the HTTP listener and the API socket named in `cfg` over `view`.
pub async fn serve(
    http: &HttpSection,
    api: &ApiSection,
    view: GatewayView,
    ledger: Option<Ledger>,
) -> Served {
    let (history_tx, history) = watch::channel(History::default());
    let mut tasks = vec![tokio::spawn(sample_history(view.clone(), history_tx))];
    let allowed_hosts =
        http.allowed_hosts.iter().map(|h| h.trim_end_matches('.').to_ascii_lowercase()).collect();
    let operators = api.operators.clone();
    let routes = Arc::new(Routes {
        metrics: Metrics::new(view.clone(), ledger.clone()),
        view,
        history,
        allowed_hosts,
        operators,
        ledger,
    });

    match TcpListener::bind(http.listen).await {
        Ok(listener) => {
            info!(listen = %http.listen, "status page and metrics at http://{}/", http.listen);
            tasks.push(tokio::spawn(accept_tcp(listener, routes.clone())));
        }
        Err(e) => error!(
            "cannot listen on {} ([http] listen): {e}; no status page or metrics until restarted (forwarding continues)",
            http.listen
        ),
    }
    let socket = match bind_socket(&api.socket) {
        Ok(listener) => {
            info!(socket = %api.socket.display(), "local API listening");
            tasks.push(tokio::spawn(accept_unix(listener, routes)));
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

async fn accept_tcp(listener: TcpListener, routes: Arc<Routes>) {
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
                let routes = routes.clone();
                tokio::spawn(async move {
                    debug!(%peer, "http connection");
                    handle(stream, &routes, Listener::Http).await;
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

async fn accept_unix(listener: UnixListener, routes: Arc<Routes>) {
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
                let routes = routes.clone();
                tokio::spawn(async move {
                    handle(stream, &routes, Listener::LocalApi { peer }).await;
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

/// Serve one request on `stream`, then close it.
async fn handle<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, routes: &Routes, listener: Listener) {
    let response = match tokio::time::timeout(REQUEST_TIMEOUT, read_head(&mut stream)).await {
        Err(_) => Response::error(408, "request head not received in time"),
        Ok(Err(e)) => {
            debug!("http read: {e}");
            return;
        }
        Ok(Ok(None)) => return,
        Ok(Ok(Some(head))) => match parse_request(&head) {
            Ok(req) if listener == Listener::Http && foreign(&req, &routes.allowed_hosts).is_some() => {
                let what = foreign(&req, &routes.allowed_hosts).unwrap_or_default();
                debug!("http request refused: {what}");
                Response::error(421, &format!("{what} does not name this gateway; ask by its IP address, localhost, or a name in [http] allowed_hosts"))
            }
            Ok(req) if req.method == Method::Post => {
                match tokio::time::timeout(REQUEST_TIMEOUT, read_body(&mut stream, &head, req.content_length))
                    .await
                {
                    Ok(Ok(body)) => post(&req, &body, routes, listener).await,
                    Ok(Err(e)) => Response::error(400, &format!("request body: {e}")),
                    Err(_) => Response::error(408, "request body not received in time"),
                }
            }
            Ok(req) => route(&req, routes, listener),
            Err(rejection) => rejection,
        },
    };
    let _ = stream.write_all(&response.to_bytes()).await;
    let _ = stream.shutdown().await;
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
