//! One MQTT 3.1.1 connection, driven by the sink's own task: what is published is written
//! at once (no client queue, no second task), and what the broker sends back is read when
//! the sink is awake anyway.
//!
//! Acknowledgements are read late on purpose. At a field's rates every uplink would
//! otherwise wake the gateway twice: once for the packet forwarder's datagram, once for
//! the broker's PUBACK a fraction of a millisecond after the PUBLISH. Once subscribed, the
//! socket's `SO_RCVLOWAT` is raised above a PUBACK's size and below the smallest PUBLISH
//! the broker can send on our subscriptions ([`wake_threshold`]): a lone PUBACK (or
//! PINGRESP) wakes nobody, while a downlink, a command, a closed connection or an error
//! wakes the sink at once, as before. What arrived is read at the sink's next publish
//! ([`Conn::collect`]), at its deadline before the journal's commit window ends (the
//! session's timer), or at the keep-alive tick.

use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::time::Duration;

use anyhow::{anyhow, Context};
use bytes::{Buf, BufMut, BytesMut};
use rumqttc::mqttbytes::v4::{ConnectReturnCode, Packet, PubAck, Subscribe, SubscribeFilter};
use rumqttc::mqttbytes::{self, QoS};
use rumqttc::{Connect, LastWill, Login};
use tokio::io::Interest;
use tokio::net::TcpStream;

use super::config::MqttSinkSettings;

/// Nothing larger is sent (a record this large is set aside, not published).
const MAX_OUTGOING: usize = 256 * 1024;

/// The fewest bytes TLS adds to a record: header and AEAD tag (TLS 1.2 with
/// ChaCha20-Poly1305; TLS 1.3 adds the content type, AES-GCM in 1.2 an explicit nonce).
const TLS_RECORD_OVERHEAD: usize = 5 + 16;

/// The connection could not be made or broke: the broker is tried again soon.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(super) struct Broken(pub(super) String);

/// A publish too large to send.
#[derive(Debug, thiserror::Error)]
#[error("{size} bytes, more than the {MAX_OUTGOING} a publish may have")]
pub(super) struct TooLarge {
    size: usize,
}

pub(super) struct Conn {
    tcp: TcpStream,
    rx: Rx,
    /// Plaintext waiting to be sent ([`Conn::flush`]).
    out: BytesMut,
    next_pkid: u16,
    /// The receive low-water mark while acknowledgements are read late.
    threshold: libc::c_int,
    lazy: bool,
}

/// What comes in: TLS state and the plaintext not yet parsed.
struct Rx {
    tls: Option<Box<rustls::ClientConnection>>,
    inbox: BytesMut,
    max_incoming: usize,
    closed: bool,
}

impl Conn {
    /// Connect, say CONNECT and wait for the CONNACK (`timeout` for all of it). A broker that
    /// cannot be reached or does not answer is [`Broken`]; a refusal or a failed TLS
    /// handshake is not (the sink backs off).
    pub(super) async fn open(
        s: &MqttSinkSettings,
        keep_alive: Duration,
        clean_session: bool,
        will: LastWill,
        max_incoming: usize,
        timeout: Duration,
    ) -> anyhow::Result<Conn> {
        let server = &s.server;
        let opening = async {
            let tcp = TcpStream::connect((server.host.as_str(), server.port))
                .await
                .map_err(|e| Broken(format!("connecting to {server}: {e}")))?;
            tcp.set_nodelay(true).map_err(|e| Broken(format!("connecting to {server}: {e}")))?;
            let (tcp, tls) = match &s.tls {
                None => (tcp, None),
                Some(config) => {
                    let name = rustls::pki_types::ServerName::try_from(server.host.clone())
                        .with_context(|| format!("{} is not a name TLS can verify", server.host))?;
                    let stream = tokio_rustls::TlsConnector::from(config.clone())
                        .connect(name, tcp)
                        .await
                        .with_context(|| format!("TLS handshake with {server}"))?;
                    let (tcp, mut tls) = stream.into_inner();
                    tls.set_buffer_limit(None);
                    (tcp, Some(Box::new(tls)))
                }
            };
            let mut conn = Conn::new(tcp, tls, max_incoming);
            let mut connect = Connect::new(s.client_id.clone());
            connect.keep_alive = u16::try_from(keep_alive.as_secs()).unwrap_or(u16::MAX);
            connect.clean_session = clean_session;
            connect.last_will = Some(will);
            connect.login = s.credentials.as_ref().map(|(user, pass)| Login::new(user.clone(), pass.clone()));
            Packet::Connect(connect).write(&mut conn.out, MAX_OUTGOING).context("encoding CONNECT")?;
            loop {
                // Also what TLS itself has to answer while we wait.
                conn.flush().await?;
                conn.readable().await?;
                while let Some(packet) = conn.next_packet()? {
                    if let Packet::ConnAck(ack) = packet {
                        return match ack.code {
                            ConnectReturnCode::Success => Ok(conn),
                            code => Err(anyhow!("broker refused the connection: {code:?}")),
                        };
                    }
                }
            }
        };
        tokio::time::timeout(timeout, opening).await.map_err(|_| {
            anyhow::Error::new(Broken(format!("no CONNACK from {server} within {} s", timeout.as_secs())))
        })?
    }

    fn new(tcp: TcpStream, tls: Option<Box<rustls::ClientConnection>>, max_incoming: usize) -> Conn {
        Conn {
            tcp,
            rx: Rx { tls, inbox: BytesMut::with_capacity(4096), max_incoming, closed: false },
            out: BytesMut::with_capacity(4096),
            next_pkid: 0,
            threshold: 1,
            lazy: false,
        }
    }

    /// Queue a PUBLISH; its packet id (0 at QoS 0).
    pub(super) fn publish(
        &mut self,
        topic: &str,
        payload: &[u8],
        qos: QoS,
        retain: bool,
    ) -> Result<u16, TooLarge> {
        let pkid = if qos == QoS::AtMostOnce { 0 } else { self.pkid() };
        let body = 2 + topic.len() + if pkid == 0 { 0 } else { 2 } + payload.len();
        if body + 5 > MAX_OUTGOING || topic.len() > usize::from(u16::MAX) {
            return Err(TooLarge { size: body + 5 });
        }
        self.out.put_u8(0x30 | (qos as u8) << 1 | u8::from(retain));
        let mut len = body;
        loop {
            let digit = (len % 128) as u8;
            len /= 128;
            self.out.put_u8(if len > 0 { digit | 0x80 } else { digit });
            if len == 0 {
                break;
            }
        }
        self.out.put_u16(topic.len() as u16);
        self.out.put_slice(topic.as_bytes());
        if pkid != 0 {
            self.out.put_u16(pkid);
        }
        self.out.put_slice(payload);
        Ok(pkid)
    }

    /// Queue one SUBSCRIBE (QoS 1) for `filters`, and learn how small a PUBLISH on them can
    /// be (the low-water mark of late reading). Its packet id.
    pub(super) fn subscribe(&mut self, filters: &[String]) -> anyhow::Result<u16> {
        let pkid = self.pkid();
        let mut subscribe =
            Subscribe::new_many(filters.iter().map(|f| SubscribeFilter::new(f.clone(), QoS::AtLeastOnce)));
        subscribe.pkid = pkid;
        Packet::Subscribe(subscribe).write(&mut self.out, MAX_OUTGOING).context("encoding SUBSCRIBE")?;
        self.threshold = wake_threshold(filters, self.rx.tls.is_some());
        Ok(pkid)
    }

    pub(super) fn ping(&mut self) {
        self.out.put_slice(&[0xc0, 0]);
    }

    pub(super) fn disconnect(&mut self) {
        self.out.put_slice(&[0xe0, 0]);
    }

    /// Whether anything waits to be sent.
    pub(super) fn wants_flush(&self) -> bool {
        !self.out.is_empty() || self.rx.tls.as_ref().is_some_and(|tls| tls.wants_write())
    }

    /// Send everything queued; waits only while the socket's buffer is full.
    pub(super) async fn flush(&mut self) -> anyhow::Result<()> {
        let Conn { tcp, rx, out, .. } = self;
        let broken = |e: io::Error| anyhow::Error::new(Broken(format!("sending to the broker: {e}")));
        match &mut rx.tls {
            None => {
                while !out.is_empty() {
                    match tcp.try_write(out) {
                        Ok(n) => out.advance(n),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            tcp.writable().await.map_err(broken)?
                        }
                        Err(e) => return Err(broken(e)),
                    }
                }
            }
            Some(tls) => {
                if !out.is_empty() {
                    tls.writer().write_all(out).map_err(broken)?;
                    out.clear();
                }
                while tls.wants_write() {
                    match tls.write_tls(&mut Sending(tcp)) {
                        Ok(_) => {}
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            tcp.writable().await.map_err(broken)?
                        }
                        Err(e) => return Err(broken(e)),
                    }
                }
            }
        }
        Ok(())
    }

    /// Read what has arrived, whatever the low-water mark, without waiting (the sink is
    /// awake anyway). Stops at a short read: anything later wakes the sink or waits for
    /// the next call.
    pub(super) fn collect(&mut self) -> anyhow::Result<()> {
        self.rx
            .drain(&self.tcp, true)
            .map_err(|e| anyhow::Error::new(Broken(format!("reading from the broker: {e}"))))
    }

    /// Wait until the kernel says the socket is readable (past the low-water mark, closed, or
    /// failed) and read it.
    pub(super) async fn readable(&mut self) -> anyhow::Result<()> {
        let broken = |e: io::Error| anyhow::Error::new(Broken(format!("reading from the broker: {e}")));
        loop {
            self.tcp.readable().await.map_err(broken)?;
            let Conn { tcp, rx, .. } = self;
            let before = rx.inbox.len();
            // Read inside try_io, to the end: tokio forgets the readiness only if nothing
            // arrived since it reported it.
            match tcp.try_io(Interest::READABLE, || {
                rx.drain(tcp, false)?;
                Err::<(), _>(io::ErrorKind::WouldBlock.into())
            }) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(broken(e)),
                Ok(()) => {}
            }
            if rx.closed || rx.inbox.len() > before || rx.tls.as_ref().is_some_and(|tls| tls.wants_write()) {
                return Ok(());
            }
        }
    }

    /// The next whole packet read. An incoming QoS 1 PUBLISH has its PUBACK queued.
    pub(super) fn next_packet(&mut self) -> anyhow::Result<Option<Packet>> {
        if self.rx.inbox.is_empty() {
            return match self.rx.closed {
                true => Err(Broken("the broker closed the connection".into()).into()),
                false => Ok(None),
            };
        }
        match Packet::read(&mut self.rx.inbox, self.rx.max_incoming) {
            Ok(Packet::Publish(p)) => {
                if p.qos == QoS::AtLeastOnce {
                    PubAck::new(p.pkid).write(&mut self.out).context("encoding PUBACK")?;
                }
                Ok(Some(Packet::Publish(p)))
            }
            Ok(packet) => Ok(Some(packet)),
            Err(mqttbytes::Error::InsufficientBytes(_)) if !self.rx.closed => Ok(None),
            Err(mqttbytes::Error::InsufficientBytes(_)) => {
                Err(Broken("the broker closed the connection in the middle of a packet".into()).into())
            }
            Err(e) => Err(anyhow!("malformed packet from the broker: {e}")),
        }
    }

    /// Read acknowledgements late (`true`: a PUBACK alone wakes nobody) or as they come.
    /// Where the kernel refuses, they are read as they come: correct, only dearer.
    pub(super) fn read_late(&mut self, late: bool) {
        if self.lazy == late || (late && self.threshold <= 1) {
            return;
        }
        let value: libc::c_int = if late { self.threshold } else { 1 };
        // SAFETY: the descriptor is this connection's open socket (owned by `self.tcp`), and
        // `value` is a c_int that lives across the call, its size given.
        let rc = unsafe {
            libc::setsockopt(
                self.tcp.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVLOWAT,
                (&value as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc == 0 {
            self.lazy = late;
        } else {
            tracing::debug!(error = %io::Error::last_os_error(), "SO_RCVLOWAT refused; acknowledgements are read as they come");
        }
    }

    /// Whether acknowledgements are read late.
    pub(super) fn reads_late(&self) -> bool {
        self.lazy
    }

    fn pkid(&mut self) -> u16 {
        self.next_pkid = self.next_pkid.checked_add(1).unwrap_or(1);
        self.next_pkid
    }
}

impl Rx {
    /// Read until the socket has nothing more (or, `short_stop`, until a read that did
    /// not fill the buffer); TLS records are opened as they come.
    fn drain(&mut self, tcp: &TcpStream, short_stop: bool) -> io::Result<()> {
        let mut buf = [0u8; 8192];
        while !self.closed {
            // SAFETY: `buf` is valid for writes of `buf.len()` bytes; the descriptor is the
            // open socket `tcp` owns; MSG_DONTWAIT never blocks.
            let n = unsafe {
                libc::recv(tcp.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT)
            };
            match n {
                0 => self.closed = true,
                n if n > 0 => {
                    let n = n as usize;
                    self.take(&buf[..n])?;
                    if short_stop && n < buf.len() {
                        break;
                    }
                }
                _ => {
                    let e = io::Error::last_os_error();
                    match e.kind() {
                        io::ErrorKind::WouldBlock => break,
                        io::ErrorKind::Interrupted => {}
                        _ => return Err(e),
                    }
                }
            }
        }
        Ok(())
    }

    fn take(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        let Some(tls) = self.tls.as_mut() else {
            self.inbox.extend_from_slice(bytes);
            return Ok(());
        };
        while !bytes.is_empty() {
            tls.read_tls(&mut bytes)?;
            let state =
                tls.process_new_packets().map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            let plain = state.plaintext_bytes_to_read();
            if plain > 0 {
                let start = self.inbox.len();
                self.inbox.resize(start + plain, 0);
                tls.reader().read_exact(&mut self.inbox[start..])?;
            }
            if state.peer_has_closed() {
                self.closed = true;
            }
        }
        Ok(())
    }
}

/// rustls's output straight to the socket, without waiting.
struct Sending<'a>(&'a TcpStream);

impl Write for Sending<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.try_write(buf)
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        self.0.try_write_vectored(bufs)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The receive low-water mark that lets PUBACKs wait and wakes for anything else: the size
/// of the smallest PUBLISH the broker can send on `filters` (fixed header, topic length and
/// the shortest topic they match), as a TLS record when `tls`. Above a PUBACK's 4 bytes
/// (25 or more as a TLS record) whatever the filters.
fn wake_threshold(filters: &[String], tls: bool) -> libc::c_int {
    let shortest = filters.iter().map(|f| shortest_topic(f)).min();
    // Without subscriptions only acknowledgements and PINGRESPs come; the mark stays modest.
    let publish = 4 + shortest.unwrap_or(60);
    let record = if tls { publish + TLS_RECORD_OVERHEAD } else { publish };
    libc::c_int::try_from(record.min(512)).unwrap_or(512)
}

/// The length of the shortest topic `filter` matches (`+` matches an empty level, a trailing
/// `/#` also the parent level; a topic has at least one character).
fn shortest_topic(filter: &str) -> usize {
    let base = if filter == "#" { "" } else { filter.strip_suffix("/#").unwrap_or(filter) };
    let length = base.split('/').map(|level| if level == "+" { 0 } else { level.len() }).sum::<usize>()
        + base.matches('/').count();
    length.max(1)
}

#[cfg(test)]
impl Conn {
    /// A plaintext connection to a loopback listener nobody reads (encoding tests).
    pub(super) async fn loopback() -> Conn {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let tcp = TcpStream::connect(listener.local_addr().expect("addr")).await.expect("connect");
        Conn::new(tcp, None, 1024)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wake_threshold_is_above_a_puback_and_at_most_the_smallest_publish() {
        let chirpstack = ["eu868/gateway/0016c001ff10a235/command/down".to_string()];
        // A PUBLISH on it, QoS 0, empty payload: 2 + 2 + 43 bytes.
        assert_eq!(wake_threshold(&chirpstack, false), 47);
        assert_eq!(wake_threshold(&chirpstack, true), 47 + 21);
        assert_eq!(shortest_topic("a/+/b"), 4, "a//b");
        assert_eq!(shortest_topic("a/#"), 1, "a/# matches a");
        assert_eq!(shortest_topic("#"), 1);
        // Whatever the filters, a PUBACK (4 bytes; 25 or more in a TLS record) stays below the mark.
        assert!(wake_threshold(&["#".into()], false) > 4);
        assert!(wake_threshold(&["+".into()], true) > 4 + 21);
        assert_eq!(wake_threshold(&[], false), 64);
    }

    #[tokio::test]
    async fn a_publish_is_encoded_as_the_codec_reads_it() {
        let mut conn = Conn::loopback().await;
        for (payload_len, retain) in [(0, false), (200, true), (20_000, false)] {
            let payload = vec![7u8; payload_len];
            let pkid =
                conn.publish("eu868/gateway/x/event/up", &payload, QoS::AtLeastOnce, retain).expect("fits");
            let Ok(Packet::Publish(p)) = Packet::read(&mut conn.out, usize::MAX) else {
                panic!("not a PUBLISH")
            };
            assert_eq!(
                (p.topic.as_str(), p.pkid, p.qos, p.retain),
                ("eu868/gateway/x/event/up", pkid, QoS::AtLeastOnce, retain)
            );
            assert_eq!(p.payload.as_ref(), payload.as_slice());
            assert!(conn.out.is_empty());
        }
        let too_large = vec![0u8; MAX_OUTGOING];
        assert!(conn.publish("t", &too_large, QoS::AtLeastOnce, false).is_err(), "refused, not sent");
        assert!(conn.out.is_empty());
    }
}
