//! The client side of the local API: one request to the daemon's socket and its
//! answer (the commands that use it are `crate::cli::api`). Blocking std I/O: a command makes one request and exits.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use crate::status::Status;

/// Why no status could be had.
#[derive(Debug, thiserror::Error)]
pub enum AskError {
    #[error("no answer on {path}: {source}")]
    NotRunning { path: String, source: std::io::Error },
    #[error("the daemon's answer could not be read: {0}")]
    BadAnswer(String),
}

/// The raw JSON body of `GET /api/status` from the daemon at `socket`.
pub fn ask(socket: &Path) -> Result<String, AskError> {
    let (status, body) = request(socket, "GET", "/api/status")?;
    if status != 200 {
        return Err(AskError::BadAnswer(format!("HTTP {status}: {}", body.trim())));
    }
    Ok(body)
}

/// One request to the daemon's local API: the HTTP status and the body.
pub fn request(socket: &Path, method: &str, path: &str) -> Result<(u16, String), AskError> {
    request_with_body(socket, method, path, None)
}

/// As `request`, with a JSON body. Waits up to 5 minutes (a command's read-back).
pub fn request_with_body(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> Result<(u16, String), AskError> {
    let not_running = |source| AskError::NotRunning { path: socket.display().to_string(), source };
    let mut stream = UnixStream::connect(socket).map_err(not_running)?;
    let timeout = Some(Duration::from_secs(if body.is_some() { 300 } else { 10 }));
    stream.set_read_timeout(timeout).map_err(not_running)?;
    stream.set_write_timeout(timeout).map_err(not_running)?;
    stream
        .write_all(
            format!(
                "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n{}\r\n{}",
                body.map(|b| format!("Content-Type: application/json\r\nContent-Length: {}\r\n", b.len()))
                    .unwrap_or_default(),
                body.unwrap_or_default()
            )
            .as_bytes(),
        )
        .map_err(not_running)?;
    let mut raw = Vec::new();
    stream.take(16 << 20).read_to_end(&mut raw).map_err(not_running)?;
    let text = String::from_utf8(raw).map_err(|_| AskError::BadAnswer("not UTF-8".into()))?;
    let (head, body) =
        text.split_once("\r\n\r\n").ok_or_else(|| AskError::BadAnswer("no HTTP header".into()))?;
    let status_line = head.lines().next().unwrap_or_default();
    let status = status_line
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or_else(|| AskError::BadAnswer(format!("bad status line {status_line:?}")))?;
    Ok((status, body.to_string()))
}

/// Parse the JSON body of `/api/status`.
pub fn parse(body: &str) -> Result<Status, AskError> {
    serde_json::from_str(body).map_err(|e| AskError::BadAnswer(format!("unexpected JSON: {e}")))
}
