//! Phase boundaries as the wire sees them (#14): kernel timestamps on the probe's own
//! sockets, read back as `Instant`s so `timings` keeps one clock.
//!
//! What the kernel gives and how it is used:
//! - receive stamps (`SO_TIMESTAMPING` with `SOF_TIMESTAMPING_RX_SOFTWARE |
//!   SOF_TIMESTAMPING_SOFTWARE`): each `recvmsg` on the probe's TCP socket returns in an
//!   `SCM_TIMESTAMPING` control message when the data it returned arrived (for TCP, the
//!   highest-sequence byte returned), however late the probe's task got to read it;
//! - the handshake round trip: `TCP_INFO`'s `tcpi_rtt` right after connect is the
//!   kernel's one RTT sample, SYN sent → SYN/ACK received (µs);
//! - transmit stamps (`SOF_TIMESTAMPING_TX_SOFTWARE | SOF_TIMESTAMPING_OPT_TSONLY`,
//!   read back from the socket's error queue): when the driver took the datagram or
//!   the segment carrying the last byte of a write. TCP's queue is read only when a
//!   boundary needs it (the first read after the ClientHello, the first read of a
//!   reply), two system calls a probe. Fallback: the instant `write` returned (with
//!   `TCP_NODELAY` and an open window the segment leaves inside that call).
//!
//! Kernel stamps are `CLOCK_REALTIME`; [`ClockPair`] reads both clocks once per socket
//! and converts. A stamp that does not fit (a wall-clock step, or a socket that refused
//! the option) is replaced by the instant the system call returned: the fallback is the
//! old behaviour, never a wrong phase.
//!
//! Owns the stamping socket wrapper [`StampedTcp`] and its [`StreamStamps`] (including
//! holding writes until a request leaves, [`StreamStamps::hold_writes`]), and the
//! stamped datagram calls `dns_query` uses; it knows nothing of HTTP, TLS, DNS or
//! phases beyond "first write", "last read", "reply".

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;

/// `SO_TIMESTAMPING` (asm-generic `SO_TIMESTAMPING_OLD`; the control message type
/// `SCM_TIMESTAMPING` has the same number). The libc crate does not export it for
/// glibc targets. 64-bit `timespec`s on the 64-bit targets we build for.
const SO_TIMESTAMPING: libc::c_int = 37;

/// `CLOCK_REALTIME` and `Instant` read together, to convert kernel stamps.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ClockPair {
    instant: Instant,
    realtime_ns: i128,
}

impl ClockPair {
    /// Reads both clocks, keeping the tightest of three brackets so that a preemption
    /// between the two reads does not become an offset.
    pub(crate) fn now() -> ClockPair {
        let mut best: Option<(Duration, ClockPair)> = None;
        for _ in 0..3 {
            let before = Instant::now();
            let realtime_ns = realtime_ns();
            let after = Instant::now();
            let width = after - before;
            let pair = ClockPair {
                instant: before + width / 2,
                realtime_ns,
            };
            if best.is_none_or(|(w, _)| width < w) {
                best = Some((width, pair));
            }
            if width < Duration::from_micros(5) {
                break;
            }
        }
        best.expect("three tries").1
    }

    /// The `Instant` of kernel stamp `ts` when there is one that fits (see
    /// [`ClockPair::instant_of`]), else `returned`: when the system call returned.
    fn stamp_or(&self, ts: Option<libc::timespec>, returned: Instant) -> Instant {
        ts.and_then(|ts| self.instant_of(ts, returned))
            .unwrap_or(returned)
    }

    /// The `Instant` of kernel stamp `ts`, when it lies between this pairing and
    /// `not_after` (the stamped packet cannot postdate the call that returned it).
    fn instant_of(&self, ts: libc::timespec, not_after: Instant) -> Option<Instant> {
        let ns = ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128 - self.realtime_ns;
        let at = if ns >= 0 {
            self.instant.checked_add(Duration::from_nanos(ns as u64))?
        } else {
            self.instant
                .checked_sub(Duration::from_nanos(ns.unsigned_abs() as u64))?
        };
        // A little slack before the pairing: a segment may be stamped while the socket
        // was being set up; never after the call returned.
        (at <= not_after && at + Duration::from_millis(1) >= self.instant).then_some(at)
    }
}

fn realtime_ns() -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec we own; CLOCK_REALTIME always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut ts) };
    ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128
}

/// Asks the kernel to stamp every packet `fd` receives, and with `transmit` every
/// packet it sends (stamps only, on the error queue). `false`: it refused.
pub(crate) fn enable_stamps(fd: RawFd, transmit: bool) -> bool {
    keep_receive_stamps_on();
    set_stamping(fd, transmit)
}

/// Linux turns receive stamping on for the whole host when the first socket asks for
/// it and off when the last one closes, each time from a kernel worker that rewrites a
/// static branch in the kernel's code. With one probe in flight at a time (200 probes/s
/// spread over a second) that was twice per probe, and the worker preempted the probe
/// inside its `setsockopt`. One socket of our own, stamped and never closed, keeps the
/// count above zero: each probe's socket then only moves a counter.
fn keep_receive_stamps_on() {
    static KEEPER: std::sync::OnceLock<Option<OwnedFd>> = std::sync::OnceLock::new();
    KEEPER.get_or_init(|| {
        // SAFETY: socket takes integer arguments only; a non-negative result is a new
        // descriptor that nothing else owns.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        // SAFETY: as above, `fd` is ours alone.
        let socket = (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) })?;
        set_stamping(socket.as_raw_fd(), false).then_some(socket)
    });
}

fn set_stamping(fd: RawFd, transmit: bool) -> bool {
    let mut flags: libc::c_uint =
        libc::SOF_TIMESTAMPING_RX_SOFTWARE | libc::SOF_TIMESTAMPING_SOFTWARE;
    if transmit {
        flags |= libc::SOF_TIMESTAMPING_TX_SOFTWARE | libc::SOF_TIMESTAMPING_OPT_TSONLY;
    }
    // SAFETY: setsockopt reads `size_of::<c_uint>()` bytes from a value we own.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            SO_TIMESTAMPING,
            (&flags as *const libc::c_uint).cast(),
            std::mem::size_of::<libc::c_uint>() as libc::socklen_t,
        )
    };
    rc == 0
}

/// The SYN → SYN/ACK round trip the kernel measured for a just-connected socket, when
/// it took one (not after a retransmitted SYN, which gives no sample).
fn handshake_rtt(tcp: &TcpStream) -> Option<Duration> {
    // SAFETY: tcp_info is plain old data; all-zero is a valid value.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `info`, which we own.
    let rc = unsafe {
        libc::getsockopt(
            tcp.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    let has_rtt = len as usize
        >= std::mem::offset_of!(libc::tcp_info, tcpi_total_retrans) + std::mem::size_of::<u32>();
    (rc == 0 && has_rtt && info.tcpi_rtt > 0 && info.tcpi_total_retrans == 0)
        .then(|| Duration::from_micros(info.tcpi_rtt.into()))
}

/// When the connection was established as the wire sees it: `attempt_started` (the
/// successful attempt's start, which is about when its SYN left) plus the kernel's
/// handshake RTT; the instant connect returned when the kernel has no sample.
pub(crate) fn connected_at(tcp: &TcpStream, attempt_started: Instant) -> Instant {
    let returned = Instant::now();
    handshake_rtt(tcp)
        .map(|rtt| attempt_started + rtt)
        .filter(|at| *at <= returned)
        .unwrap_or(returned)
}

/// `recvmsg` into `buf`, returning the byte count and the kernel's software receive
/// stamp when one came with the data.
fn recv_stamped(
    fd: RawFd,
    buf: &mut [MaybeUninit<u8>],
    flags: libc::c_int,
) -> io::Result<(usize, Option<libc::timespec>)> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // Room for SCM_TIMESTAMPING (three timespecs) and, on the error queue, IP_RECVERR
    // (an extended error and an address), with their headers; 8-byte aligned.
    let mut control = [0u64; 32];
    // SAFETY: msghdr is plain old data; all-zero is a valid value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control);
    // SAFETY: every pointer in `msg` refers to memory we own for the duration of the
    // call (`buf` for the data, `control` for control messages); the kernel writes at
    // most the lengths given. Non-blocking: the socket is tokio's.
    let n = unsafe { libc::recvmsg(fd, &mut msg, flags) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut stamp = None;
    // SAFETY: CMSG_FIRSTHDR/CMSG_NXTHDR walk the control buffer the kernel filled,
    // bounded by `msg.msg_controllen`; we read a header only when it is non-null and a
    // SCM_TIMESTAMPING payload (three timespecs) only for that type, unaligned-safely.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == SO_TIMESTAMPING {
                let stamps =
                    std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<[libc::timespec; 3]>());
                // [0] is the software stamp; zero when the kernel did not take one.
                if stamps[0].tv_sec != 0 || stamps[0].tv_nsec != 0 {
                    stamp = Some(stamps[0]);
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    Ok((n as usize, stamp))
}

/// Receives one datagram into `buf` (non-blocking; `WouldBlock` when none is queued):
/// its length and when it arrived.
pub(crate) fn recv_datagram(
    fd: RawFd,
    buf: &mut [u8],
    clock: &ClockPair,
) -> io::Result<(usize, Instant)> {
    // SAFETY: `[u8]` and `[MaybeUninit<u8>]` have the same layout, and recvmsg only
    // writes initialised bytes, so `buf` stays initialised.
    let uninit = unsafe { &mut *(buf as *mut [u8] as *mut [MaybeUninit<u8>]) };
    let (n, stamp) = recv_stamped(fd, uninit, 0)?;
    Ok((n, clock.stamp_or(stamp, Instant::now())))
}

/// The earliest and the latest transmit stamps queued on `fd`'s error queue
/// (draining it), when the kernel took any.
pub(crate) fn transmit_stamps(fd: RawFd, clock: &ClockPair) -> Option<(Instant, Instant)> {
    let mut span: Option<(Instant, Instant)> = None;
    let mut scratch = [MaybeUninit::<u8>::uninit(); 64];
    // Each queued stamp is one message: one per datagram, or per write on TCP.
    while let Ok((_, Some(ts))) =
        recv_stamped(fd, &mut scratch, libc::MSG_ERRQUEUE | libc::MSG_DONTWAIT)
    {
        if let Some(at) = clock.instant_of(ts, Instant::now()) {
            span = Some(span.map_or((at, at), |(lo, hi)| (lo.min(at), hi.max(at))));
        }
    }
    span
}

/// What [`StampedTcp`] saw, shared with the prober that owns the hop's timings.
#[derive(Debug, Clone, Default)]
pub(crate) struct StreamStamps(Arc<Mutex<Log>>);

#[derive(Debug, Default)]
struct Log {
    /// The first write: when it was called, and when it returned (or, once the first
    /// read has checked the error queue, its transmit stamp).
    first_write: Option<(Instant, Instant)>,
    first_checked: bool,
    /// The latest write, likewise (its stamp is looked up only for a reply).
    last_write: Option<(Instant, Instant)>,
    last_read: Option<Instant>,
    /// Set by [`StreamStamps::await_reply`]: waiting for the first read after it.
    awaiting_reply: bool,
    /// The last write before that first read (the request's last byte).
    request_sent: Option<Instant>,
    holding: Holding,
}

/// When [`StampedTcp`] hands writes to the kernel (see [`StreamStamps::hold_writes`]).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Holding {
    /// Each write as it is made.
    #[default]
    Off,
    /// Writes wait; a read sends them (the peer cannot answer what it has not
    /// received), a flush does not.
    UntilRead,
    /// Writes wait for the next flush, which sends them all; a read does not.
    UntilFlush,
}

/// Bytes a [`StampedTcp`] holds at most; a larger write (a request body) goes out at
/// once, after what was held.
const HELD_MAX: usize = 16 * 1024;

impl StreamStamps {
    fn log(&self) -> std::sync::MutexGuard<'_, Log> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Forgets earlier writes: [`StreamStamps::first_write`] becomes the next one (a
    /// ClientHello after a STARTTLS exchange).
    pub(crate) fn restart(&self) {
        let mut log = self.log();
        log.first_write = None;
        log.first_checked = false;
    }

    /// When the first bytes (since [`StreamStamps::restart`]) left: a ClientHello.
    pub(crate) fn first_write(&self) -> Option<Instant> {
        self.log().first_write.map(|(_, at)| at)
    }

    /// When the data of the latest read arrived (the kernel's stamp, else the instant
    /// the read returned).
    pub(crate) fn last_read(&self) -> Option<Instant> {
        self.log().last_read
    }

    /// When the data of the latest read arrived, for a phase that ends with it: the
    /// instant now if nothing was read through these stamps (a stream without them).
    pub(crate) fn last_arrival(&self) -> Instant {
        self.last_read().unwrap_or_else(Instant::now)
    }

    /// Starts a request/reply exchange: [`StreamStamps::request_sent`] becomes the last
    /// write before the next read that returns data. (A later write, such as an HTTP/2
    /// SETTINGS acknowledgement, is not the request.) Writes held since
    /// [`StreamStamps::hold_writes`] leave with the request, at its flush.
    pub(crate) fn await_reply(&self) {
        let mut log = self.log();
        log.awaiting_reply = true;
        log.request_sent = None;
        if log.holding == Holding::UntilRead {
            log.holding = Holding::UntilFlush;
        }
    }

    pub(crate) fn request_sent(&self) -> Option<Instant> {
        self.log().request_sent
    }

    /// Holds the stream's writes from now on, so that an HTTPS client's last handshake
    /// message, the HTTP/2 preface and SETTINGS, and the request leave in one segment,
    /// as browsers send them, instead of three writes, each of which cost the prober a
    /// system call and the loopback's delivery, and woke the target. Until
    /// [`StreamStamps::await_reply`], a read sends what is held (the ClientHello, before
    /// waiting for the server's answer) and a flush does not (the TLS Finished and the
    /// preface wait); after it, the next flush (the request's) sends everything and
    /// writes go out as they are made again. Bytes still held when the stream is
    /// dropped are never sent. For an exchange that always writes and flushes a
    /// request after its handshakes.
    pub(crate) fn hold_writes(&self) {
        self.log().holding = Holding::UntilRead;
    }
}

/// A connected TCP stream that records when bytes left and when they arrived.
#[derive(Debug)]
pub(crate) struct StampedTcp {
    tcp: TcpStream,
    clock: ClockPair,
    /// The kernel took the stamping option (receive and transmit stamps).
    kernel_stamps: bool,
    stamps: StreamStamps,
    /// Writes not yet handed to the kernel (see [`StreamStamps::hold_writes`]).
    held: Vec<u8>,
}

impl StampedTcp {
    /// Wraps `tcp`, turning on stamps before any data can arrive.
    pub(crate) fn new(tcp: TcpStream) -> (StampedTcp, StreamStamps) {
        let kernel_stamps = enable_stamps(tcp.as_raw_fd(), true);
        let stamps = StreamStamps::default();
        let stream = StampedTcp {
            tcp,
            clock: ClockPair::now(),
            kernel_stamps,
            stamps: stamps.clone(),
            held: Vec::new(),
        };
        (stream, stamps)
    }

    fn holding(&self) -> Holding {
        self.stamps.log().holding
    }

    /// Hands the held bytes to the kernel, stamping the write like any other.
    fn poll_send_held(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.held.is_empty() {
            let called = Instant::now();
            let n = ready!(Pin::new(&mut self.tcp).poll_write(cx, &self.held))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.wrote(called);
            self.held.drain(..n);
        }
        Poll::Ready(Ok(()))
    }

    /// Holds `bufs` whole when writes are held and they fit (`Some(bytes)`); otherwise
    /// sends what is held first and leaves `bufs` to be written (`None`).
    fn poll_hold(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<Option<usize>>> {
        if self.holding() == Holding::Off {
            return Poll::Ready(Ok(None));
        }
        let len: usize = bufs.iter().map(|b| b.len()).sum();
        if self.held.len() + len <= HELD_MAX {
            for buf in bufs {
                self.held.extend_from_slice(buf);
            }
            return Poll::Ready(Ok(Some(len)));
        }
        ready!(self.poll_send_held(cx))?;
        Poll::Ready(Ok(None))
    }

    fn wrote(&self, called: Instant) {
        let write = (called, Instant::now());
        let mut log = self.stamps.log();
        log.first_write.get_or_insert(write);
        log.last_write = Some(write);
    }

    fn read(&self, stamp: Option<libc::timespec>) {
        let at = self.clock.stamp_or(stamp, Instant::now());
        let mut log = self.stamps.log();
        log.last_read = Some(at);
        let check_first = !log.first_checked && log.first_write.is_some();
        if !check_first && !log.awaiting_reply {
            return;
        }
        let sent = if self.kernel_stamps {
            transmit_stamps(self.tcp.as_raw_fd(), &self.clock)
        } else {
            None
        };
        // A stamp counts for a write when it lies between the write's call and this
        // read's data arriving (a segment held back by the window leaves after the
        // call returned); otherwise the instant the write returned stands.
        let stamp_of = |write: (Instant, Instant), stamp: Instant| {
            if (write.0..=at).contains(&stamp) {
                stamp
            } else {
                write.1
            }
        };
        if check_first {
            log.first_checked = true;
            if let (Some(write), Some((first, _))) = (log.first_write, sent) {
                log.first_write = Some((write.0, stamp_of(write, first)));
            }
        }
        if log.awaiting_reply {
            log.awaiting_reply = false;
            log.request_sent = log.last_write.map(|write| match sent {
                Some((_, last)) => stamp_of(write, last),
                None => write.1,
            });
        }
    }
}

impl AsyncRead for StampedTcp {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.holding() == Holding::UntilRead {
            ready!(this.poll_send_held(cx))?;
        }
        if !this.kernel_stamps {
            let before = buf.filled().len();
            ready!(Pin::new(&mut this.tcp).poll_read(cx, buf))?;
            if buf.filled().len() > before {
                this.read(None);
            }
            return Poll::Ready(Ok(()));
        }
        loop {
            ready!(this.tcp.poll_read_ready(cx))?;
            let fd = this.tcp.as_raw_fd();
            // SAFETY: recvmsg only writes initialised bytes into the unfilled part, and
            // we mark exactly the `n` it reports as initialised below.
            let unfilled = unsafe { buf.unfilled_mut() };
            let room = unfilled.len();
            let mut received = None;
            let outcome = this.tcp.try_io(Interest::READABLE, || {
                let (n, stamp) = recv_stamped(fd, unfilled, 0)?;
                received = Some((n, stamp));
                // A read that did not fill the buffer emptied the socket: saying so
                // clears the readiness now (as tokio's own reads do), instead of one
                // more recvmsg that would only return EAGAIN. Data arriving meanwhile
                // raises a newer readiness, which this does not clear.
                if 0 < n && n < room {
                    return Err(io::ErrorKind::WouldBlock.into());
                }
                Ok(())
            });
            if let Some((n, stamp)) = received {
                // SAFETY: the kernel wrote `n` bytes at the start of `unfilled`.
                unsafe { buf.assume_init(n) };
                buf.advance(n);
                if n > 0 {
                    this.read(stamp);
                }
                return Poll::Ready(Ok(()));
            }
            match outcome {
                // Readiness was stale; try_io cleared it, wait again.
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => continue,
                Err(err) => return Poll::Ready(Err(err)),
                Ok(()) => unreachable!("a read that succeeded left its count"),
            }
        }
    }
}

impl AsyncWrite for StampedTcp {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Some(n) = ready!(this.poll_hold(cx, &[io::IoSlice::new(buf)]))? {
            return Poll::Ready(Ok(n));
        }
        let called = Instant::now();
        let n = ready!(Pin::new(&mut this.tcp).poll_write(cx, buf))?;
        if n > 0 {
            this.wrote(called);
        }
        Poll::Ready(Ok(n))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Some(n) = ready!(this.poll_hold(cx, bufs))? {
            return Poll::Ready(Ok(n));
        }
        let called = Instant::now();
        let n = ready!(Pin::new(&mut this.tcp).poll_write_vectored(cx, bufs))?;
        if n > 0 {
            this.wrote(called);
        }
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.holding() == Holding::UntilFlush {
            ready!(this.poll_send_held(cx))?;
            this.stamps.log().holding = Holding::Off;
        }
        Pin::new(&mut this.tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send_held(cx))?;
        Pin::new(&mut this.tcp).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A stamped client stream and the server's end of it.
    async fn pair() -> (StampedTcp, StreamStamps, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let (client, stamps) = StampedTcp::new(client);
        (client, stamps, server)
    }

    /// Whatever reaches `server` within 100 ms.
    async fn arrived(server: &mut TcpStream) -> Vec<u8> {
        let mut got = vec![0; 1024];
        match tokio::time::timeout(Duration::from_millis(100), server.read(&mut got)).await {
            Ok(n) => got.truncate(n.unwrap()),
            Err(_) => got.clear(),
        }
        got
    }

    #[tokio::test]
    async fn held_writes_leave_with_the_request_in_one_write() {
        let (mut client, stamps, mut server) = pair().await;
        stamps.hold_writes();
        client.write_all(b"finished,").await.unwrap();
        client.flush().await.unwrap();
        client.write_all(b"preface,").await.unwrap();
        client.flush().await.unwrap();
        assert_eq!(arrived(&mut server).await, b"", "flushes sent held bytes");

        stamps.await_reply();
        client.write_all(b"request").await.unwrap();
        assert_eq!(arrived(&mut server).await, b"", "sent before the flush");
        client.flush().await.unwrap();
        assert_eq!(arrived(&mut server).await, b"finished,preface,request");

        // The request's flush ended the hold: the stream writes as it always did, and
        // the request was stamped when it left.
        client.write_all(b"ack").await.unwrap();
        assert_eq!(arrived(&mut server).await, b"ack");
        server.write_all(b"reply").await.unwrap();
        let mut reply = [0; 5];
        client.read_exact(&mut reply).await.unwrap();
        let sent = stamps
            .request_sent()
            .expect("the request's write was stamped");
        assert!(sent <= stamps.last_read().unwrap());
    }

    #[tokio::test]
    async fn a_read_sends_what_is_held_before_waiting_for_the_answer() {
        let (mut client, stamps, mut server) = pair().await;
        stamps.hold_writes();
        client.write_all(b"hello").await.unwrap();
        client.flush().await.unwrap();
        assert_eq!(arrived(&mut server).await, b"");
        let reader = tokio::spawn(async move {
            let mut answer = [0; 6];
            client.read_exact(&mut answer).await.unwrap();
            answer
        });
        assert_eq!(arrived(&mut server).await, b"hello");
        server.write_all(b"answer").await.unwrap();
        assert_eq!(&reader.await.unwrap(), b"answer");
        assert!(stamps.first_write().is_some());
    }

    #[tokio::test]
    async fn a_write_larger_than_the_hold_goes_out_at_once_after_what_was_held() {
        let (mut client, stamps, mut server) = pair().await;
        stamps.hold_writes();
        client.write_all(b"held").await.unwrap();
        let body = vec![b'x'; HELD_MAX];
        client.write_all(&body).await.unwrap();
        let mut got = vec![0; 4 + HELD_MAX];
        server.read_exact(&mut got).await.unwrap();
        assert_eq!(&got[..4], b"held");
        assert!(got[4..].iter().all(|&b| b == b'x'));
    }
}
