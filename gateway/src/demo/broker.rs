//! A minimal MQTT 3.1.1 broker for `berrygw demo`, on loopback only: CONNECT,
//! PUBLISH at QoS 0/1 (PUBACK), SUBSCRIBE with wildcards, retained messages,
//! last will, PING. Enough to show the pipeline working with nothing
//! installed, with a backhaul port that can be cut and restored to play an
//! outage. Not a production broker: no auth, no TLS, no persistence,
//! messages to subscribers go at QoS 0.
//!
//! Packets are encoded and decoded with rumqttc's own codec, so no MQTT code
//! is written twice.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::BytesMut;
use rumqttc::mqttbytes::matches;
use rumqttc::{ConnAck, ConnectReturnCode, Packet, PubAck, Publish, QoS, SubAck, SubscribeReasonCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

const MAX_PACKET: usize = 1024 * 1024;

#[derive(Default)]
struct Router {
    next_id: u64,
    clients: HashMap<u64, (Vec<String>, mpsc::Sender<Publish>)>,
    retained: HashMap<String, Publish>,
}

impl Router {
    fn route(&mut self, mut p: Publish) {
        p.dup = false;
        p.qos = QoS::AtMostOnce;
        p.pkid = 0;
        if p.retain {
            if p.payload.is_empty() {
                self.retained.remove(&p.topic);
            } else {
                self.retained.insert(p.topic.clone(), p.clone());
            }
        }
        p.retain = false;
        for (filters, tx) in self.clients.values() {
            if filters.iter().any(|f| matches(&p.topic, f)) {
                // A subscriber that cannot keep up loses messages, as at QoS 0 anywhere.
                let _ = tx.try_send(p.clone());
            }
        }
    }
}

/// The embedded broker: one router, two loopback ports. The gateway connects
/// to the backhaul port, which `cut_backhaul` closes (with every connection on
/// it) and `restore_backhaul` opens again; consumers use the platform port,
/// which stays up, as the central platform does while a gateway's fibre is down.
pub struct DemoBroker {
    router: Arc<Mutex<Router>>,
    platform: Port,
    backhaul: Port,
}

struct Port {
    addr: SocketAddr,
    running: Option<(watch::Sender<bool>, JoinHandle<()>)>,
}

impl DemoBroker {
    /// Bind two free loopback ports and start serving.
    pub async fn start() -> std::io::Result<DemoBroker> {
        let router: Arc<Mutex<Router>> = Arc::default();
        let mut ports = Vec::new();
        for _ in 0..2 {
            let listener = TcpListener::bind("127.0.0.1:0").await?;
            let addr = listener.local_addr()?;
            ports.push(Port { addr, running: Some(serve(listener, router.clone())) });
        }
        let backhaul = ports.pop().ok_or_else(|| std::io::Error::other("no port"))?;
        let platform = ports.pop().ok_or_else(|| std::io::Error::other("no port"))?;
        Ok(DemoBroker { router, platform, backhaul })
    }

    /// Where the gateway connects.
    pub fn backhaul_addr(&self) -> SocketAddr {
        self.backhaul.addr
    }

    /// Where consumers (the "central platform") connect.
    pub fn platform_addr(&self) -> SocketAddr {
        self.platform.addr
    }

    /// Whether the gateway can currently connect.
    pub fn is_backhaul_up(&self) -> bool {
        self.backhaul.running.is_some()
    }

    /// Close the backhaul listener and every connection on it.
    pub async fn cut_backhaul(&mut self) {
        if let Some((stop, task)) = self.backhaul.running.take() {
            let _ = stop.send(true);
            let _ = task.await;
        }
    }

    /// Accept gateway connections again on the same port.
    pub async fn restore_backhaul(&mut self) -> std::io::Result<()> {
        if self.backhaul.running.is_none() {
            let listener = TcpListener::bind(self.backhaul.addr).await?;
            self.backhaul.running = Some(serve(listener, self.router.clone()));
        }
        Ok(())
    }
}

fn serve(listener: TcpListener, router: Arc<Mutex<Router>>) -> (watch::Sender<bool>, JoinHandle<()>) {
    let (stop_tx, stop_rx) = watch::channel(false);
    let task = tokio::spawn(async move {
        let mut conns = Vec::new();
        let mut stop = stop_rx.clone();
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    if let Ok((stream, _)) = accepted {
                        conns.push(tokio::spawn(connection(stream, router.clone(), stop_rx.clone())));
                    }
                }
                _ = stop.changed() => break,
            }
        }
        // Connections see the same stop signal and unregister themselves.
        for mut c in conns {
            if tokio::time::timeout(std::time::Duration::from_secs(1), &mut c).await.is_err() {
                c.abort();
            }
        }
    });
    (stop_tx, task)
}

async fn connection(mut stream: TcpStream, router: Arc<Mutex<Router>>, mut stop: watch::Receiver<bool>) {
    let (tx, mut outbound) = mpsc::channel::<Publish>(4096);
    let id = match router.lock() {
        Ok(mut r) => {
            r.next_id += 1;
            r.next_id
        }
        Err(_) => return,
    };
    let mut will = None;
    let mut inbuf = BytesMut::with_capacity(4096);
    let mut outbuf = BytesMut::with_capacity(4096);
    let clean_exit = loop {
        // Answer every complete packet in the buffer before reading more.
        let mut replies = Vec::new();
        loop {
            match Packet::read(&mut inbuf, MAX_PACKET) {
                Ok(packet) => match packet {
                    Packet::Connect(c) => {
                        will = c.last_will.map(|w| Publish {
                            retain: w.retain,
                            ..Publish::new(w.topic, w.qos, w.message.to_vec())
                        });
                        replies.push(Packet::ConnAck(ConnAck::new(ConnectReturnCode::Success, false)));
                    }
                    Packet::Publish(p) => {
                        if p.qos != QoS::AtMostOnce {
                            replies.push(Packet::PubAck(PubAck::new(p.pkid)));
                        }
                        if let Ok(mut r) = router.lock() {
                            r.route(p);
                        }
                    }
                    Packet::Subscribe(s) => {
                        let codes =
                            s.filters.iter().map(|_| SubscribeReasonCode::Success(QoS::AtMostOnce)).collect();
                        if let Ok(mut r) = router.lock() {
                            let filters: Vec<String> = s.filters.iter().map(|f| f.path.clone()).collect();
                            for p in r.retained.values() {
                                if filters.iter().any(|f| matches(&p.topic, f)) {
                                    let mut p = p.clone();
                                    p.retain = true;
                                    let _ = tx.try_send(p);
                                }
                            }
                            let entry = r.clients.entry(id).or_insert_with(|| (Vec::new(), tx.clone()));
                            entry.0.extend(filters);
                        }
                        replies.push(Packet::SubAck(SubAck::new(s.pkid, codes)));
                    }
                    Packet::PingReq => replies.push(Packet::PingResp),
                    Packet::Disconnect => {
                        will = None;
                    }
                    _ => {}
                },
                Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => break,
                Err(_) => {
                    replies.clear();
                    break;
                }
            }
        }
        for r in replies {
            if r.write(&mut outbuf, MAX_PACKET).is_err() {
                break;
            }
        }
        if !outbuf.is_empty() {
            if stream.write_all(&outbuf).await.is_err() {
                break false;
            }
            outbuf.clear();
        }
        tokio::select! {
            n = stream.read_buf(&mut inbuf) => match n {
                Ok(0) | Err(_) => break will.is_none(),
                Ok(_) => {}
            },
            Some(p) = outbound.recv() => {
                let _ = Packet::Publish(p).write(&mut outbuf, MAX_PACKET);
                while let Ok(p) = outbound.try_recv() {
                    let _ = Packet::Publish(p).write(&mut outbuf, MAX_PACKET);
                }
            }
            _ = stop.changed() => break true,
        }
    };
    if let Ok(mut r) = router.lock() {
        r.clients.remove(&id);
        if !clean_exit {
            if let Some(w) = will {
                r.route(w);
            }
        }
    }
}
