//! The HTTP adapter: `GET /metrics` (Prometheus), `GET /status` (JSON, docs/status.md) and
//! `GET /healthz`. A deliberately small HTTP/1.1 server (one request per connection, no
//! bodies): it serves monitoring systems on a trusted address, not the world.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::metrics::Exporter;
use crate::service::{Caller, Service};

/// Longest request head accepted.
const MAX_HEAD: usize = 16 << 10;
/// How long a client may take to send its request.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// A parsed request line and the headers we use.
#[derive(Debug, PartialEq, Eq)]
pub struct Request {
    /// GET or HEAD (others are refused).
    pub method: String,
    /// Path without the query.
    pub path: String,
    /// The Accept header.
    pub accept: String,
}

/// Parses a request head (up to the blank line).
pub fn parse_head(head: &str) -> Result<Request, &'static str> {
    let mut lines = head.split("\r\n");
    let first = lines.next().ok_or("empty request")?;
    let mut parts = first.split(' ');
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err("malformed request line");
    };
    if !version.starts_with("HTTP/1.") {
        return Err("unsupported HTTP version");
    }
    let path = target.split('?').next().unwrap_or("/").to_string();
    let mut accept = String::new();
    for l in lines {
        if let Some((k, v)) = l.split_once(':') {
            if k.trim().eq_ignore_ascii_case("accept") {
                accept = v.trim().to_string();
            }
        }
    }
    Ok(Request {
        method: method.to_string(),
        path,
        accept,
    })
}

/// Serves until the listener fails. `svc` answers; `exporter` renders /metrics.
pub async fn serve(listener: TcpListener, svc: Arc<Service>, exporter: Arc<Exporter>) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!("metrics accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let svc = Arc::clone(&svc);
        let exporter = Arc::clone(&exporter);
        tokio::spawn(async move {
            if let Err(e) = handle(stream, svc, exporter).await {
                tracing::debug!("metrics connection: {e}");
            }
        });
    }
}

async fn read_head(stream: &mut TcpStream) -> std::io::Result<Option<String>> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            return Ok(Some(String::from_utf8_lossy(&buf[..end]).into_owned()));
        }
        if buf.len() > MAX_HEAD {
            return Ok(None);
        }
    }
}

async fn handle(
    mut stream: TcpStream,
    svc: Arc<Service>,
    exporter: Arc<Exporter>,
) -> std::io::Result<()> {
    let head = match tokio::time::timeout(READ_TIMEOUT, read_head(&mut stream)).await {
        Ok(Ok(Some(h))) => h,
        Ok(Ok(None)) | Err(_) => {
            return respond(&mut stream, 400, "text/plain", b"bad request\n", false).await
        }
        Ok(Err(e)) => return Err(e),
    };
    let req = match parse_head(&head) {
        Ok(r) => r,
        Err(why) => {
            return respond(
                &mut stream,
                400,
                "text/plain",
                format!("{why}\n").as_bytes(),
                false,
            )
            .await
        }
    };
    let head_only = req.method == "HEAD";
    if req.method != "GET" && !head_only {
        return respond(
            &mut stream,
            405,
            "text/plain",
            b"only GET and HEAD\n",
            false,
        )
        .await;
    }
    match req.path.as_str() {
        "/metrics" => {
            let openmetrics = req.accept.contains("application/openmetrics-text");
            let t = std::time::Instant::now();
            let body = tokio::task::spawn_blocking(move || exporter.render(openmetrics))
                .await
                .unwrap_or_default();
            svc.metrics().api_call("http_metrics", t.elapsed(), None);
            let ctype = if openmetrics {
                "application/openmetrics-text; version=1.0.0; charset=utf-8"
            } else {
                "text/plain; version=0.0.4; charset=utf-8"
            };
            respond(&mut stream, 200, ctype, body.as_bytes(), head_only).await
        }
        "/status" => {
            // The HTTP endpoint has no caller identity: it serves the admin view, so it is
            // meant for loopback or a trusted network (see `[metrics] listen`).
            let s = Arc::clone(&svc);
            let body = tokio::task::spawn_blocking(move || {
                s.timed("http_status", |s| {
                    Ok(s.status_report(&Caller {
                        uid: 0,
                        gids: vec![0],
                    }))
                })
            })
            .await;
            match body {
                Ok(Ok(report)) => {
                    let mut json = serde_json::to_vec_pretty(&report).unwrap_or_default();
                    json.push(b'\n');
                    respond(&mut stream, 200, "application/json", &json, head_only).await
                }
                _ => {
                    respond(
                        &mut stream,
                        500,
                        "text/plain",
                        b"internal error\n",
                        head_only,
                    )
                    .await
                }
            }
        }
        "/healthz" => respond(&mut stream, 200, "text/plain", b"ok\n", head_only).await,
        "/" => {
            let body = b"dmsd: see /metrics, /status, /healthz\n";
            respond(&mut stream, 200, "text/plain", body, head_only).await
        }
        _ => respond(&mut stream, 404, "text/plain", b"not found\n", head_only).await,
    }
}

async fn respond(
    stream: &mut TcpStream,
    code: u16,
    ctype: &str,
    body: &[u8],
    head_only: bool,
) -> std::io::Result<()> {
    let reason = match code {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Internal Server Error",
    };
    let head = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    if !head_only {
        stream.write_all(body).await?;
    }
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_heads() {
        let r = parse_head("GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\nAccept: application/openmetrics-text;version=1.0.0,text/plain;q=0.5").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.method, "GET");
        assert_eq!(r.path, "/metrics");
        assert!(r.accept.starts_with("application/openmetrics-text"));
        assert!(parse_head("GET /metrics").is_err());
        assert!(parse_head("GET / SPDY/3").is_err());
        assert!(parse_head("").is_err());
    }
}
