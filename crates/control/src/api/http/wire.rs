//! The connection layer under `netbridge serve`: a request whose head the
//! HTTP parser refuses (malformed request line, URI too long, too many or
//! too large headers) is answered by the parser itself with an empty 400,
//! 414 or 431. CloudStack clients expect an error body and the
//! `X-Description` header, so this layer recognises those automatic answers
//! as they are written (status 400/414/431 with `content-length: 0`; every
//! answer of the API itself has a body) and writes CloudStack's error
//! answer in their place.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::extract::connect_info::Connected;
use axum::serve::{IncomingStream, Listener};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

use crate::api::ApiError;

/// The peer address of a connection (the handlers' `ConnectInfo`).
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub SocketAddr);

/// A TCP listener whose connections are [`ErrorBodyStream`]s.
pub struct ErrorBodyListener {
    inner: TcpListener,
}

impl ErrorBodyListener {
    pub fn new(inner: TcpListener) -> ErrorBodyListener {
        ErrorBodyListener { inner }
    }
}

impl Listener for ErrorBodyListener {
    type Io = ErrorBodyStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        // axum's own accept loop (it rides out transient accept errors).
        let (stream, addr) = Listener::accept(&mut self.inner).await;
        (ErrorBodyStream::new(stream), addr)
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

impl Connected<IncomingStream<'_, ErrorBodyListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, ErrorBodyListener>) -> Self {
        Peer(*stream.remote_addr())
    }
}

/// A connection that replaces the HTTP parser's empty error answers.
pub struct ErrorBodyStream<T> {
    inner: T,
    /// A replacement answer still to be written, and how much of it is.
    replacement: Option<(Vec<u8>, usize)>,
}

impl<T> ErrorBodyStream<T> {
    pub fn new(inner: T) -> ErrorBodyStream<T> {
        ErrorBodyStream {
            inner,
            replacement: None,
        }
    }
}

/// The answer that replaces an automatic one of `status`, or `None` when
/// `head` is not such an answer.
pub fn replacement_for(head: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(head).ok()?;
    let status: u16 = text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()?;
    let reason = match status {
        400 => "Malformed request: the request line or a header could not be parsed",
        414 => "Request URI too long",
        431 => "Request headers too large or too many",
        _ => return None,
    };
    let lower = text.to_ascii_lowercase();
    if !lower.contains("\r\ncontent-length: 0\r\n") || !text.ends_with("\r\n\r\n") {
        return None;
    }
    // The request could not be read, so neither its command nor its
    // `response` format is known: `errorresponse`, JSON.
    let error = ApiError::server(status, reason);
    let body = serde_json::to_vec(&error.to_response(None)).ok()?;
    let mut out = format!(
        "HTTP/1.1 {status} {}\r\ncontent-type: {}\r\n{}: {reason}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        axum::http::StatusCode::from_u16(status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("Error"),
        super::JSON_CONTENT_TYPE,
        super::DESCRIPTION_HEADER,
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(&body);
    Some(out)
}

impl<T: AsyncWrite + Unpin> ErrorBodyStream<T> {
    /// Writes what is left of a replacement; `Ready(Ok)` once it is all out.
    fn drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some((bytes, written)) = &mut self.replacement {
            if *written >= bytes.len() {
                self.replacement = None;
                break;
            }
            match Pin::new(&mut self.inner).poll_write(cx, &bytes[*written..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => *written += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for ErrorBodyStream<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for ErrorBodyStream<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.drain(cx)?.is_pending() {
            return Poll::Pending;
        }
        // The parser writes its automatic answer as one small buffer.
        if buf.len() < 1024 {
            if let Some(replacement) = replacement_for(buf) {
                this.replacement = Some((replacement, 0));
                // Accepted: the replacement goes out instead (now or on flush).
                let _ = this.drain(cx)?;
                return Poll::Ready(Ok(buf.len()));
            }
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.drain(cx)?.is_pending() {
            return Poll::Pending;
        }
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.drain(cx)?.is_pending() {
            return Poll::Pending;
        }
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }

    // Not vectored, so the parser hands each answer over as one buffer.
    fn is_write_vectored(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_parsers_empty_answers_are_replaced() {
        let auto = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\ndate: Thu, 01 Jan 2026 00:00:00 GMT\r\n\r\n";
        let out = replacement_for(auto).map(|b| String::from_utf8_lossy(&b).into_owned());
        let out = out.unwrap_or_default();
        assert!(
            out.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"),
            "{out}"
        );
        assert!(
            out.contains("x-description: Request headers too large or too many\r\n"),
            "{out}"
        );
        assert!(out.ends_with(r#"{"errorresponse":{"cserrorcode":9999,"errorcode":431,"errortext":"Request headers too large or too many","uuidList":[]}}"#), "{out}");
        // An answer with a body, another status, or not a head: untouched.
        assert!(replacement_for(b"HTTP/1.1 431 x\r\ncontent-length: 10\r\n\r\n").is_none());
        assert!(replacement_for(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").is_none());
        assert!(replacement_for(b"{\"x\":1}").is_none());
    }
}
