//! A header-read deadline for every connection, against slowloris clients.
//!
//! `axum::serve` runs hyper without a timer, so hyper's own `header_read_timeout` never
//! fires: a client trickling one header byte a second would hold a connection (and a task)
//! forever. [`HeaderDeadline`] wraps the listener; each accepted stream must deliver a whole
//! request head (up to the blank line that ends it) within the deadline — counted from the
//! accept, and again from each response, so an idle keep-alive connection is closed after
//! the same time. When the deadline passes the read fails and hyper drops the connection.
//!
//! HTTP/2 connections (prior knowledge, h2c) get the same deadline: it runs from the accept
//! while the client's preface and first header block arrive, whenever a header block has
//! begun and not ended, and whenever no request is in progress (every stream answered) —
//! so an idle h2c connection is closed after the same time as an idle HTTP/1 one, and one
//! serving a slow request is not. [`super::h2_frames`] reads the frames passing through.
//!
//! Bodies are bounded separately: handlers read them inside the request timeout (see
//! `observe` in [`crate::http`]), so a trickled body is answered 503 when that expires.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::serve::Listener;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use super::h2_frames::{self, PREFACE};

/// A listener whose streams enforce a header-read deadline.
pub struct HeaderDeadline<L> {
    inner: L,
    timeout: Duration,
}

impl<L> HeaderDeadline<L> {
    pub fn new(inner: L, timeout: Duration) -> Self {
        HeaderDeadline { inner, timeout }
    }
}

impl<L: Listener> Listener for HeaderDeadline<L> {
    type Io = DeadlineStream<L::Io>;
    type Addr = L::Addr;

    fn accept(&mut self) -> impl Future<Output = (Self::Io, Self::Addr)> + Send {
        let timeout = self.timeout;
        let accept = self.inner.accept();
        async move {
            let (io, addr) = accept.await;
            (DeadlineStream::new(io, timeout), addr)
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// Where the stream is in the request it is reading.
#[derive(Debug)]
enum Phase {
    /// Waiting for (the rest of) a request head; the deadline runs.
    Head,
    /// The head is complete; body bytes and the response follow, no deadline.
    Body,
    /// An HTTP/2 connection: the deadline runs while no request is in progress.
    Http2(Box<h2_frames::Connection>),
}

impl Phase {
    fn deadline_runs(&self) -> bool {
        match self {
            Phase::Head => true,
            Phase::Body => false,
            Phase::Http2(c) => c.waiting_for_a_request(),
        }
    }
}

/// A stream that fails its reads once a request head takes longer than the deadline.
pub struct DeadlineStream<S> {
    inner: S,
    timeout: Duration,
    phase: Phase,
    deadline: Pin<Box<Sleep>>,
    /// The last bytes read, to find `\r\n\r\n` split across reads.
    tail: [u8; 3],
    /// Bytes seen since the connection opened, up to the HTTP/2 preface's length.
    seen: usize,
}

/// Enough of the preface to know a connection is HTTP/2 (no HTTP/1 method starts so).
const H2_PREFACE: &[u8] = PREFACE.split_at(14).0;

impl<S> DeadlineStream<S> {
    fn new(inner: S, timeout: Duration) -> Self {
        DeadlineStream {
            inner,
            timeout,
            phase: Phase::Head,
            deadline: Box::pin(tokio::time::sleep(timeout)),
            tail: [0; 3],
            seen: 0,
        }
    }

    /// Updates the phase with bytes just read.
    fn observe(&mut self, bytes: &[u8]) {
        let mut bytes = bytes;
        if self.seen < H2_PREFACE.len() {
            let start = self.seen;
            let n = bytes.len().min(H2_PREFACE.len() - start);
            if bytes[..n] == H2_PREFACE[start..start + n] {
                if start + n == H2_PREFACE.len() {
                    self.phase = Phase::Http2(Box::new(h2_frames::Connection::after_preface(
                        H2_PREFACE.len(),
                    )));
                    bytes = &bytes[n..];
                }
            } else {
                // Not HTTP/2: stop comparing.
                self.seen = H2_PREFACE.len();
            }
            self.seen = self.seen.max(start + n);
        }
        if let Phase::Http2(connection) = &mut self.phase {
            let waiting = connection.waiting_for_a_request();
            connection.from_client(bytes);
            self.arm_if_idle_again(waiting);
            return;
        }
        if !matches!(self.phase, Phase::Head) || bytes.is_empty() {
            return;
        }
        let mut window = self.tail.to_vec();
        window.extend_from_slice(bytes);
        if window.windows(4).any(|w| w == b"\r\n\r\n") {
            self.phase = Phase::Body;
        }
        let keep = bytes.len().min(3);
        let mut tail = [0u8; 3];
        let from_old = 3 - keep;
        tail[..from_old].copy_from_slice(&self.tail[keep..]);
        tail[from_old..].copy_from_slice(&bytes[bytes.len() - keep..]);
        self.tail = tail;
    }

    /// A response is going out (`bytes`, as written): for HTTP/1 the next bytes read start
    /// a new request head; for HTTP/2 an answered stream may leave the connection idle.
    fn wrote(&mut self, bytes: &[u8]) {
        match &mut self.phase {
            Phase::Body => {
                self.phase = Phase::Head;
                self.tail = [0; 3];
                let at = Instant::now() + self.timeout;
                self.deadline.as_mut().reset(at);
            }
            Phase::Http2(connection) => {
                let waiting = connection.waiting_for_a_request();
                connection.from_server(bytes);
                self.arm_if_idle_again(waiting);
            }
            Phase::Head => {}
        }
    }

    /// Restarts the deadline when an HTTP/2 connection just went from serving a request to
    /// waiting for one (`was_waiting` is how it was before).
    fn arm_if_idle_again(&mut self, was_waiting: bool) {
        if !was_waiting && self.phase.deadline_runs() {
            let at = Instant::now() + self.timeout;
            self.deadline.as_mut().reset(at);
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for DeadlineStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.phase.deadline_runs() && this.deadline.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the request head did not arrive within {:?}", this.timeout),
            )));
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        if !matches!(this.phase, Phase::Body) {
            this.observe(&buf.filled()[before..]);
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for DeadlineStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = ready!(Pin::new(&mut this.inner).poll_write(cx, buf))?;
        this.wrote(&buf[..written]);
        Poll::Ready(Ok(written))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = ready!(Pin::new(&mut this.inner).poll_write_vectored(cx, bufs))?;
        let mut left = written;
        for buf in bufs {
            let n = left.min(buf.len());
            this.wrote(&buf[..n]);
            left -= n;
            if left == 0 {
                break;
            }
        }
        Poll::Ready(Ok(written))
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream() -> DeadlineStream<tokio::io::Empty> {
        DeadlineStream::new(tokio::io::empty(), Duration::from_secs(1))
    }

    #[tokio::test]
    async fn a_head_split_across_reads_ends_the_head_phase() {
        let mut s = stream();
        s.observe(b"GET / HTTP/1.1\r\nHost: x\r");
        assert!(matches!(s.phase, Phase::Head));
        s.observe(b"\n\r");
        assert!(matches!(s.phase, Phase::Head));
        s.observe(b"\n");
        assert!(matches!(s.phase, Phase::Body));
        s.wrote(b"HTTP/1.1 200 OK\r\n");
        assert!(
            matches!(s.phase, Phase::Head),
            "a response starts the next head"
        );
    }

    #[tokio::test]
    async fn http2_prior_knowledge_gets_the_deadline_while_no_request_is_in_progress() {
        let mut s = stream();
        s.observe(b"PRI * HTTP/2");
        s.observe(b".0\r\n\r\nSM\r\n\r\n");
        assert!(matches!(s.phase, Phase::Http2(_)));
        assert!(s.phase.deadline_runs(), "nothing asked yet");
        // HEADERS, END_HEADERS | END_STREAM, stream 1, one byte of header block.
        s.observe(&[0, 0, 1, 0x1, 0x5, 0, 0, 0, 1, 0x82]);
        assert!(!s.phase.deadline_runs(), "a request is in progress");
        // The server answers: HEADERS with END_STREAM.
        s.wrote(&[0, 0, 1, 0x1, 0x5, 0, 0, 0, 1, 0x88]);
        assert!(s.phase.deadline_runs(), "idle again");
        let mut s = stream();
        s.observe(b"POST / HTTP/1.1\r\n\r\n");
        assert!(matches!(s.phase, Phase::Body));
    }
}
