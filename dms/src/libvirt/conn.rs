//! One libvirt connection per URI, owned by a worker thread. Every call is a closure run on
//! that thread; the caller waits at most the call's timeout, so a hung libvirtd never blocks
//! the daemon. A worker whose call timed out is abandoned (it ends when libvirtd answers or
//! dies) and the next call starts a fresh worker and connection. A lost connection is
//! reopened on the next call, with exponential backoff while libvirtd stays away.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use virt::connect::Connect;

/// A libvirt call failure.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LvError {
    /// libvirt answered with an error.
    #[error("libvirt ({uri}): {what}: {message}")]
    Call {
        /// The connection.
        uri: String,
        /// What was being done.
        what: String,
        /// libvirt's message.
        message: String,
    },
    /// libvirtd did not answer in time.
    #[error("libvirtd ({uri}) did not answer {what} within {secs:.1} s; the call was abandoned")]
    Timeout {
        /// The connection.
        uri: String,
        /// What was being done.
        what: String,
        /// The limit.
        secs: f64,
    },
    /// libvirtd hung on an earlier call; this one was not attempted.
    #[error("libvirtd ({uri}) did not answer an earlier call; {what} was not attempted (next attempt in {retry_secs:.1} s)")]
    Stalled {
        /// The connection.
        uri: String,
        /// What was to be done.
        what: String,
        /// When calls are tried again.
        retry_secs: f64,
    },
    /// No connection could be opened.
    #[error("cannot connect to libvirtd ({uri}): {message}")]
    Unreachable {
        /// The connection.
        uri: String,
        /// Why.
        message: String,
    },
}

/// What a call's closure gets: the open connection.
pub struct Link<'a> {
    conn: &'a Connect,
    uri: &'a str,
}

impl std::fmt::Debug for Link<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link").field("uri", &self.uri).finish()
    }
}

impl Link<'_> {
    /// The connection.
    pub fn conn(&self) -> &Connect {
        self.conn
    }

    /// Wraps a libvirt error with what was being done.
    pub fn err(&self, what: impl Into<String>, e: virt::error::Error) -> LvError {
        LvError::Call {
            uri: self.uri.to_string(),
            what: what.into(),
            message: e.message().to_string(),
        }
    }
}

type Job = Box<dyn FnOnce(Result<Link<'_>, LvError>) + Send>;

struct Worker {
    tx: mpsc::Sender<Job>,
}

/// A connection to one URI.
pub struct Conn {
    uri: String,
    timeout: Duration,
    worker: Mutex<Option<Worker>>,
    /// After a timeout, calls fail at once until then: a hung libvirtd costs one abandoned
    /// thread per window instead of one per call.
    stalled_until: Mutex<Option<Instant>>,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn").field("uri", &self.uri).finish()
    }
}

impl Conn {
    /// A connection to `uri` (opened lazily, on the first call).
    pub fn new(uri: &str, timeout: Duration) -> Conn {
        Conn {
            uri: uri.to_string(),
            timeout,
            worker: Mutex::new(None),
            stalled_until: Mutex::new(None),
        }
    }

    /// Runs `f` with the connection within the normal timeout.
    pub fn call<T: Send + 'static>(
        &self,
        what: &str,
        f: impl FnOnce(&Link<'_>) -> Result<T, LvError> + Send + 'static,
    ) -> Result<T, LvError> {
        self.call_within(what, self.timeout, f)
    }

    /// Runs `f` with the connection, waiting at most `limit`.
    pub fn call_within<T: Send + 'static>(
        &self,
        what: &str,
        limit: Duration,
        f: impl FnOnce(&Link<'_>) -> Result<T, LvError> + Send + 'static,
    ) -> Result<T, LvError> {
        if let Some(until) = *self.stalled_until.lock() {
            let left = until.saturating_duration_since(Instant::now());
            if !left.is_zero() {
                return Err(LvError::Stalled {
                    uri: self.uri.clone(),
                    what: what.to_string(),
                    retry_secs: left.as_secs_f64(),
                });
            }
        }
        let (tx, rx) = mpsc::channel();
        let job: Job = Box::new(move |link| {
            let r = match link {
                Ok(l) => {
                    // A panic in libvirt glue (the virt crate panics when freeing fails) must
                    // not take the worker's caller down with it.
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&l))).unwrap_or_else(
                        |_| {
                            Err(LvError::Call {
                                uri: l.uri.to_string(),
                                what: "libvirt call".into(),
                                message: "panicked in the libvirt bindings".into(),
                            })
                        },
                    )
                }
                Err(e) => Err(e),
            };
            let _ = tx.send(r);
        });
        {
            let mut w = self.worker.lock();
            if w.is_none() {
                *w = Some(self.start_worker());
            }
            let sent = w.as_ref().map(|w| w.tx.send(job));
            if !matches!(sent, Some(Ok(()))) {
                *w = None;
                return Err(LvError::Unreachable {
                    uri: self.uri.clone(),
                    message: "the connection worker ended; retrying on the next call".into(),
                });
            }
        }
        match rx.recv_timeout(limit) {
            Ok(r) => {
                *self.stalled_until.lock() = None;
                r
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                // Abandon the stuck worker: later calls get a fresh one instead of queueing
                // behind it, after a pause so a hung libvirtd does not pile up threads.
                *self.worker.lock() = None;
                *self.stalled_until.lock() =
                    Some(Instant::now() + self.timeout.max(Duration::from_secs(5)));
                tracing::warn!(uri = %self.uri, what, "libvirt call timed out; abandoning its connection");
                Err(LvError::Timeout {
                    uri: self.uri.clone(),
                    what: what.to_string(),
                    secs: limit.as_secs_f64(),
                })
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                *self.worker.lock() = None;
                Err(LvError::Unreachable {
                    uri: self.uri.clone(),
                    message: "the connection worker died".into(),
                })
            }
        }
    }

    fn start_worker(&self) -> Worker {
        let (tx, rx) = mpsc::channel::<Job>();
        let uri = self.uri.clone();
        let spawned = std::thread::Builder::new()
            .name("libvirt-conn".into())
            .spawn(move || worker_loop(&uri, &rx));
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start a libvirt connection thread");
        }
        Worker { tx }
    }
}

fn worker_loop(uri: &str, rx: &mpsc::Receiver<Job>) {
    let mut conn: Option<Connect> = None;
    let mut backoff = Duration::from_millis(100);
    let mut retry_at = Instant::now();
    let mut last_error = String::new();
    while let Ok(job) = rx.recv() {
        if conn.is_none() {
            if Instant::now() < retry_at {
                job(Err(LvError::Unreachable {
                    uri: uri.to_string(),
                    message: format!(
                        "{last_error} (next attempt in {:.1} s)",
                        retry_at
                            .saturating_duration_since(Instant::now())
                            .as_secs_f64()
                    ),
                }));
                continue;
            }
            match Connect::open(Some(uri)) {
                Ok(c) => {
                    tracing::info!(uri, "connected to libvirtd");
                    conn = Some(c);
                    backoff = Duration::from_millis(100);
                }
                Err(e) => {
                    last_error = e.message().to_string();
                    retry_at = Instant::now() + backoff;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    job(Err(LvError::Unreachable {
                        uri: uri.to_string(),
                        message: last_error.clone(),
                    }));
                    continue;
                }
            }
        }
        let Some(c) = conn.as_ref() else { continue };
        job(Ok(Link { conn: c, uri }));
        // After any failure the connection may be dead (libvirtd restarted): check cheaply.
        if !c.is_alive().unwrap_or(false) {
            tracing::warn!(
                uri,
                "libvirt connection lost; reconnecting on the next call"
            );
            if let Some(mut c) = conn.take() {
                let _ = c.close();
            }
        }
    }
    if let Some(mut c) = conn.take() {
        let _ = c.close();
    }
}
