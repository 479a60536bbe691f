//! A WebSocket client (RFC 6455), as much of it as Basics Station's LNS and router-info
//! endpoints use: `ws://` and `wss://` (rustls, with the sink's trust and client
//! certificate), extra request headers (a token), text messages in both directions, ping,
//! pong and close. No extensions, no subprotocols. Frames from the server are checked:
//! masked, reserved bits, oversized, fragmented control frames and unknown opcodes are
//! errors that name the fault.
//!
//! Reading is cancel-safe (everything read is kept in the buffer), so `next` can sit in a
//! `select!`; sending is done outside one.

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use base64::Engine;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// The longest message taken from the server (a `router_config` is a few KiB).
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024;
/// The longest handshake answer.
const MAX_HANDSHAKE_BYTES: usize = 16 * 1024;
/// RFC 6455 section 1.3.
const ACCEPT_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// A `ws://` or `wss://` address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WsUri {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    /// Starts with `/`.
    pub path: String,
}

impl WsUri {
    pub fn parse(text: &str) -> anyhow::Result<WsUri> {
        WsUri::parse_with(text, "ws", "wss")
    }

    /// An address with other schemes for plain and TLS (CUPS's `http`, `https`).
    pub fn parse_with(text: &str, plain: &str, secure: &str) -> anyhow::Result<WsUri> {
        let text = text.trim();
        let (tls, rest) = if let Some(r) = text.strip_prefix(secure).and_then(|r| r.strip_prefix("://")) {
            (true, r)
        } else if let Some(r) = text.strip_prefix(plain).and_then(|r| r.strip_prefix("://")) {
            (false, r)
        } else {
            bail!("`{text}` is not a {plain}:// or {secure}:// URI");
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let default_port = if tls { 443 } else { 80 };
        let (host, port) = match authority.strip_prefix('[') {
            Some(v6) => {
                let (host, rest) =
                    v6.split_once(']').ok_or_else(|| anyhow!("bad IPv6 address in `{text}`"))?;
                (host, if rest.is_empty() { None } else { Some(rest.strip_prefix(':').unwrap_or("x")) })
            }
            None => match authority.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            },
        };
        let port = match port {
            None => default_port,
            Some(p) => {
                p.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(|| anyhow!("bad port in `{text}`"))?
            }
        };
        if host.is_empty() || host.contains(|c: char| c.is_whitespace() || c == '@' || c == '/') {
            bail!("bad host in `{text}`");
        }
        if path.contains(|c: char| c.is_whitespace() || c.is_control()) {
            bail!("bad path in `{text}`");
        }
        Ok(WsUri { tls, host: host.to_string(), port, path: path.to_string() })
    }

    /// `host:port`, an IPv6 host in brackets: the `Host` header, and the URI's middle.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// The same server with `suffix` after the path (`/router-info`).
    pub fn join(&self, suffix: &str) -> WsUri {
        let base = self.path.trim_end_matches('/');
        WsUri { path: format!("{base}{suffix}"), ..self.clone() }
    }
}

impl AsRef<WsUri> for WsUri {
    fn as_ref(&self) -> &WsUri {
        self
    }
}

impl fmt::Display for WsUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}{}", if self.tls { "wss" } else { "ws" }, self.authority(), self.path)
    }
}

/// A byte stream a WebSocket runs over: TCP, or TLS over TCP.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// What the server sent.
#[derive(Debug, PartialEq, Eq)]
pub enum Message {
    Text(String),
    Binary(Vec<u8>),
    /// Answered by the caller with `pong`.
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    /// The server closed the connection (its code, if it gave one).
    Close(Option<u16>),
}

/// An open WebSocket.
pub struct WebSocket {
    io: Pin<Box<dyn Stream>>,
    reader: Reader,
}

impl fmt::Debug for WebSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebSocket").field("buffered", &self.reader.buf.len()).finish()
    }
}

/// What the server sent and was not taken yet: bytes, and a fragmented message being put
/// together (its opcode and what came so far). Pure: the fuzz target feeds it bytes.
#[derive(Debug, Default)]
pub struct Reader {
    buf: Vec<u8>,
    partial: Option<(u8, Vec<u8>)>,
}

/// Open a WebSocket to `uri`: TCP, TLS when `wss://` (with `tls`), the upgrade with
/// `headers` added; everything within `timeout`.
pub async fn connect(
    uri: &WsUri,
    tls: Option<&Arc<rustls::ClientConfig>>,
    headers: &[(String, String)],
    timeout: Duration,
) -> anyhow::Result<WebSocket> {
    tokio::time::timeout(timeout, connect_inner(uri, tls, headers))
        .await
        .map_err(|_| anyhow!("{uri}: no WebSocket within {} s", timeout.as_secs()))?
}

async fn connect_inner(
    uri: &WsUri,
    tls: Option<&Arc<rustls::ClientConfig>>,
    headers: &[(String, String)],
) -> anyhow::Result<WebSocket> {
    handshake(open(uri, tls).await?, uri, headers).await
}

/// A byte stream to `uri`'s server: TCP, with TLS when the URI says so.
pub async fn open(
    uri: &WsUri,
    tls: Option<&Arc<rustls::ClientConfig>>,
) -> anyhow::Result<Pin<Box<dyn Stream>>> {
    let tcp = TcpStream::connect((uri.host.as_str(), uri.port))
        .await
        .with_context(|| format!("connecting to {}:{}", uri.host, uri.port))?;
    let _ = tcp.set_nodelay(true);
    let io: Pin<Box<dyn Stream>> = if uri.tls {
        let config = tls.ok_or_else(|| anyhow!("{uri}: wss:// without a TLS configuration"))?;
        let name =
            rustls::pki_types::ServerName::try_from(uri.host.clone()).map_err(|e| anyhow!("{uri}: {e}"))?;
        let stream = tokio_rustls::TlsConnector::from(config.clone())
            .connect(name, tcp)
            .await
            .with_context(|| format!("TLS with {}:{}", uri.host, uri.port))?;
        Box::pin(stream)
    } else {
        Box::pin(tcp)
    };
    Ok(io)
}

/// The HTTP upgrade on an open stream.
pub async fn handshake(
    mut io: Pin<Box<dyn Stream>>,
    uri: &WsUri,
    headers: &[(String, String)],
) -> anyhow::Result<WebSocket> {
    let key = base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 16]>());
    let mut request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n",
        uri.path,
        uri.authority()
    );
    for (name, value) in headers {
        if name.contains(|c: char| c == ':' || c.is_control()) || value.contains(|c: char| c.is_control()) {
            bail!("header {name:?} cannot be sent");
        }
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    io.write_all(request.as_bytes()).await.context("sending the WebSocket upgrade")?;
    io.flush().await?;

    let (head, rest) = read_head(&mut io).await.with_context(|| format!("{uri}: the upgrade answer"))?;
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or_default();
    let code = status.split_whitespace().nth(1).unwrap_or_default();
    if code != "101" {
        return Err(super::Refused(format!(
            "{uri}: the server refused the WebSocket: {}",
            status.chars().take(120).collect::<String>()
        ))
        .into());
    }
    let mut upgrade = false;
    let mut connection = false;
    let mut accept = None;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else { continue };
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "upgrade" => upgrade = value.eq_ignore_ascii_case("websocket"),
            "connection" => connection = value.split(',').any(|v| v.trim().eq_ignore_ascii_case("upgrade")),
            "sec-websocket-accept" => accept = Some(value.to_string()),
            "sec-websocket-extensions" if !value.is_empty() => {
                bail!("{uri}: the server chose an extension ({value}) that was not offered")
            }
            _ => {}
        }
    }
    if !upgrade || !connection {
        bail!("{uri}: the answer to the upgrade has no Upgrade: websocket / Connection: Upgrade");
    }
    if accept.as_deref() != Some(accept_key(&key).as_str()) {
        bail!("{uri}: wrong Sec-WebSocket-Accept");
    }
    Ok(WebSocket { io, reader: Reader { buf: rest, partial: None } })
}

/// The head of an HTTP answer (status line and headers, as text) and the bytes read
/// after it; at most `MAX_HANDSHAKE_BYTES` of head.
pub async fn read_head(io: &mut Pin<Box<dyn Stream>>) -> anyhow::Result<(String, Vec<u8>)> {
    let mut buf = Vec::with_capacity(1024);
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > MAX_HANDSHAKE_BYTES {
            bail!("longer than {MAX_HANDSHAKE_BYTES} bytes");
        }
        if io.read_buf(&mut buf).await.context("reading")? == 0 {
            bail!("the server closed the connection before answering");
        }
    };
    let rest = buf.split_off(end);
    Ok((String::from_utf8_lossy(&buf).to_string(), rest))
}

/// `Sec-WebSocket-Accept` for a key: base64 of the SHA-1 of key and GUID.
pub fn accept_key(key: &str) -> String {
    let digest = ring::digest::digest(
        &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
        format!("{key}{ACCEPT_GUID}").as_bytes(),
    );
    base64::engine::general_purpose::STANDARD.encode(digest.as_ref())
}

/// One frame of a client (masked with `mask`), whole.
pub fn client_frame(opcode: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 14);
    out.push(0x80 | opcode);
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n <= 0xffff => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

/// A frame from the server, as it was read.
#[derive(Debug, PartialEq, Eq)]
struct Frame {
    fin: bool,
    opcode: u8,
    payload: Vec<u8>,
}

/// The first frame in `buf` (drained from it), `None` if it is not all there yet.
fn take_frame(buf: &mut Vec<u8>) -> anyhow::Result<Option<Frame>> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let (b0, b1) = (buf[0], buf[1]);
    if b0 & 0x70 != 0 {
        bail!("a frame with reserved bits set (no extension was agreed)");
    }
    if b1 & 0x80 != 0 {
        bail!("a masked frame from the server");
    }
    let (len, start) = match b1 & 0x7f {
        126 => {
            let Some(b) = buf.get(2..4) else { return Ok(None) };
            (u64::from(u16::from_be_bytes([b[0], b[1]])), 4)
        }
        127 => {
            let Some(b) = buf.get(2..10) else { return Ok(None) };
            (u64::from_be_bytes(b.try_into().unwrap_or_default()), 10)
        }
        n => (u64::from(n), 2),
    };
    if len > MAX_MESSAGE_BYTES as u64 {
        bail!("a frame of {len} bytes (at most {MAX_MESSAGE_BYTES} are taken)");
    }
    let end = start + len as usize;
    if buf.len() < end {
        return Ok(None);
    }
    let payload = buf[start..end].to_vec();
    buf.drain(..end);
    Ok(Some(Frame { fin: b0 & 0x80 != 0, opcode: b0 & 0x0f, payload }))
}

impl WebSocket {
    /// The next message from the server; an error for a broken frame or a dead stream.
    /// Cancel-safe.
    pub async fn next(&mut self) -> anyhow::Result<Message> {
        loop {
            if let Some(message) = self.reader.next_message()? {
                return Ok(message);
            }
            let n = self.io.read_buf(&mut self.reader.buf).await.context("reading the WebSocket")?;
            if n == 0 {
                bail!("the server closed the connection without a close frame");
            }
        }
    }
}

impl Reader {
    /// Bytes from the server.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next whole message in what was pushed; `None` until one is whole.
    pub fn next_message(&mut self) -> anyhow::Result<Option<Message>> {
        while let Some(frame) = take_frame(&mut self.buf)? {
            if let Some(message) = self.assemble(frame)? {
                return Ok(Some(message));
            }
        }
        Ok(None)
    }

    fn assemble(&mut self, frame: Frame) -> anyhow::Result<Option<Message>> {
        let Frame { fin, opcode, payload } = frame;
        if opcode >= 8 {
            if !fin || payload.len() > 125 {
                bail!("a fragmented or oversized control frame");
            }
            return Ok(Some(match opcode {
                8 => {
                    Message::Close((payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]])))
                }
                9 => Message::Ping(payload),
                10 => Message::Pong(payload),
                other => bail!("unknown control opcode {other}"),
            }));
        }
        let (opcode, payload) = match (opcode, self.partial.take()) {
            (0, Some((op, mut so_far))) => {
                if so_far.len() + payload.len() > MAX_MESSAGE_BYTES {
                    bail!("a message over {MAX_MESSAGE_BYTES} bytes");
                }
                so_far.extend_from_slice(&payload);
                (op, so_far)
            }
            (0, None) => bail!("a continuation frame with no message to continue"),
            (1 | 2, None) => (opcode, payload),
            (1 | 2, Some(_)) => bail!("a new message inside a fragmented one"),
            (other, _) => bail!("unknown opcode {other}"),
        };
        if !fin {
            self.partial = Some((opcode, payload));
            return Ok(None);
        }
        Ok(Some(if opcode == 1 {
            Message::Text(
                String::from_utf8(payload).map_err(|_| anyhow!("a text message that is not UTF-8"))?,
            )
        } else {
            Message::Binary(payload)
        }))
    }
}

impl WebSocket {
    async fn send(&mut self, opcode: u8, payload: &[u8]) -> anyhow::Result<()> {
        let frame = client_frame(opcode, payload, rand::random());
        self.io.write_all(&frame).await.context("writing to the WebSocket")?;
        self.io.flush().await.context("writing to the WebSocket")
    }

    pub async fn send_text(&mut self, text: &str) -> anyhow::Result<()> {
        self.send(1, text.as_bytes()).await
    }

    pub async fn pong(&mut self, payload: &[u8]) -> anyhow::Result<()> {
        self.send(10, payload).await
    }

    /// Close politely (code 1000); errors are of no interest by then.
    pub async fn close(&mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(2), self.send(8, &1000u16.to_be_bytes())).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_accept_key_is_rfc_6455s_example() {
        assert_eq!(accept_key("dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn uris_are_read_with_their_default_ports_and_joined() {
        let u = WsUri::parse("wss://lns.example.org:8887").unwrap();
        assert_eq!(u, WsUri { tls: true, host: "lns.example.org".into(), port: 8887, path: "/".into() });
        assert_eq!(u.join("/router-info").path, "/router-info");
        let u = WsUri::parse("ws://[::1]/traffic/eui-1").unwrap();
        assert_eq!((u.host.as_str(), u.port, u.path.as_str()), ("::1", 80, "/traffic/eui-1"));
        assert_eq!(u.to_string(), "ws://[::1]:80/traffic/eui-1");
        for bad in ["http://x", "ws://", "ws://h:0", "ws://h:99999", "ws://a b", "wss://u@h"] {
            assert!(WsUri::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn client_frames_are_masked_and_server_frames_read_back() {
        let f = client_frame(1, b"Hello", [0x37, 0xfa, 0x21, 0x3d]);
        // RFC 6455 section 5.7: a masked "Hello".
        assert_eq!(f, [0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58]);
        let mut buf = vec![0x01, 0x03, b'H', b'e', b'l', 0x80, 0x02, b'l', b'o'];
        assert_eq!(
            take_frame(&mut buf).unwrap(),
            Some(Frame { fin: false, opcode: 1, payload: b"Hel".to_vec() })
        );
        assert_eq!(
            take_frame(&mut buf).unwrap(),
            Some(Frame { fin: true, opcode: 0, payload: b"lo".to_vec() })
        );
        assert!(buf.is_empty());
        let mut long = vec![0x82, 126, 0x01, 0x00];
        long.extend(vec![7u8; 256]);
        let mut part = long[..100].to_vec();
        assert_eq!(take_frame(&mut part).unwrap(), None, "not all there yet");
        assert_eq!(take_frame(&mut long).unwrap().map(|f| f.payload.len()), Some(256));
    }

    #[test]
    fn broken_server_frames_are_refused_with_why() {
        for (bytes, why) in [
            (vec![0x81, 0x81, 0, 0, 0, 0, b'x'], "masked"),
            (vec![0xc1, 0x01, b'x'], "reserved"),
            (vec![0x82, 127, 0, 0, 0, 1, 0, 0, 0, 0], "bytes"),
        ] {
            let mut buf = bytes;
            let e = take_frame(&mut buf).unwrap_err().to_string();
            assert!(e.contains(why), "{e}");
        }
        let mut ws = Reader::default();
        let e = ws.assemble(Frame { fin: true, opcode: 0, payload: vec![] }).unwrap_err();
        assert!(e.to_string().contains("continuation"), "{e}");
        let e = ws.assemble(Frame { fin: false, opcode: 9, payload: vec![] }).unwrap_err();
        assert!(e.to_string().contains("control"), "{e}");
        let e = ws.assemble(Frame { fin: true, opcode: 3, payload: vec![] }).unwrap_err();
        assert!(e.to_string().contains("opcode 3"), "{e}");
        let e = ws.assemble(Frame { fin: true, opcode: 1, payload: vec![0xff] }).unwrap_err();
        assert!(e.to_string().contains("UTF-8"), "{e}");
    }
}
