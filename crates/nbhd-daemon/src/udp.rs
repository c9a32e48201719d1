//! The UDP sockets of the Node's channels: mDNS (224.0.0.251:5353) and the courier's
//! neighborhood channel, each shared with any other daemon in the namespace (`SO_REUSEADDR` +
//! `SO_REUSEPORT`) and joined to its group on each interface we serve; and the unicast probe
//! socket on a port of its own.
//!
//! `IP_PKTINFO` tells which interface a datagram came in on; `IP_MULTICAST_IF` is set before each
//! multicast send, so every interface gets its own packets even in namespaces without a default
//! route (DESIGN.md §4.1). Multicast loopback stays on: the engines recognise their own echoes.

use std::io::{self, IoSliceMut};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::AsRawFd;

use nbhd_proto::presence::{MDNS_GROUP_V4, MDNS_PORT};
use nix::sys::socket::{self, sockopt, ControlMessageOwned, MsgFlags, SockaddrIn};
use socket2::{Domain, InterfaceIndexOrAddress, Protocol, Socket, Type};
use tokio::io::unix::AsyncFd;

/// Receive buffer: larger than the 9000 bytes RFC 6762 §17 allows, so an oversized datagram is
/// seen as such (and counted) rather than silently cut.
pub const RECV_BUF: usize = 9216;

/// A UDP socket of one channel: bound to a multicast group's port and shared (`SO_REUSEPORT`)
/// with other daemons in the namespace, or (the probe socket) to a port of its own.
pub struct UdpChannel {
    fd: AsyncFd<Socket>,
    group: Ipv4Addr,
    port: u16,
}

/// One datagram as received.
pub struct Received {
    pub len: usize,
    /// The kernel cut it: it was longer than our buffer.
    pub truncated: bool,
    pub src: SocketAddr,
    pub ifindex: u32,
}

impl UdpChannel {
    /// The mDNS socket: 224.0.0.251:5353.
    pub fn mdns() -> io::Result<UdpChannel> {
        // RFC 6762 §11: receivers check nothing, but 255 is customary.
        UdpChannel::open(MDNS_GROUP_V4, MDNS_PORT, true, 255)
    }

    /// A group of ours (the courier, an activity): TTL 1, the link and no further (DESIGN.md
    /// §4.4).
    pub fn group(group: Ipv4Addr, port: u16) -> io::Result<UdpChannel> {
        UdpChannel::open(group, port, true, 1)
    }

    /// A unicast socket on a free port (the probe socket; its port goes in TXT `probe`).
    pub fn unicast() -> io::Result<UdpChannel> {
        UdpChannel::open(Ipv4Addr::UNSPECIFIED, 0, false, 1)
    }

    pub fn local_port(&self) -> io::Result<u16> {
        self.fd
            .get_ref()
            .local_addr()?
            .as_socket()
            .map(|a| a.port())
            .ok_or_else(|| io::Error::other("not an IP socket"))
    }

    fn open(group: Ipv4Addr, port: u16, shared: bool, ttl: u32) -> io::Result<UdpChannel> {
        let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
        if shared {
            s.set_reuse_address(true)?;
            s.set_reuse_port(true)?;
        }
        s.set_nonblocking(true)?;
        s.bind(&SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port)).into())?;
        s.set_multicast_loop_v4(true)?;
        s.set_multicast_ttl_v4(ttl)?;
        // Bound to 0.0.0.0:port, a socket would otherwise get every group any socket of the
        // host joined on that port: two activities whose ports meet would read each other's
        // frames (and count them as forged).
        s.set_multicast_all_v4(false)?;
        socket::setsockopt(&s, sockopt::Ipv4PacketInfo, &true).map_err(io::Error::from)?;
        // SAFETY: `s` is an open socket owned by the AsyncFd from here on; its descriptor never
        // changes while it lives.
        let fd = unsafe { AsyncFd::register(s) }.map_err(|e| io::Error::other(e.to_string()))?;
        Ok(UdpChannel { fd, group, port })
    }

    pub fn join(&self, ifindex: u32) -> io::Result<()> {
        match self
            .fd
            .get_ref()
            .join_multicast_v4_n(&self.group, &InterfaceIndexOrAddress::Index(ifindex))
        {
            Err(e) if e.raw_os_error() == Some(libc::EADDRINUSE) => Ok(()), // already joined
            r => r,
        }
    }

    /// Asks the kernel to hold up to `bytes` of unread datagrams (it may cap the request).
    pub fn set_recv_buffer(&self, bytes: usize) {
        let _ = self.fd.get_ref().set_recv_buffer_size(bytes);
    }

    pub fn leave(&self, ifindex: u32) {
        let _ = self
            .fd
            .get_ref()
            .leave_multicast_v4_n(&self.group, &InterfaceIndexOrAddress::Index(ifindex));
    }

    pub async fn recv(&self, buf: &mut [u8; RECV_BUF]) -> io::Result<Received> {
        loop {
            let mut guard = self.fd.readable().await?;
            match guard.try_io(|inner| recv_once(inner.get_ref().as_raw_fd(), buf)) {
                Ok(r) => return r,
                Err(_would_block) => continue,
            }
        }
    }

    /// The next datagram if one is there now (None when the socket is empty): for reading a
    /// batch after [`UdpChannel::recv`] without waiting.
    pub fn try_recv(&self, buf: &mut [u8; RECV_BUF]) -> Option<io::Result<Received>> {
        match recv_once(self.fd.get_ref().as_raw_fd(), buf) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
            r => Some(r),
        }
    }

    /// Sends to the group out of the interface that has address `via`.
    pub fn send_multicast(&self, via: Ipv4Addr, payload: &[u8]) -> io::Result<()> {
        let s = self.fd.get_ref();
        s.set_multicast_if_v4(&via)?;
        let dst = SocketAddr::V4(SocketAddrV4::new(self.group, self.port));
        s.send_to(payload, &dst.into()).map(|_| ())
    }

    pub fn send_unicast(&self, dst: SocketAddr, payload: &[u8]) -> io::Result<()> {
        self.fd.get_ref().send_to(payload, &dst.into()).map(|_| ())
    }
}

pub fn new_buffer() -> Box<[u8; RECV_BUF]> {
    Box::new([0u8; RECV_BUF])
}

fn recv_once(fd: i32, buf: &mut [u8; RECV_BUF]) -> io::Result<Received> {
    let mut cmsg = nix::cmsg_space!(libc::in_pktinfo);
    let mut iov = [IoSliceMut::new(&mut buf[..])];
    let msg = socket::recvmsg::<SockaddrIn>(fd, &mut iov, Some(&mut cmsg), MsgFlags::MSG_TRUNC)
        .map_err(io::Error::from)?;
    let mut ifindex = 0;
    for c in msg.cmsgs().map_err(io::Error::from)? {
        if let ControlMessageOwned::Ipv4PacketInfo(info) = c {
            ifindex = info.ipi_ifindex as u32;
        }
    }
    let src = msg
        .address
        .map(|a| SocketAddr::V4(SocketAddrV4::new(a.ip(), a.port())))
        .unwrap_or_else(|| SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)));
    let truncated = msg.flags.contains(MsgFlags::MSG_TRUNC) || msg.bytes > RECV_BUF;
    Ok(Received {
        len: msg.bytes.min(RECV_BUF),
        truncated,
        src,
        ifindex,
    })
}
