//! Datagrams from one socket, sent with one `sendmmsg`.
//!
//! The bulk preset has one pair, so one thread calling `send_to` per
//! datagram tops out near 250 kpps here and the generator, not the relay,
//! sets the ceiling. Batching a pair's consecutive prebuilt packets into one
//! system call lifts that ceiling, as real WireGuard clients do with their own
//! batched sends. Each packet is stamped when it is built, at most
//! [`SEND_BATCH`] packets (a few microseconds) before the call that sends it.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsFd as _;

use socket2::SockAddr;

use super::setup::BUF_LEN;

/// Datagrams per `sendmmsg`.
pub const SEND_BATCH: usize = 32;

/// Up to [`SEND_BATCH`] datagrams for one pair, waiting to be sent.
pub struct SendBatch {
    bufs: Vec<u8>,
    lens: [usize; SEND_BATCH],
    dests: Vec<SockAddr>,
    pair: usize,
}

impl Default for SendBatch {
    fn default() -> Self {
        Self {
            bufs: vec![0; SEND_BATCH * BUF_LEN],
            lens: [0; SEND_BATCH],
            dests: Vec::with_capacity(SEND_BATCH),
            pair: 0,
        }
    }
}

impl SendBatch {
    pub fn len(&self) -> usize {
        self.dests.len()
    }

    pub fn is_empty(&self) -> bool {
        self.dests.is_empty()
    }

    pub fn is_full(&self) -> bool {
        self.dests.len() == SEND_BATCH
    }

    /// The pair whose datagrams are queued (meaningless when empty).
    pub fn pair(&self) -> usize {
        self.pair
    }

    /// Queues a datagram of `len` bytes for `pair`, to be written by `fill`
    /// into a zeroed-once buffer (bytes `fill` doesn't touch keep whatever
    /// an earlier datagram left there). The caller flushes first if the batch
    /// is full or holds another pair's datagrams.
    pub fn push(
        &mut self,
        pair: usize,
        dest: SocketAddr,
        len: usize,
        fill: impl FnOnce(&mut [u8]),
    ) {
        debug_assert!(!self.is_full() && (self.is_empty() || self.pair == pair));
        let k = self.dests.len();
        let len = len.min(BUF_LEN);
        fill(&mut self.bufs[k * BUF_LEN..k * BUF_LEN + len]);
        self.lens[k] = len;
        self.dests.push(SockAddr::from(dest));
        self.pair = pair;
    }

    /// Sends everything queued from `socket`; returns how many datagrams the
    /// kernel took. The rest (after an error) are dropped: the caller counts
    /// them as send errors. The batch is empty afterwards.
    pub fn flush(&mut self, socket: &UdpSocket) -> io::Result<usize> {
        let sent = lanrage_tests::mmsg::send_batch::<SEND_BATCH>(
            socket.as_fd(),
            &self.bufs,
            BUF_LEN,
            &self.lens,
            &self.dests,
        );
        self.dests.clear();
        sent
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_batch_arrives_as_its_datagrams_in_order() {
        let rx = UdpSocket::bind("127.0.0.1:0").expect("bind rx");
        rx.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let tx = UdpSocket::bind("127.0.0.1:0").expect("bind tx");
        let dest = rx.local_addr().expect("addr");
        let mut batch = SendBatch::default();
        for i in 0..SEND_BATCH {
            batch.push(7, dest, 10 + i, |buf| buf.fill(i as u8));
        }
        assert!(batch.is_full());
        assert_eq!(batch.pair(), 7);
        assert_eq!(batch.flush(&tx).expect("sendmmsg"), SEND_BATCH);
        assert!(batch.is_empty());
        let mut buf = [0u8; 64];
        for i in 0..SEND_BATCH {
            let n = rx.recv(&mut buf).expect("recv");
            assert_eq!(n, 10 + i);
            assert!(buf[..n].iter().all(|&b| b == i as u8), "datagram {i}");
        }
    }
}
