//! The admin port: `/metrics` (Prometheus text), `/livez`, `/readyz`. A small
//! HTTP/1.1 responder on purpose: three GET routes need no web framework.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::leader::Leadership;
use crate::metrics::Metrics;

/// What the health endpoints report.
#[derive(Default)]
pub struct Health {
    /// The controller's caches have listed everything once.
    pub synced: AtomicBool,
    /// Set when this replica waits for the lease (and runs no controller).
    pub standby: AtomicBool,
    /// Set when the controller loop has ended unexpectedly.
    pub failed: AtomicBool,
    /// Why no CA can be used right now (`None`: a CA is loaded).
    ca_problem: std::sync::Mutex<Option<String>>,
}

impl Health {
    pub fn set_ca_problem(&self, problem: Option<String>) {
        *self.ca_problem.lock().unwrap() = problem;
    }

    pub fn ca_problem(&self) -> Option<String> {
        self.ca_problem.lock().unwrap().clone()
    }
}

fn response(status: &str, content_type: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// Answers one request line.
pub fn route(path: &str, metrics: &Metrics, health: &Health, leadership: &Leadership) -> String {
    match path {
        "/metrics" => {
            metrics.leader.set(i64::from(
                leadership.is_leader() && !health.standby.load(Ordering::Relaxed),
            ));
            response(
                "200 OK",
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                &metrics.encode(),
            )
        }
        "/livez" if health.failed.load(Ordering::Relaxed) => response(
            "503 Service Unavailable",
            "text/plain",
            "controller stopped\n",
        ),
        "/livez" => response("200 OK", "text/plain", "ok\n"),
        "/readyz" if health.standby.load(Ordering::Relaxed) => response(
            "200 OK",
            "text/plain",
            "ok: standby, waiting for the leader lease\n",
        ),
        "/readyz" if health.ca_problem().is_some() => response(
            "503 Service Unavailable",
            "text/plain",
            &format!(
                "not ready: no usable CA: {}\n",
                health.ca_problem().unwrap_or_default()
            ),
        ),
        "/readyz" if health.synced.load(Ordering::Relaxed) && leadership.is_leader() => {
            response("200 OK", "text/plain", "ok: leader, caches synced\n")
        }
        "/readyz" if !leadership.is_leader() => response(
            "503 Service Unavailable",
            "text/plain",
            "not ready: the leader lease was lost\n",
        ),
        "/readyz" => response(
            "503 Service Unavailable",
            "text/plain",
            "not ready: caches are syncing\n",
        ),
        _ => response(
            "404 Not Found",
            "text/plain",
            "not found: try /metrics, /livez or /readyz\n",
        ),
    }
}

/// Serves the admin endpoints until the process ends.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    leadership: Leadership,
) -> std::io::Result<()> {
    let addr: SocketAddr = listener.local_addr()?;
    tracing::info!(%addr, "admin endpoints listening (/metrics, /livez, /readyz)");
    loop {
        let (mut stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(error = %e, "admin accept failed");
                continue;
            }
        };
        let (metrics, health, leadership) = (metrics.clone(), health.clone(), leadership.clone());
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let mut len = 0;
            let read = tokio::time::timeout(std::time::Duration::from_secs(5), async {
                while len < buf.len() {
                    let n = stream.read(&mut buf[len..]).await?;
                    if n == 0 {
                        break;
                    }
                    len += n;
                    if buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
                Ok::<_, std::io::Error>(())
            })
            .await;
            if !matches!(read, Ok(Ok(()))) {
                return;
            }
            let head = String::from_utf8_lossy(&buf[..len]);
            let mut parts = head.split_whitespace();
            let reply = match (parts.next(), parts.next()) {
                (Some("GET"), Some(path)) => route(
                    path.split('?').next().unwrap_or(path),
                    &metrics,
                    &health,
                    &leadership,
                ),
                _ => response(
                    "405 Method Not Allowed",
                    "text/plain",
                    "only GET is served\n",
                ),
            };
            let _ = stream.write_all(reply.as_bytes()).await;
            let _ = stream.shutdown().await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_follows_cache_sync_and_standby() {
        let (m, h, l) = (Metrics::new(), Health::default(), Leadership::always());
        assert!(route("/readyz", &m, &h, &l).starts_with("HTTP/1.1 503"));
        h.synced.store(true, Ordering::Relaxed);
        assert!(route("/readyz", &m, &h, &l).starts_with("HTTP/1.1 200"));
        assert!(route("/livez", &m, &h, &l).starts_with("HTTP/1.1 200"));
        h.failed.store(true, Ordering::Relaxed);
        assert!(route("/livez", &m, &h, &l).starts_with("HTTP/1.1 503"));
        assert!(route("/metrics", &m, &h, &l).contains("p12_leader 1"));
        assert!(route("/nope", &m, &h, &l).starts_with("HTTP/1.1 404"));
    }

    #[test]
    fn not_ready_while_no_ca_is_usable() {
        let (m, h, l) = (Metrics::new(), Health::default(), Leadership::always());
        h.synced.store(true, Ordering::Relaxed);
        h.set_ca_problem(Some(
            "failed to read Secret p12/ca: connection refused".into(),
        ));
        let r = route("/readyz", &m, &h, &l);
        assert!(r.starts_with("HTTP/1.1 503"), "{r}");
        assert!(
            r.contains("no usable CA: failed to read Secret p12/ca"),
            "{r}"
        );
        h.set_ca_problem(None);
        assert!(route("/readyz", &m, &h, &l).starts_with("HTTP/1.1 200"));
    }
}
