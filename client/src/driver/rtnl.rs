//! A blocking rtnetlink request, for the few route and link changes the
//! client makes (`capture.rs`): one message out, then the kernel's answers
//! until its acknowledgement (or, for a dump, its end). The messages are
//! netlink-packet-route's, the socket netlink-sys's; this file only pairs
//! them.

use std::io;
use std::time::Duration;

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_REQUEST,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

/// The kernel answers at once; a request that hasn't had its answer in
/// this long won't get one.
const ANSWER_WAIT: Duration = Duration::from_secs(2);
/// Datagrams read for one request at most (a dump of a big routing table
/// takes a few dozen).
const MAX_DATAGRAMS: usize = 10_000;

pub struct Rtnl {
    socket: Socket,
    sequence: u32,
}

impl Rtnl {
    pub fn new() -> io::Result<Self> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        let fd = std::os::fd::AsRawFd::as_raw_fd(&socket);
        let timeout = libc::timeval {
            tv_sec: ANSWER_WAIT.as_secs() as libc::time_t,
            tv_usec: 0,
        };
        // SAFETY: fd is our open socket; the option value is a timeval of
        // the size given.
        let set = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&raw const timeout).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if set != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self {
            socket,
            sequence: 0,
        })
    }

    /// Sends `message` with `flags` (plus request and ack) and returns what
    /// the kernel answered before its ack: nothing for a change, the
    /// entries for a dump. A refusal becomes its errno.
    pub fn request(
        &mut self,
        message: RouteNetlinkMessage,
        flags: u16,
    ) -> io::Result<Vec<RouteNetlinkMessage>> {
        self.sequence = self.sequence.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
        header.sequence_number = self.sequence;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(message));
        packet.finalize();
        let mut buf = vec![0u8; packet.buffer_len()];
        packet.serialize(&mut buf);
        self.socket.send(&buf, 0)?;

        let mut answers = Vec::new();
        let mut datagram = Vec::with_capacity(64 * 1024);
        for _ in 0..MAX_DATAGRAMS {
            datagram.clear();
            let len = self.socket.recv(&mut datagram, 0)?;
            let mut offset = 0;
            while offset < len.min(datagram.len()) {
                let rest = &datagram[offset..];
                let message = NetlinkMessage::<RouteNetlinkMessage>::deserialize(rest)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
                let size = message.header.length as usize;
                if size == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "netlink message of length 0",
                    ));
                }
                // NLMSG_ALIGN: messages in one datagram start on 4 bytes.
                offset += (size + 3) & !3;
                if message.header.sequence_number != self.sequence {
                    continue;
                }
                match message.payload {
                    NetlinkPayload::Error(e) => {
                        return match e.code {
                            None => Ok(answers),
                            Some(code) => Err(io::Error::from_raw_os_error(-code.get())),
                        };
                    }
                    NetlinkPayload::Done(_) => return Ok(answers),
                    NetlinkPayload::InnerMessage(inner) => answers.push(inner),
                    _ => {}
                }
            }
        }
        Err(io::Error::other("netlink answer never ended"))
    }
}
