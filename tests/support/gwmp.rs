//! Semtech GWMP (UDP) peers for the end-to-end tests, written from the
//! protocol description independently of berrygw's own codec: a packet
//! forwarder (as on a gateway with vendor firmware) and a network server.

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use serde_json::{json, Value};

pub const PUSH_DATA: u8 = 0x00;
pub const PUSH_ACK: u8 = 0x01;
pub const PULL_DATA: u8 = 0x02;
pub const PULL_RESP: u8 = 0x03;
pub const PULL_ACK: u8 = 0x04;
pub const TX_ACK: u8 = 0x05;

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding.
pub fn b64_encode(data: &[u8]) -> String {
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(B64[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Decode standard base64 (padding optional); panics on bad input (test data).
pub fn b64_decode(s: &str) -> Vec<u8> {
    let mut bits = 0u32;
    let mut nbits = 0;
    let mut out = Vec::new();
    for c in s.bytes().filter(|c| *c != b'=') {
        let v = B64.iter().position(|x| *x == c).expect("base64 character") as u32;
        bits = (bits << 6) | v;
        nbits += 6;
        if nbits >= 8 {
            nbits -= 8;
            out.push((bits >> nbits) as u8);
        }
    }
    out
}

/// A GWMP datagram: version 2, token, identifier, then (for some) EUI and JSON.
pub fn datagram(ident: u8, token: u16, eui: Option<[u8; 8]>, body: Option<&Value>) -> Vec<u8> {
    let mut d = vec![2, (token >> 8) as u8, token as u8, ident];
    if let Some(e) = eui {
        d.extend_from_slice(&e);
    }
    if let Some(b) = body {
        d.extend_from_slice(b.to_string().as_bytes());
    }
    d
}

/// A received datagram, split.
#[derive(Debug)]
pub struct Gwmp {
    pub token: u16,
    pub ident: u8,
    pub eui: Option<[u8; 8]>,
    pub json: Option<Value>,
    pub from: SocketAddr,
}

fn parse(buf: &[u8], from: SocketAddr) -> Gwmp {
    assert!(buf.len() >= 4 && buf[0] == 2, "GWMP v2 datagram expected, got {buf:?}");
    let ident = buf[3];
    let token = u16::from_be_bytes([buf[1], buf[2]]);
    let (eui, rest) = match ident {
        PUSH_DATA | PULL_DATA | TX_ACK if buf.len() >= 12 => {
            let mut e = [0u8; 8];
            e.copy_from_slice(&buf[4..12]);
            (Some(e), &buf[12..])
        }
        _ => (None, &buf[4..]),
    };
    let json = if rest.is_empty() { None } else { Some(serde_json::from_slice(rest).expect("GWMP JSON")) };
    Gwmp { token, ident, eui, json, from }
}

/// One UDP endpoint on loopback speaking GWMP.
pub struct Peer {
    pub socket: UdpSocket,
}

impl Peer {
    pub fn bind() -> Peer {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind udp");
        socket.set_read_timeout(Some(Duration::from_millis(200))).expect("timeout");
        Peer { socket }
    }

    pub fn addr(&self) -> SocketAddr {
        self.socket.local_addr().expect("addr")
    }

    pub fn send(&self, to: SocketAddr, bytes: &[u8]) {
        self.socket.send_to(bytes, to).expect("send udp");
    }

    /// Next datagram within `timeout`, if any.
    pub fn recv(&self, timeout: Duration) -> Option<Gwmp> {
        let deadline = std::time::Instant::now() + timeout;
        let mut buf = [0u8; 65536];
        while std::time::Instant::now() < deadline {
            if let Ok((n, from)) = self.socket.recv_from(&mut buf) {
                return Some(parse(&buf[..n], from));
            }
        }
        None
    }

    /// Next datagram with identifier `ident` within `timeout` (others are skipped).
    pub fn recv_ident(&self, ident: u8, timeout: Duration) -> Option<Gwmp> {
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if let Some(g) = self.recv(deadline.saturating_duration_since(std::time::Instant::now())) {
                if g.ident == ident {
                    return Some(g);
                }
            }
        }
        None
    }
}

/// An `rxpk` object as a packet forwarder writes it.
pub fn rxpk(phy: &[u8], freq_mhz: f64, datr: &str, rssi: i32, lsnr: f64, tmst: u32) -> Value {
    json!({
        "tmst": tmst,
        "chan": 2,
        "rfch": 0,
        "freq": freq_mhz,
        "stat": 1,
        "modu": "LORA",
        "datr": datr,
        "codr": "4/5",
        "rssi": rssi,
        "lsnr": lsnr,
        "size": phy.len(),
        "data": b64_encode(phy),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips() {
        for n in 0..40u8 {
            let data: Vec<u8> = (0..n).map(|i| i.wrapping_mul(37)).collect();
            assert_eq!(b64_decode(&b64_encode(&data)), data);
        }
        assert_eq!(b64_encode(b"hello"), "aGVsbG8=");
    }
}
