//! The ingest's UDP socket, registered with the runtime for reading only.
//!
//! `tokio::net::UdpSocket` asks epoll for writability too, and the kernel reports a UDP
//! socket writable again each time the forwarder reads one of our PUSH_ACKs (the datagram's
//! buffer is freed then): a wake-up of the gateway for nothing whenever the forwarder reads
//! after berrygw went back to sleep. Sends here never wait for room: a PUSH_ACK, PULL_ACK or
//! PULL_RESP goes out at once on a non-blocking socket, and in the rare case the socket's
//! buffer is full it is tried again a few times a millisecond apart.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// Tries of a send that finds the socket's buffer full, a millisecond apart.
const SEND_TRIES: u32 = 20;

pub(super) struct IngestSocket {
    fd: AsyncFd<std::net::UdpSocket>,
}

impl IngestSocket {
    pub(super) fn bind(addr: SocketAddr) -> io::Result<IngestSocket> {
        let socket = std::net::UdpSocket::bind(addr)?;
        socket.set_nonblocking(true)?;
        // SAFETY: the descriptor is the socket's own, which the AsyncFd owns from here on: it
        // stays open, the same, for the AsyncFd's whole life.
        let fd = unsafe { AsyncFd::register_with_interest(socket, Interest::READABLE) };
        Ok(IngestSocket { fd: fd.map_err(|e| e.into_parts().1)? })
    }

    pub(super) fn local_addr(&self) -> io::Result<SocketAddr> {
        self.fd.get_ref().local_addr()
    }

    /// The next datagram (cancel-safe: nothing is read until one is there).
    pub(super) async fn recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        loop {
            let mut ready = self.fd.readable().await?;
            if let Ok(received) = ready.try_io(|s| s.get_ref().recv_from(buf)) {
                return received;
            }
        }
    }

    pub(super) async fn send_to(&self, buf: &[u8], to: SocketAddr) -> io::Result<usize> {
        let mut tries = 1;
        loop {
            match self.fd.get_ref().send_to(buf, to) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && tries < SEND_TRIES => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                sent => return sent,
            }
        }
    }
}
