//! The accept loop: connection limits, slow-client timeouts, graceful shutdown, and an
//! `OperationOutcome` on the errors hyper answers by itself.
//!
//! `axum::serve` has no header-read timeout and no cap on connections, so a client that sends
//! half a request head held its connection (and a task) forever. Here each connection is served
//! by hyper's HTTP/1.1 builder with a timer (a request head must arrive within
//! [`ConnectionLimits::header_read_timeout`], idle keep-alive connections included), at most
//! [`ConnectionLimits::max_connections`] at once (the next one gets a 503 `OperationOutcome`
//! and is closed), and in-flight requests are let finish on shutdown, within
//! [`ConnectionLimits::shutdown_grace`]; then their connections are closed. Request bodies that stall
//! are cut off by the router's body timeout layer (`routes::router`).
//!
//! hyper answers a request it cannot parse (a malformed request line or header, a URI too long,
//! headers too large or too many) itself, with an empty body, before any handler runs.
//! [`OutcomeOnParseError`] wraps the socket and replaces exactly those responses (a 4xx head
//! with `content-length: 0` at the start of a write: no handler response has that shape, since
//! every one of ours carries an `OperationOutcome`, and NDJSON or JSON bodies never hold a
//! `\r\n\r\n`) with the same status and an `OperationOutcome` body. hyper closes the connection
//! after such a response, so the different length is never read as the start of another one.
//!
//! With TLS, the handshake runs in the connection's own task (a slow or silent client never
//! holds up the accept loop), holding the connection's slot, within the header-read timeout;
//! a failed or late handshake closes the connection. [`OutcomeOnParseError`] wraps the TLS
//! stream, so it sees the same plaintext responses. A connection over the limit is closed
//! without a 503 (answering would need a handshake first).

use std::{
    future::Future,
    io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
    time::Duration,
};

use axum::Router;
use bulkfhir_model::{
    ErrorKind,
    outcome::{Issue, OperationOutcome},
};
use hyper::server::conn::http1;
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    server::graceful::GracefulShutdown,
    service::TowerToHyperService,
};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::Semaphore,
    task::JoinSet,
};
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

/// Limits on connections and slow clients.
#[derive(Debug, Clone)]
pub struct ConnectionLimits {
    /// The most connections served at once; one more is answered 503 and closed.
    pub max_connections: usize,
    /// A request head (request line and headers) must arrive within this time, or the
    /// connection is closed; idle keep-alive connections wait this long for their next request.
    /// Keep it above the longest `Retry-After` a status poll is given: a client that waits as
    /// told and then reuses its connection would otherwise race the server's close.
    pub header_read_timeout: Duration,
    /// The longest pause between two parts of a request body; a longer one ends the request
    /// with a 408 `OperationOutcome`.
    pub body_read_timeout: Duration,
    /// On shutdown, how long in-flight requests may still run before their connections close.
    pub shutdown_grace: Duration,
    /// The largest request head hyper reads, in bytes (a larger one gets 431).
    pub max_header_bytes: usize,
    /// The most header fields in one request (more get 431).
    pub max_headers: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            max_connections: 4096,
            header_read_timeout: Duration::from_secs(60),
            body_read_timeout: Duration::from_secs(60),
            shutdown_grace: Duration::from_secs(30),
            max_header_bytes: 256 * 1024,
            max_headers: 100,
        }
    }
}

/// Serves `router` on `listener` (over TLS when `tls` is given) until `shutdown` completes, then
/// lets in-flight requests finish within the grace period.
pub(crate) async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    tls: Option<TlsAcceptor>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    // Refusals (503) are written by tasks of their own, a bounded number at once.
    let refusals = Arc::new(Semaphore::new(64));
    let graceful = GracefulShutdown::new();
    // HTTP/1.1 only: its header-read timer runs from the first byte a connection is waited on,
    // so a socket that sends nothing, or half a head, is closed in time. (An HTTP/1-or-2
    // builder first reads to tell the two apart, with no timeout: a silent socket kept its
    // slot for ever.)
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192))
        .max_headers(limits.max_headers);
    let service = TowerToHyperService::new(router);
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        // Reap finished connection tasks, so the set stays as large as what is open.
        while connections.try_join_next().is_some() {}
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: wait instead of spinning.
                    warn!(error = %error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            warn!(peer = %peer, limit = limits.max_connections, "connection refused: too many open connections");
            // Over TLS a 503 would need a handshake first: just close.
            if tls.is_none()
                && let Ok(permit) = refusals.clone().try_acquire_owned()
            {
                tokio::spawn(async move {
                    refuse_busy(stream).await;
                    drop(permit);
                });
            }
            continue;
        };
        let Some(acceptor) = &tls else {
            let io = TokioIo::new(OutcomeOnParseError::new(stream));
            let connection = graceful.watch(builder.serve_connection(io, service.clone()));
            connections.spawn(async move {
                if let Err(error) = connection.await {
                    debug!(peer = %peer, error = %error, "connection ended with an error");
                }
                drop(slot);
            });
            continue;
        };
        // The handshake runs in the connection's task, holding its slot; the watcher keeps
        // shutdown waiting for it (bounded by the timeout) like for a served connection.
        let handshake = tokio::time::timeout(limits.header_read_timeout, acceptor.accept(stream));
        let (builder, service, watcher) = (builder.clone(), service.clone(), graceful.watcher());
        connections.spawn(async move {
            let stream = match handshake.await {
                Ok(Ok(stream)) => stream,
                Ok(Err(error)) => {
                    debug!(peer = %peer, error = %error, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    debug!(peer = %peer, "TLS handshake timed out");
                    return;
                }
            };
            let io = TokioIo::new(OutcomeOnParseError::new(stream));
            if let Err(error) = watcher.watch(builder.serve_connection(io, service)).await {
                debug!(peer = %peer, error = %error, "connection ended with an error");
            }
            drop(slot);
        });
    }
    drop(listener);
    info!("stopped accepting connections; letting in-flight requests finish");
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(limits.shutdown_grace) => {
            warn!(
                seconds = limits.shutdown_grace.as_secs(),
                open = connections.len(),
                "requests still running after the shutdown grace period; closing their connections"
            );
            connections.abort_all();
        }
    }
    Ok(())
}

/// Answers a connection over the limit with 503 and closes it: the response, then the write
/// side shut, then what the client sent is read (at most 2 s) so that closing does not reset
/// the connection before the client has read the answer.
async fn refuse_busy(mut stream: TcpStream) {
    let response = outcome_http_response(
        503,
        "Service Unavailable",
        ErrorKind::Unavailable,
        "the server has too many open connections; retry later",
        &["retry-after: 1"],
    );
    let answer = async {
        stream.write_all(&response).await?;
        stream.shutdown().await?;
        let mut sink = [0u8; 4096];
        while stream.read(&mut sink).await? > 0 {}
        Ok::<(), io::Error>(())
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), answer).await;
}

/// A complete HTTP/1.1 response with an `OperationOutcome` body that closes the connection.
fn outcome_http_response(
    status: u16,
    reason: &str,
    kind: ErrorKind,
    message: &str,
    extra_headers: &[&str],
) -> Vec<u8> {
    let body = serde_json::to_vec(&OperationOutcome::single(Issue::error(kind, message)))
        .unwrap_or_else(|_| b"{\"resourceType\":\"OperationOutcome\"}".to_vec());
    let mut head = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: application/fhir+json\r\ncontent-length: {}\r\nconnection: close\r\n",
        body.len()
    );
    for header in extra_headers {
        head.push_str(header);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    let mut response = head.into_bytes();
    response.extend_from_slice(&body);
    response
}

/// If `buf` is exactly a response head that hyper wrote for a request it could not parse
/// (a 400, 414 or 431 with `content-length: 0` and nothing after the head), the response to
/// send instead.
fn replacement_for(buf: &[u8]) -> Option<Vec<u8>> {
    let head = buf.strip_prefix(b"HTTP/1.1 ")?;
    if !buf.ends_with(b"\r\n\r\n") || memchr::memmem::find(buf, b"\r\n\r\n")? + 4 != buf.len() {
        return None;
    }
    let status = head.get(..3)?;
    let lower = buf.to_ascii_lowercase();
    memchr::memmem::find(&lower, b"\r\ncontent-length: 0\r\n")?;
    let (status, reason, message) = match status {
        b"400" => (
            400,
            "Bad Request",
            "the request is not valid HTTP (a malformed request line, header or URI, such as a byte that may not appear in a URL, or a repeated Content-Length)",
        ),
        b"414" => (414, "URI Too Long", "the request URI is longer than this server reads"),
        b"431" => (
            431,
            "Request Header Fields Too Large",
            "the request headers are too large or too many for this server",
        ),
        _ => return None,
    };
    Some(outcome_http_response(status, reason, ErrorKind::Invalid, message, &[]))
}

/// A socket whose writes pass through, except hyper's empty-bodied parse-error responses,
/// which become `OperationOutcome`s (see the module docs).
#[derive(Debug)]
pub(crate) struct OutcomeOnParseError<S> {
    inner: S,
    /// A replacement response still to write, and how much of it is written.
    pending: Option<(Vec<u8>, usize)>,
}

impl<S> OutcomeOnParseError<S> {
    pub(crate) fn new(inner: S) -> Self {
        OutcomeOnParseError { inner, pending: None }
    }
}

impl<S: AsyncWrite + Unpin> OutcomeOnParseError<S> {
    /// Writes what is left of a replacement response.
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some((bytes, written)) = &mut self.pending {
            if *written >= bytes.len() {
                self.pending = None;
                break;
            }
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &bytes[*written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *written += n;
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for OutcomeOnParseError<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for OutcomeOnParseError<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        ready!(self.poll_pending(cx))?;
        if let Some(replacement) = replacement_for(buf) {
            self.pending = Some((replacement, 0));
            // Report the original bytes as written; the replacement goes out now or on flush.
            let _ = self.poll_pending(cx)?;
            return Poll::Ready(Ok(buf.len()));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let mut non_empty = bufs.iter().filter(|b| !b.is_empty());
        if let (Some(first), None) = (non_empty.next(), non_empty.next()) {
            return self.poll_write(cx, first);
        }
        ready!(self.poll_pending(cx))?;
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_pending(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_pending(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_empty_parse_error_heads_are_replaced() {
        let head = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\ndate: Mon, 07 Dec 2026 00:00:00 GMT\r\n\r\n";
        let replaced = replacement_for(head).expect("replaced");
        let text = String::from_utf8(replaced).unwrap();
        assert!(text.starts_with("HTTP/1.1 431 "), "{text}");
        assert!(text.contains("\"resourceType\":\"OperationOutcome\""), "{text}");
        let (head_part, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head_part.contains(&format!("content-length: {}", body.len())));
        // A head followed by a body, a 404 or a 2xx, or a body chunk are left alone.
        let with_body = [&head[..], b"{}"].concat();
        assert!(replacement_for(&with_body).is_none());
        assert!(replacement_for(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n").is_none());
        assert!(replacement_for(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").is_none());
        assert!(
            replacement_for(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 12\r\n\r\n").is_none()
        );
        assert!(replacement_for(b"{\"resourceType\":\"Patient\"}\n").is_none());
    }
}
