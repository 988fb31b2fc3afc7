//! The request-head gate: an I/O wrapper between a client connection and
//! hyper that reads every request head itself before hyper sees a byte of it.
//!
//! hyper's own head handling answers malformed or oversized heads with empty
//! bodies and has one timer that runs from the end of a response to the end
//! of the next head, so it cannot tell an idle keep-alive connection from a
//! slow head. The gate therefore:
//! - waits for the first byte of a request at most `idle_timeout` (the
//!   connection is closed; nothing is answered because nothing was asked);
//! - waits for the rest of the head at most `header_read_timeout` from its
//!   first byte, whatever the pace (slowloris): 408;
//! - parses the head with the same parser as hyper (httparse) and refuses
//!   what hyper would refuse, and more, with the executor's JSON error body:
//!   400 malformed, 411 `Transfer-Encoding`, 414 target too long, 431 head
//!   too large or too many fields;
//! - frames the body by its `Content-Length` (the only framing accepted), so
//!   it knows where the next head starts, and passes body bytes only when
//!   hyper asks for them: a handler that refuses before reading the body
//!   leaves it unread;
//! - reads no new head while an answer is still waiting to be written (a
//!   client pipelining requests without reading the answers would
//!   otherwise make hyper hold them in memory), and closes a connection
//!   whose client does not read an answer within `idle_timeout`;
//! - after a refusal, half-closes and drains the input briefly so the client
//!   can read the answer before the socket goes away.
//!
//! Body deadlines and size limits are enforced by the handler that reads the
//! body (`server::authenticate`), which can still answer.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use axum::http::{header, HeaderName, HeaderValue, Method, StatusCode, Uri};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use super::conns::{Connection, Phase};
use super::server::{error_body, AppState};
use netbridge_protocol::sanitize_for_message;

/// Largest request head (request line and header fields).
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Longest request target (path and query).
pub const MAX_TARGET_BYTES: usize = 4 * 1024;
/// Most header fields in a request.
pub const MAX_HEADERS: usize = 64;
/// How long the input is drained after a refusal before the socket closes.
const LINGER: Duration = Duration::from_secs(2);
/// Most bytes drained after a refusal.
const LINGER_BYTES: usize = 1 << 20;
/// Bytes read from the socket at a time while a head arrives.
const READ_CHUNK: usize = 4096;
/// Buffer for a body tail read on hyper's behalf.
const BODY_CHUNK: usize = 16 * 1024;

/// An answer of the HTTP layer itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    /// Label of the rejected-requests metric.
    pub reason: &'static str,
    pub message: String,
}

impl Refusal {
    fn new(status: u16, reason: &'static str, message: impl Into<String>) -> Refusal {
        Refusal {
            status,
            reason,
            message: message.into(),
        }
    }
}

/// What the bytes received so far make of a request head.
#[derive(Debug, PartialEq, Eq)]
pub enum HeadCheck {
    Incomplete,
    Complete { head_len: usize, body_len: u64 },
    Refused(Refusal),
}

fn malformed(what: impl std::fmt::Display) -> HeadCheck {
    HeadCheck::Refused(Refusal::new(
        400,
        "malformed_request",
        format!("malformed request: {what}"),
    ))
}

fn too_large_head() -> HeadCheck {
    HeadCheck::Refused(Refusal::new(
        431,
        "header_too_large",
        format!("request header fields larger than {MAX_HEAD_BYTES} bytes"),
    ))
}

/// `Content-Length` as hyper reads it, but stricter: digits only.
fn content_length(value: &[u8]) -> Option<u64> {
    if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(value).ok()?.parse().ok()
}

/// Checks a (possibly partial) request head at the start of `buf`.
pub fn check_head(buf: &[u8]) -> HeadCheck {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut fields);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() <= MAX_HEAD_BYTES => {
            return HeadCheck::Incomplete
        }
        Ok(httparse::Status::Partial) if !buf.contains(&b'\n') => {
            return HeadCheck::Refused(Refusal::new(
                414,
                "uri_too_long",
                format!("request target longer than {MAX_TARGET_BYTES} bytes"),
            ))
        }
        Ok(httparse::Status::Partial) => return too_large_head(),
        Err(httparse::Error::TooManyHeaders) => {
            return HeadCheck::Refused(Refusal::new(
                431,
                "header_too_large",
                format!("more than {MAX_HEADERS} header fields"),
            ))
        }
        Err(e) => return malformed(e),
    };
    let target = req.path.unwrap_or_default();
    if target.len() > MAX_TARGET_BYTES {
        return HeadCheck::Refused(Refusal::new(
            414,
            "uri_too_long",
            format!("request target longer than {MAX_TARGET_BYTES} bytes"),
        ));
    }
    if head_len > MAX_HEAD_BYTES {
        return too_large_head();
    }
    // What hyper checks after httparse, so that hyper never refuses a head
    // the gate let through (it would answer with an empty body).
    if Method::from_bytes(req.method.unwrap_or_default().as_bytes()).is_err() {
        return malformed("invalid method");
    }
    if Uri::try_from(target).is_err() {
        return malformed("invalid request target");
    }
    let mut body_len: Option<u64> = None;
    for field in req.headers.iter() {
        let Ok(name) = HeaderName::from_bytes(field.name.as_bytes()) else {
            return malformed("invalid header field name");
        };
        if HeaderValue::from_bytes(field.value).is_err() {
            return malformed(format!(
                "invalid value of header field '{}'",
                sanitize_for_message(field.name)
            ));
        }
        if name == header::TRANSFER_ENCODING {
            return HeadCheck::Refused(Refusal::new(
                411,
                "length_required",
                "a request body needs a 'Content-Length' header; 'Transfer-Encoding' is not supported",
            ));
        }
        if name == header::CONTENT_LENGTH {
            let Some(n) = content_length(field.value) else {
                return malformed("invalid 'Content-Length'");
            };
            if body_len.is_some_and(|seen| seen != n) {
                return malformed("conflicting 'Content-Length' headers");
            }
            body_len = Some(n);
        }
    }
    HeadCheck::Complete {
        head_len,
        body_len: body_len.unwrap_or(0),
    }
}

/// A complete HTTP/1.1 response carrying the executor's JSON error body;
/// the connection closes after it.
pub fn refusal_bytes(status: u16, message: &str) -> Vec<u8> {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
    let body = error_body(message).to_string();
    let mut out = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        code.as_u16(),
        code.canonical_reason().unwrap_or(""),
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body.as_bytes());
    out
}

enum Stage {
    /// Reading a head; `first_byte` once one arrived (the header deadline
    /// runs from it, the idle deadline before it).
    AwaitHead { first_byte: Option<Instant> },
    /// Handing a checked head, then exactly its body, to hyper.
    Forward { head: usize, body: u64 },
    /// Refused, timed out or closed by the peer: hyper reads end of input.
    Closed,
}

enum Closing {
    Start,
    Write(usize),
    Flush,
    Shutdown,
    Linger(usize),
    Done,
}

/// The wrapper around one client connection (TLS or plain TCP).
pub struct Gate<S> {
    io: S,
    conn: Arc<Connection>,
    state: Arc<AppState>,
    /// Received bytes not yet handed to hyper: a head being read, or the
    /// part of the next message that arrived with it.
    buf: Vec<u8>,
    /// Bytes of `buf` already searched for a line end.
    searched: usize,
    stage: Stage,
    deadline: Option<Instant>,
    timer: Pin<Box<Sleep>>,
    write_deadline: Option<Instant>,
    write_timer: Option<Pin<Box<Sleep>>>,
    /// The last write could not complete: no new head is read until it
    /// does, or hyper would keep answering pipelined requests into memory.
    write_blocked: bool,
    /// The answer to send before closing, when the gate refused.
    refusal: Option<Vec<u8>>,
    closing: Closing,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Gate<S> {
    pub fn new(io: S, conn: Arc<Connection>, state: Arc<AppState>) -> Gate<S> {
        Gate {
            io,
            conn,
            state,
            buf: Vec::new(),
            searched: 0,
            stage: Stage::AwaitHead { first_byte: None },
            deadline: None,
            // Re-armed before every use.
            timer: Box::pin(tokio::time::sleep(Duration::from_secs(3600))),
            write_deadline: None,
            write_timer: None,
            write_blocked: false,
            refusal: None,
            closing: Closing::Start,
        }
    }

    /// Waits for the first request head: true when one is ready for hyper,
    /// false when the connection ended (closed, idle too long or refused;
    /// a refusal is sent by [`AsyncWriteExt::shutdown`](tokio::io::AsyncWriteExt::shutdown)).
    pub async fn first_head(&mut self) -> io::Result<bool> {
        std::future::poll_fn(|cx| self.poll_head(cx)).await
    }

    /// True when `deadline` has passed (arming the timer otherwise).
    fn poll_deadline(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(deadline) = self.deadline else {
            return false;
        };
        if self.timer.deadline() != deadline {
            self.timer.as_mut().reset(deadline);
        }
        self.timer.as_mut().poll(cx).is_ready()
    }

    fn refuse(&mut self, refusal: &Refusal) {
        log::debug!(
            "answering {} to {}: {}",
            refusal.status,
            self.conn.peer(),
            refusal.message
        );
        self.refusal = Some(refusal_bytes(refusal.status, &refusal.message));
        self.stage = Stage::Closed;
        self.conn.set_phase(Phase::Closing);
    }

    fn await_next_head(&mut self) {
        self.stage = Stage::AwaitHead { first_byte: None };
        self.deadline = None;
        self.searched = 0;
        // An idle connection keeps no head-sized buffer.
        if self.buf.is_empty() && self.buf.capacity() > READ_CHUNK {
            self.buf = Vec::new();
        }
    }

    fn set_forward(&mut self, head: usize, body: u64) {
        if head == 0 && body == 0 {
            self.await_next_head();
        } else {
            self.stage = Stage::Forward { head, body };
        }
    }

    /// Reads what the socket has (at most one chunk) into `buf`.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let mut chunk = [0u8; READ_CHUNK];
        let mut read = ReadBuf::new(&mut chunk);
        ready!(Pin::new(&mut self.io).poll_read(cx, &mut read))?;
        self.buf.extend_from_slice(read.filled());
        Poll::Ready(Ok(read.filled().len()))
    }

    /// Drives the head stage: Ready(true) once a checked head waits in
    /// `buf`, Ready(false) when the connection is to end.
    fn poll_head(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<bool>> {
        loop {
            let first_byte = match self.stage {
                Stage::Forward { .. } => return Poll::Ready(Ok(true)),
                Stage::Closed => return Poll::Ready(Ok(false)),
                Stage::AwaitHead { first_byte } => first_byte,
            };
            // hyper polls its pending write again when the socket can take
            // it, and then asks for the head again.
            if self.write_blocked {
                return Poll::Pending;
            }
            if self.buf.len() > self.searched {
                // A head can only have become complete (or refusable) with
                // a new line end; field count bounds how often that happens.
                let new_line = self.buf[self.searched..].contains(&b'\n');
                self.searched = self.buf.len();
                if new_line || self.buf.len() > MAX_HEAD_BYTES {
                    match check_head(&self.buf) {
                        HeadCheck::Incomplete => {}
                        HeadCheck::Complete { head_len, body_len } => {
                            self.stage = Stage::Forward {
                                head: head_len,
                                body: body_len,
                            };
                            self.deadline = None;
                            self.conn.set_phase(Phase::Request);
                            return Poll::Ready(Ok(true));
                        }
                        HeadCheck::Refused(refusal) => {
                            self.state.metrics.rejected(refusal.reason);
                            self.refuse(&refusal);
                            return Poll::Ready(Ok(false));
                        }
                    }
                }
            }
            match self.poll_fill(cx) {
                Poll::Ready(Ok(0)) => {
                    // The client closed its side: nothing more to answer.
                    self.stage = Stage::Closed;
                    return Poll::Ready(Ok(false));
                }
                Poll::Ready(Ok(_)) => {
                    if first_byte.is_none() {
                        let now = Instant::now();
                        self.stage = Stage::AwaitHead {
                            first_byte: Some(now),
                        };
                        self.deadline = Some(now + self.state.http.header_read_timeout);
                        self.conn.set_phase(Phase::Head);
                    }
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    // While the previous request is still being served (hyper
                    // polls for the end of input meanwhile) no deadline runs:
                    // it starts once hyper asks for the next head.
                    if self.conn.busy_or_wake_on_idle(cx.waker()) {
                        return Poll::Pending;
                    }
                    if self.deadline.is_none() {
                        self.deadline = Some(Instant::now() + self.state.http.idle_timeout);
                        self.conn.set_phase(Phase::Idle);
                    }
                    if !self.poll_deadline(cx) {
                        return Poll::Pending;
                    }
                    if first_byte.is_some() {
                        self.state.metrics.timeout("header");
                        let limit = self.state.http.header_read_timeout;
                        self.refuse(&Refusal::new(
                            408,
                            "header_timeout",
                            format!(
                                "request header not complete within header_read_timeout ({} s)",
                                limit.as_secs_f64()
                            ),
                        ));
                    } else {
                        self.state.metrics.timeout("idle");
                        log::debug!("closing idle connection from {}", self.conn.peer());
                        self.stage = Stage::Closed;
                        self.conn.set_phase(Phase::Closing);
                    }
                    return Poll::Ready(Ok(false));
                }
            }
        }
    }

    /// Pending writes may not wait longer than `idle_timeout`: a client that
    /// does not read its answers cannot hold the connection.
    fn write_stalled(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        let idle = self.state.http.idle_timeout;
        let deadline = *self
            .write_deadline
            .get_or_insert_with(|| Instant::now() + idle);
        let timer = self
            .write_timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if timer.deadline() != deadline {
            timer.as_mut().reset(deadline);
        }
        if timer.as_mut().poll(cx).is_ready() {
            self.state.metrics.timeout("write");
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "client did not read the response within idle_timeout",
            ));
        }
        Ok(())
    }

    fn write_progress<T>(
        &mut self,
        cx: &mut Context<'_>,
        result: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        self.write_blocked = result.is_pending();
        match result {
            Poll::Ready(r) => {
                self.write_deadline = None;
                Poll::Ready(r)
            }
            Poll::Pending => match self.write_stalled(cx) {
                Ok(()) => Poll::Pending,
                Err(e) => Poll::Ready(Err(e)),
            },
        }
    }

    /// The client may still be sending (a refused head, an unread body).
    fn peer_may_be_sending(&self) -> bool {
        self.refusal.is_some()
            || !self.buf.is_empty()
            || matches!(self.stage, Stage::Forward { body, .. } if body > 0)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Gate<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            let (head, body) = match this.stage {
                Stage::Closed => return Poll::Ready(Ok(())),
                Stage::AwaitHead { .. } => {
                    if !ready!(this.poll_head(cx))? {
                        return Poll::Ready(Ok(()));
                    }
                    continue;
                }
                Stage::Forward { head, body } => (head, body),
            };
            if head > 0 || (body > 0 && !this.buf.is_empty()) {
                let allowed = if head > 0 {
                    head
                } else {
                    usize::try_from(body).unwrap_or(usize::MAX)
                };
                let n = allowed.min(this.buf.len()).min(out.remaining());
                out.put_slice(&this.buf[..n]);
                this.buf.drain(..n);
                if head > 0 {
                    this.set_forward(head - n, body);
                } else {
                    this.set_forward(0, body - n as u64);
                }
                return Poll::Ready(Ok(()));
            }
            if body == 0 {
                this.set_forward(0, 0);
                continue;
            }
            // The rest of the body comes straight from the socket, never
            // past its end (the next head goes through the gate).
            let n = if out.remaining() as u64 <= body {
                let before = out.filled().len();
                ready!(Pin::new(&mut this.io).poll_read(cx, out))?;
                out.filled().len() - before
            } else {
                let mut chunk = [0u8; BODY_CHUNK];
                let take = (body as usize).min(BODY_CHUNK);
                let mut read = ReadBuf::new(&mut chunk[..take]);
                ready!(Pin::new(&mut this.io).poll_read(cx, &mut read))?;
                out.put_slice(read.filled());
                read.filled().len()
            };
            if n == 0 {
                this.stage = Stage::Closed;
            } else {
                this.set_forward(0, body - n as u64);
            }
            return Poll::Ready(Ok(()));
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Gate<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.io).poll_write(cx, data);
        this.write_progress(cx, result)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.write_progress(cx, result)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.io).poll_flush(cx);
        this.write_progress(cx, result)
    }

    /// Sends the gate's refusal (if any) after everything hyper wrote, then
    /// closes the sending side and, when the client may still be sending,
    /// drains its input for a bounded time: closing a socket with unread
    /// input resets the connection, which can destroy the answer before the
    /// client read it.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            match this.closing {
                Closing::Start => {
                    this.closing = if this.refusal.is_some() {
                        Closing::Write(0)
                    } else {
                        Closing::Flush
                    };
                }
                Closing::Write(done) => {
                    let Some(answer) = this.refusal.take() else {
                        this.closing = Closing::Flush;
                        continue;
                    };
                    if done >= answer.len() {
                        this.refusal = Some(answer);
                        this.closing = Closing::Flush;
                        continue;
                    }
                    let result = Pin::new(&mut this.io).poll_write(cx, &answer[done..]);
                    this.refusal = Some(answer);
                    match ready!(this.write_progress(cx, result))? {
                        0 => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                        n => this.closing = Closing::Write(done + n),
                    }
                }
                Closing::Flush => {
                    let result = Pin::new(&mut this.io).poll_flush(cx);
                    ready!(this.write_progress(cx, result))?;
                    this.closing = Closing::Shutdown;
                }
                Closing::Shutdown => {
                    let result = Pin::new(&mut this.io).poll_shutdown(cx);
                    if let Err(e) = ready!(this.write_progress(cx, result)) {
                        log::debug!("closing connection from {}: {e}", this.conn.peer());
                        this.closing = Closing::Done;
                        continue;
                    }
                    if this.peer_may_be_sending() {
                        this.conn.set_phase(Phase::Closing);
                        this.deadline = Some(Instant::now() + LINGER);
                        this.closing = Closing::Linger(0);
                    } else {
                        this.closing = Closing::Done;
                    }
                }
                Closing::Linger(drained) => {
                    let mut scratch = [0u8; READ_CHUNK];
                    let mut read = ReadBuf::new(&mut scratch);
                    match Pin::new(&mut this.io).poll_read(cx, &mut read) {
                        Poll::Ready(Ok(())) if !read.filled().is_empty() => {
                            let drained = drained + read.filled().len();
                            this.closing = if drained > LINGER_BYTES {
                                Closing::Done
                            } else {
                                Closing::Linger(drained)
                            };
                        }
                        Poll::Ready(_) => this.closing = Closing::Done,
                        Poll::Pending => {
                            if !this.poll_deadline(cx) {
                                return Poll::Pending;
                            }
                            this.closing = Closing::Done;
                        }
                    }
                }
                Closing::Done => return Poll::Ready(Ok(())),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(buf: &[u8]) -> (u16, &'static str, String) {
        match check_head(buf) {
            HeadCheck::Refused(r) => (r.status, r.reason, r.message),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn complete_heads_are_framed_by_content_length() {
        assert_eq!(
            check_head(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n"),
            HeadCheck::Incomplete
        );
        let head =
            b"POST /v1/commands/assign-ip HTTP/1.1\r\nHost: x\r\nContent-Length: 42\r\n\r\n{\"a\"";
        assert_eq!(
            check_head(head),
            HeadCheck::Complete {
                head_len: head.len() - 4,
                body_len: 42
            }
        );
        assert_eq!(
            check_head(b"GET / HTTP/1.1\r\ncontent-length: 7\r\nContent-Length: 7\r\n\r\n"),
            HeadCheck::Complete {
                head_len: 56,
                body_len: 7
            }
        );
        assert_eq!(
            check_head(b"GET / HTTP/1.0\r\n\r\n"),
            HeadCheck::Complete {
                head_len: 18,
                body_len: 0
            }
        );
    }

    #[test]
    fn malformed_heads_are_refused_with_400_naming_the_problem() {
        assert_eq!(
            refused(b"GARBAGE\r\n\r\n"),
            (
                400,
                "malformed_request",
                "malformed request: invalid token".into()
            )
        );
        assert_eq!(refused(b"GET / HTTP/9.9\r\n\r\n").0, 400);
        assert_eq!(refused(b"GET / HTTP/1.1\r\nBad Header\r\n\r\n").0, 400);
        assert_eq!(
            refused(b"POST / HTTP/1.1\r\nContent-Length: 1e3\r\n\r\n").2,
            "malformed request: invalid 'Content-Length'"
        );
        assert_eq!(
            refused(b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n").2,
            "malformed request: conflicting 'Content-Length' headers"
        );
    }

    #[test]
    fn chunked_bodies_need_a_length_instead() {
        let (status, reason, message) =
            refused(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert_eq!((status, reason), (411, "length_required"));
        assert!(message.contains("'Content-Length'"), "{message}");
    }

    #[test]
    fn oversized_targets_and_heads_get_414_and_431() {
        let long_target = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(MAX_TARGET_BYTES));
        assert_eq!(refused(long_target.as_bytes()).0, 414);
        // A request line that never ends.
        let endless = format!("GET /{}", "a".repeat(MAX_HEAD_BYTES));
        assert_eq!(refused(endless.as_bytes()).0, 414);
        let big_field = format!(
            "GET / HTTP/1.1\r\nX-Big: {}\r\n",
            "b".repeat(MAX_HEAD_BYTES)
        );
        assert_eq!(
            refused(big_field.as_bytes()),
            (
                431,
                "header_too_large",
                format!("request header fields larger than {MAX_HEAD_BYTES} bytes")
            )
        );
        let mut many = String::from("GET / HTTP/1.1\r\n");
        for i in 0..=MAX_HEADERS {
            many.push_str(&format!("X-{i}: v\r\n"));
        }
        many.push_str("\r\n");
        assert_eq!(
            refused(many.as_bytes()),
            (
                431,
                "header_too_large",
                format!("more than {MAX_HEADERS} header fields")
            )
        );
    }

    #[test]
    fn refusal_is_a_complete_json_response() {
        let bytes = refusal_bytes(414, "request target longer than 4096 bytes");
        let text = String::from_utf8(bytes).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 414 URI Too Long\r\n"), "{head}");
        assert!(head.contains("connection: close"));
        assert!(head.contains(&format!("content-length: {}", body.len())));
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"status": "error", "message": "request target longer than 4096 bytes"})
        );
    }
}
