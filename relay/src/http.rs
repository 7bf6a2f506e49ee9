//! A tiny blocking HTTP/1.0 server for `GET /metrics` (Prometheus text) and
//! `GET /health`, on its own thread.
//!
//! It serves one connection at a time and bounds each request (8 KiB, 2 s in
//! total), so a slow or hostile client delays scrapes by at most 2 s and can't
//! exhaust anything. It sees only the counters, never the router.

use std::io::{self, Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use lanrage_relay_core::metrics::Metrics;

/// Largest request (line plus headers) read; anything longer gets 431.
pub const MAX_REQUEST_BYTES: usize = 8 * 1024;
/// Total time a client gets to send its request and read the answer.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// Binds the metrics listener. Separate from [`spawn`] so startup fails
/// before the relay announces readiness.
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    TcpListener::bind(addr)
}

/// Serves `listener` on a new thread for the life of the process.
pub fn spawn(listener: TcpListener, metrics: Arc<Metrics>) -> io::Result<thread::JoinHandle<()>> {
    thread::Builder::new()
        .name("metrics-http".to_owned())
        .spawn(move || serve(&listener, &metrics, REQUEST_TIMEOUT))
}

fn serve(listener: &TcpListener, metrics: &Metrics, timeout: Duration) {
    loop {
        match listener.accept() {
            Ok((stream, peer)) => {
                if let Err(e) = handle_connection(stream, metrics, timeout) {
                    tracing::debug!(%peer, error = %e, "metrics request failed");
                }
            }
            // A signal is not a failure (io_uring task work can interrupt
            // any thread of the process); accept again.
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                // EMFILE and friends: back off instead of spinning on accept.
                tracing::warn!(error = %e, "metrics listener accept failed");
                thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

fn handle_connection(
    mut stream: TcpStream,
    metrics: &Metrics,
    timeout: Duration,
) -> io::Result<()> {
    let deadline = Instant::now() + timeout;
    stream.set_write_timeout(Some(timeout))?;
    let response = match read_request(&mut stream, deadline)? {
        Some(head) => respond(&head, metrics),
        None => Response::error(431, "Request Header Fields Too Large"),
    };
    stream.write_all(&response.into_bytes())?;
    stream.flush()
}

/// Reads until the blank line that ends the headers. `Ok(None)` if the request
/// exceeds [`MAX_REQUEST_BYTES`]. The deadline covers all reads together, so
/// trickling one byte at a time doesn't extend it.
fn read_request(stream: &mut TcpStream, deadline: Instant) -> io::Result<Option<String>> {
    let mut buf = vec![0u8; MAX_REQUEST_BYTES];
    let mut len = 0;
    loop {
        if let Some(end) = header_end(&buf[..len]) {
            return Ok(Some(String::from_utf8_lossy(&buf[..end]).into_owned()));
        }
        if len == buf.len() {
            return Ok(None);
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "request not complete in time",
            ));
        }
        stream.set_read_timeout(Some(remaining))?;
        match stream.read(&mut buf[len..]) {
            // EOF before the blank line: HTTP/0.9-style or truncated; answer what we have.
            Ok(0) => return Ok(Some(String::from_utf8_lossy(&buf[..len]).into_owned())),
            Ok(n) => len += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

fn header_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4)
        .position(|w| w == b"\r\n\r\n")
        .or_else(|| buf.windows(2).position(|w| w == b"\n\n"))
}

struct Response {
    status: u16,
    reason: &'static str,
    content_type: &'static str,
    body: String,
    head_only: bool,
}

impl Response {
    fn ok(content_type: &'static str, body: String) -> Self {
        Self {
            status: 200,
            reason: "OK",
            content_type,
            body,
            head_only: false,
        }
    }

    fn error(status: u16, reason: &'static str) -> Self {
        Self {
            status,
            reason,
            content_type: "text/plain; charset=utf-8",
            body: format!("{reason}\n"),
            head_only: false,
        }
    }

    fn into_bytes(self) -> Vec<u8> {
        let mut out = format!(
            "HTTP/1.0 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n",
            self.status,
            self.reason,
            self.content_type,
            self.body.len()
        );
        if self.status == 405 {
            out.push_str("Allow: GET, HEAD\r\n");
        }
        out.push_str("\r\n");
        if !self.head_only {
            out.push_str(&self.body);
        }
        out.into_bytes()
    }
}

fn respond(head: &str, metrics: &Metrics) -> Response {
    let request_line = head.lines().next().unwrap_or_default();
    let mut parts = request_line.split_ascii_whitespace();
    let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
        return Response::error(400, "Bad Request");
    };
    let head_only = match method {
        "GET" => false,
        "HEAD" => true,
        _ => return Response::error(405, "Method Not Allowed"),
    };
    // Scrapers may add query parameters; they select nothing here.
    let path = target.split('?').next().unwrap_or_default();
    let mut response = match path {
        "/metrics" => Response::ok("text/plain; version=0.0.4", metrics.render_prometheus()),
        "/health" => Response::ok("text/plain; charset=utf-8", "ok\n".to_owned()),
        _ => Response::error(404, "Not Found"),
    };
    response.head_only = head_only;
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use lanrage_relay_core::metrics::Event;

    fn start(timeout: Duration) -> (SocketAddr, Arc<Metrics>) {
        let listener = bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
        let addr = listener.local_addr().expect("addr");
        let metrics = Arc::new(Metrics::default());
        let shared = Arc::clone(&metrics);
        thread::spawn(move || serve(&listener, &shared, timeout));
        (addr, metrics)
    }

    fn request(addr: SocketAddr, raw: &[u8]) -> String {
        let mut stream = TcpStream::connect(addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        // The server may close early (431) while we are still writing.
        let _ = stream.write_all(raw);
        let mut out = String::new();
        let _ = stream.read_to_string(&mut out);
        out
    }

    #[test]
    fn serves_metrics_health_and_404() {
        let (addr, metrics) = start(REQUEST_TIMEOUT);
        metrics.record(Event::ForwardedTransport);
        let text = request(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(text.starts_with("HTTP/1.0 200 OK\r\n"), "{text}");
        assert!(
            text.contains("Content-Type: text/plain; version=0.0.4\r\n"),
            "{text}"
        );
        assert!(
            text.contains("lanrage_relay_forwarded_total{kind=\"transport\"} 1\n"),
            "{text}"
        );

        let text = request(addr, b"GET /health HTTP/1.0\r\n\r\n");
        assert!(
            text.starts_with("HTTP/1.0 200 OK\r\n") && text.ends_with("\r\n\r\nok\n"),
            "{text}"
        );
        let text = request(addr, b"GET /metrics?x=1 HTTP/1.0\n\n");
        assert!(text.starts_with("HTTP/1.0 200 OK\r\n"), "{text}");
        let text = request(addr, b"HEAD /health HTTP/1.0\r\n\r\n");
        assert!(
            text.starts_with("HTTP/1.0 200 OK\r\n") && text.ends_with("\r\n\r\n"),
            "{text}"
        );
        let text = request(addr, b"GET / HTTP/1.0\r\n\r\n");
        assert!(text.starts_with("HTTP/1.0 404 Not Found\r\n"), "{text}");
        let text = request(addr, b"POST /metrics HTTP/1.0\r\n\r\n");
        assert!(text.starts_with("HTTP/1.0 405 "), "{text}");
        let text = request(addr, b"\r\n\r\n");
        assert!(text.starts_with("HTTP/1.0 400 "), "{text}");
    }

    #[test]
    fn oversized_request_is_refused() {
        let (addr, _) = start(REQUEST_TIMEOUT);
        let mut raw = b"GET /metrics HTTP/1.0\r\nX: ".to_vec();
        raw.resize(MAX_REQUEST_BYTES + 10, b'a');
        let text = request(addr, &raw);
        assert!(text.starts_with("HTTP/1.0 431 "), "{text}");
    }

    #[test]
    fn silent_client_does_not_block_the_next_one() {
        let (addr, _) = start(Duration::from_millis(100));
        let silent = TcpStream::connect(addr).expect("connect");
        let text = request(addr, b"GET /health HTTP/1.0\r\n\r\n");
        assert!(text.starts_with("HTTP/1.0 200 OK\r\n"), "{text}");
        drop(silent);
    }
}
