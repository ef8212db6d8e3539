//! The admin port: `/metrics` (Prometheus text), `/livez`, `/readyz`. A small
//! HTTP/1.1 responder on purpose: three GET routes need no web framework.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::leader::Leadership;
use crate::metrics::Metrics;

/// A watch that has failed without a single success for this long is taken
/// as dead: kube's watcher retries forever (every 5 s at most here), so only a
/// restart can change anything (new connection, new credentials, or at least a
/// restart count someone sees).
pub const WATCH_DEAD_AFTER: Duration = Duration::from_secs(5 * 60);

/// A failing watch that has reported no error for this long has reconnected:
/// a re-established watch on a quiet cluster sends no event to say so.
pub const WATCH_ERRORS_STOPPED_AFTER: Duration = Duration::from_secs(2 * 60);

/// What the health endpoints report.
#[derive(Default)]
pub struct Health {
    /// The controller's caches have listed everything once.
    pub synced: AtomicBool,
    /// Set when this replica waits for the lease (and runs no controller).
    pub standby: AtomicBool,
    /// Why the controller cannot recover, once it cannot.
    failed: Mutex<Option<String>>,
    /// Watches that are failing now, by name.
    watches: Mutex<BTreeMap<&'static str, FailingWatch>>,
    /// Why no CA can be used right now (`None`: a CA is loaded).
    ca_problem: Mutex<Option<String>>,
}

struct FailingWatch {
    since: Instant,
    last_error: Instant,
}

impl Health {
    pub fn set_ca_problem(&self, problem: Option<String>) {
        *self.ca_problem.lock().unwrap() = problem;
    }

    pub fn ca_problem(&self) -> Option<String> {
        self.ca_problem.lock().unwrap().clone()
    }

    /// Marks the process dead beyond recovery; `/livez` fails from now on
    /// with `why` (the first reason is kept). `why` must hold no secret.
    pub fn fail(&self, why: impl Into<String>) {
        self.failed
            .lock()
            .unwrap()
            .get_or_insert_with(|| why.into());
    }

    /// Records one item of a watch stream: an event or (re)list is a success,
    /// an error a failure.
    pub fn watch_result<T, E>(&self, watch: &'static str, item: &Result<T, E>) {
        match item {
            Ok(_) => self.watch_ok(watch),
            Err(_) => self.watch_error_at(watch, Instant::now()),
        }
    }

    pub fn watch_ok(&self, watch: &'static str) {
        self.watches.lock().unwrap().remove(watch);
    }

    pub fn watch_error_at(&self, watch: &'static str, now: Instant) {
        let mut watches = self.watches.lock().unwrap();
        let w = watches.entry(watch).or_insert(FailingWatch {
            since: now,
            last_error: now,
        });
        if now.saturating_duration_since(w.last_error) > WATCH_ERRORS_STOPPED_AFTER {
            w.since = now;
        }
        w.last_error = now;
    }

    /// Whether the process is alive at `now`; if not, why (no error text from
    /// the API: the log has it).
    pub fn liveness(&self, now: Instant) -> Result<(), String> {
        if let Some(why) = self.failed.lock().unwrap().as_ref() {
            return Err(why.clone());
        }
        for (name, w) in self.watches.lock().unwrap().iter() {
            let failing = now.saturating_duration_since(w.since);
            if now.saturating_duration_since(w.last_error) <= WATCH_ERRORS_STOPPED_AFTER
                && failing >= WATCH_DEAD_AFTER
            {
                return Err(format!(
                    "the {name} watch has failed without a success for {} s; the operator log has the errors",
                    failing.as_secs()
                ));
            }
        }
        Ok(())
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
        "/livez" => match health.liveness(Instant::now()) {
            Ok(()) => response("200 OK", "text/plain", "ok\n"),
            Err(why) => response(
                "503 Service Unavailable",
                "text/plain",
                &format!("not live: {why}\n"),
            ),
        },
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

    #[test]
    fn livez_fails_with_the_reason_once_the_controller_is_marked_failed() {
        let (m, h, l) = (Metrics::new(), Health::default(), Leadership::always());
        assert!(route("/livez", &m, &h, &l).starts_with("HTTP/1.1 200"));
        h.fail("the controller loop ended without a shutdown signal");
        h.fail("a later reason");
        let reply = route("/livez", &m, &h, &l);
        assert!(reply.starts_with("HTTP/1.1 503"), "{reply}");
        assert!(
            reply.ends_with("not live: the controller loop ended without a shutdown signal\n"),
            "{reply}"
        );
    }

    #[test]
    fn a_watch_failing_without_a_success_for_five_minutes_makes_livez_fail() {
        let h = Health::default();
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        // Errors every 5 s (the watch back-off cap) for just under 5 minutes: alive.
        for s in (0..300).step_by(5) {
            h.watch_error_at("Secret", at(s));
        }
        assert_eq!(h.liveness(at(299)), Ok(()));
        h.watch_error_at("Secret", at(300));
        let why = h.liveness(at(300)).unwrap_err();
        assert_eq!(
            why,
            "the Secret watch has failed without a success for 300 s; the operator log has the errors"
        );
        // One event or re-list brings it back.
        h.watch_ok("Secret");
        assert_eq!(h.liveness(at(301)), Ok(()));
    }

    #[test]
    fn a_watch_that_recovered_or_failed_only_now_and_then_keeps_livez_ok() {
        let h = Health::default();
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        // An error, then a quiet reconnect: no events on a quiet cluster.
        h.watch_error_at("CertificateRequest", at(0));
        assert_eq!(h.liveness(at(600)), Ok(()));
        // Occasional errors further apart than two minutes never add up.
        for s in (0..3600).step_by(180) {
            h.watch_error_at("CertificateRequest", at(s));
            assert_eq!(h.liveness(at(s)), Ok(()));
        }
        // A success on one watch does not hide another that is dead.
        for s in (0..=300).step_by(5) {
            h.watch_error_at("Secret", at(s));
        }
        h.watch_ok("CertificateRequest");
        assert!(h.liveness(at(300)).is_err());
    }
}
