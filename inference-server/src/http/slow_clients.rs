//! A header-read deadline for every connection, against slowloris clients.
//!
//! `axum::serve` runs hyper without a timer, so hyper's own `header_read_timeout` never
//! fires: a client trickling one header byte a second would hold a connection (and a task)
//! forever. [`HeaderDeadline`] wraps the listener; each accepted stream must deliver a whole
//! request head (up to the blank line that ends it) within the deadline — counted from the
//! accept, and again from each response, so an idle keep-alive connection is closed after
//! the same time. When the deadline passes the read fails and hyper drops the connection.
//!
//! Bodies are bounded separately: handlers read them inside the request timeout (see
//! `observe` in [`crate::http`]), so a trickled body is answered 503 when that expires.
//! HTTP/2 connections (prior knowledge) are left alone after their preface.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::serve::Listener;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for (the rest of) a request head; the deadline runs.
    Head,
    /// The head is complete; body bytes and the response follow, no deadline.
    Body,
    /// An HTTP/2 connection: its framing is not inspected.
    Http2,
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

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0";

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
        if self.seen < H2_PREFACE.len() {
            let start = self.seen;
            let n = bytes.len().min(H2_PREFACE.len() - start);
            if bytes[..n] == H2_PREFACE[start..start + n] {
                if start + n == H2_PREFACE.len() {
                    self.phase = Phase::Http2;
                }
            } else {
                // Not HTTP/2: stop comparing.
                self.seen = H2_PREFACE.len();
            }
            self.seen = self.seen.max(start + n);
        }
        if self.phase != Phase::Head || bytes.is_empty() {
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

    /// A response is going out: the next bytes read start a new request head.
    fn rearm(&mut self) {
        if self.phase == Phase::Body {
            self.phase = Phase::Head;
            self.tail = [0; 3];
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
        if this.phase == Phase::Head && this.deadline.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the request head did not arrive within {:?}", this.timeout),
            )));
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        if this.phase == Phase::Head {
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
        this.rearm();
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.rearm();
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
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
        assert_eq!(s.phase, Phase::Head);
        s.observe(b"\n\r");
        assert_eq!(s.phase, Phase::Head);
        s.observe(b"\n");
        assert_eq!(s.phase, Phase::Body);
        s.rearm();
        assert_eq!(s.phase, Phase::Head, "a response starts the next head");
    }

    #[tokio::test]
    async fn http2_prior_knowledge_is_left_alone() {
        let mut s = stream();
        s.observe(b"PRI * HTTP/2");
        s.observe(b".0\r\n\r\nSM\r\n\r\n");
        assert_eq!(s.phase, Phase::Http2);
        s.rearm();
        assert_eq!(s.phase, Phase::Http2);
        let mut s = stream();
        s.observe(b"POST / HTTP/1.1\r\n\r\n");
        assert_eq!(s.phase, Phase::Body);
    }
}
