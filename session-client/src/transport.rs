//! One request/answer exchange with dmsd over its Unix stream socket, within one deadline.
//!
//! Non-blocking socket plus `poll(2)`: no thread, no signal (`MSG_NOSIGNAL`, so a peer that
//! goes away never raises SIGPIPE in the host), and the fd is an [`OwnedFd`], closed on every
//! return path.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Longest answer line accepted (without its newline).
pub const MAX_ANSWER: usize = 1 << 20;
/// Longest request line dmsd accepts (with its newline).
pub const MAX_REQUEST: usize = 256 << 10;

/// Why an exchange with dmsd failed.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// Nothing listens on the socket (no socket file, or nobody accepting).
    #[error("dmsd is not running (cannot connect to {}: {source})", socket.display())]
    NotRunning {
        /// The socket path.
        socket: PathBuf,
        /// `ENOENT` or `ECONNREFUSED`.
        #[source]
        source: io::Error,
    },
    /// Another failure of a step (socket, connect, send, receive).
    #[error("{op} {}: {source}", socket.display())]
    Io {
        /// The step, e.g. "cannot connect to".
        op: &'static str,
        /// The socket path.
        socket: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The deadline passed.
    #[error("dmsd did not answer within {} s", timeout.as_secs_f64())]
    Timeout {
        /// The whole call's time limit.
        timeout: Duration,
    },
    /// dmsd closed the connection before a complete answer line.
    #[error("dmsd closed the connection on {} without answering{}", socket.display(),
        if *received == 0 { String::new() } else { format!(" (after {received} bytes without a newline)") })]
    Closed {
        /// The socket path.
        socket: PathBuf,
        /// Bytes received before the end.
        received: usize,
    },
    /// The answer line is longer than [`MAX_ANSWER`].
    #[error("dmsd's answer on {} is longer than {} bytes", socket.display(), MAX_ANSWER)]
    TooLong {
        /// The socket path.
        socket: PathBuf,
    },
    /// The request is longer than [`MAX_REQUEST`].
    #[error("the request is {len} bytes, more than dmsd accepts ({MAX_REQUEST})")]
    RequestTooLong {
        /// Its length.
        len: usize,
    },
}

/// Sends `request` (one line, without the newline) to the socket and returns the answer line
/// (without its newline). The whole exchange, connect included, ends within `timeout`.
pub fn call(socket: &Path, timeout: Duration, request: &[u8]) -> Result<Vec<u8>, TransportError> {
    let deadline = Instant::now() + timeout;
    let mut line = Vec::with_capacity(request.len() + 1);
    line.extend_from_slice(request);
    line.push(b'\n');
    if line.len() > MAX_REQUEST {
        return Err(TransportError::RequestTooLong { len: line.len() });
    }
    let io_err = |op: &'static str, source: io::Error| TransportError::Io {
        op,
        socket: socket.to_path_buf(),
        source,
    };
    let timed_out = || TransportError::Timeout { timeout };

    let fd = connect(socket, deadline, timeout)?;

    let mut sent = 0;
    while sent < line.len() {
        // SAFETY: send on a valid fd from a live buffer slice of the given length.
        let n = unsafe {
            libc::send(
                fd.as_raw_fd(),
                line[sent..].as_ptr().cast(),
                line.len() - sent,
                libc::MSG_NOSIGNAL,
            )
        };
        if n >= 0 {
            sent += n as usize;
            continue;
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => {}
            Some(libc::EAGAIN) => {
                if !wait(&fd, libc::POLLOUT, deadline).map_err(|e| io_err("cannot send to", e))? {
                    return Err(timed_out());
                }
            }
            _ => return Err(io_err("cannot send the request to", e)),
        }
    }

    let mut answer: Vec<u8> = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        // SAFETY: recv into a live stack buffer of the given length.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n > 0 {
            let chunk = &buf[..n as usize];
            if let Some(i) = chunk.iter().position(|&b| b == b'\n') {
                if answer.len() + i > MAX_ANSWER {
                    return Err(TransportError::TooLong {
                        socket: socket.to_path_buf(),
                    });
                }
                answer.extend_from_slice(&chunk[..i]);
                return Ok(answer);
            }
            if answer.len() + chunk.len() > MAX_ANSWER {
                return Err(TransportError::TooLong {
                    socket: socket.to_path_buf(),
                });
            }
            answer.extend_from_slice(chunk);
            continue;
        }
        if n == 0 {
            return Err(TransportError::Closed {
                socket: socket.to_path_buf(),
                received: answer.len(),
            });
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => {}
            Some(libc::EAGAIN) => {
                if !wait(&fd, libc::POLLIN, deadline)
                    .map_err(|e| io_err("cannot receive from", e))?
                {
                    return Err(timed_out());
                }
            }
            _ => return Err(io_err("cannot receive the answer from", e)),
        }
    }
}

/// A connected, non-blocking, close-on-exec socket.
fn connect(socket: &Path, deadline: Instant, timeout: Duration) -> Result<OwnedFd, TransportError> {
    let io_err = |op: &'static str, source: io::Error| TransportError::Io {
        op,
        socket: socket.to_path_buf(),
        source,
    };
    let (addr, len) = sockaddr(socket).map_err(|e| io_err("cannot connect to", e))?;
    // SAFETY: socket(2) with constant arguments.
    let raw = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            0,
        )
    };
    if raw < 0 {
        return Err(io_err(
            "cannot create a socket for",
            io::Error::last_os_error(),
        ));
    }
    // SAFETY: the kernel returned a new fd that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    loop {
        // SAFETY: connect with a fully initialized sockaddr_un and its used length.
        let r = unsafe {
            libc::connect(
                fd.as_raw_fd(),
                std::ptr::from_ref(&addr).cast::<libc::sockaddr>(),
                len,
            )
        };
        if r == 0 {
            return Ok(fd);
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::ENOENT | libc::ECONNREFUSED) => {
                return Err(TransportError::NotRunning {
                    socket: socket.to_path_buf(),
                    source: e,
                })
            }
            // The connection completes asynchronously: wait until writable, then ask.
            Some(libc::EINPROGRESS | libc::EINTR) => {
                if !wait(&fd, libc::POLLOUT, deadline)
                    .map_err(|e| io_err("cannot connect to", e))?
                {
                    return Err(TransportError::Timeout { timeout });
                }
                match so_error(&fd).map_err(|e| io_err("cannot connect to", e))? {
                    0 => return Ok(fd),
                    libc::ENOENT | libc::ECONNREFUSED => {
                        return Err(TransportError::NotRunning {
                            socket: socket.to_path_buf(),
                            source: io::Error::from_raw_os_error(libc::ECONNREFUSED),
                        })
                    }
                    err => {
                        return Err(io_err(
                            "cannot connect to",
                            io::Error::from_raw_os_error(err),
                        ))
                    }
                }
            }
            // A Unix socket's backlog is full: no connection is pending, so try again
            // shortly (polling an unconnected Unix socket returns at once).
            Some(libc::EAGAIN) => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(TransportError::Timeout { timeout });
                }
                std::thread::sleep(left.min(Duration::from_millis(5)));
            }
            _ => return Err(io_err("cannot connect to", e)),
        }
    }
}

fn sockaddr(path: &Path) -> io::Result<(libc::sockaddr_un, libc::socklen_t)> {
    let bytes = path.as_os_str().as_encoded_bytes();
    // SAFETY: sockaddr_un is plain data; all-zero is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.is_empty() || bytes.contains(&0) || bytes.len() >= addr.sun_path.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "not a usable Unix socket path (1 to {} bytes, no NUL)",
                addr.sun_path.len() - 1
            ),
        ));
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    let len = std::mem::offset_of!(libc::sockaddr_un, sun_path) + bytes.len() + 1;
    Ok((addr, len as libc::socklen_t))
}

/// Waits until `fd` has `events` or the deadline passes (`Ok(false)`).
fn wait(fd: &OwnedFd, events: libc::c_short, deadline: Instant) -> io::Result<bool> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(false);
        }
        let ms = left.as_nanos().div_ceil(1_000_000).min(i32::MAX as u128) as libc::c_int;
        let mut p = libc::pollfd {
            fd: fd.as_raw_fd(),
            events,
            revents: 0,
        };
        // SAFETY: poll on one pollfd that lives on this stack frame.
        let r = unsafe { libc::poll(&mut p, 1, ms) };
        if r > 0 {
            // POLLHUP/POLLERR count as ready too: the next call reports what happened.
            return Ok(true);
        }
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EINTR) {
                return Err(e);
            }
        }
    }
}

fn so_error(fd: &OwnedFd) -> io::Result<libc::c_int> {
    let mut err: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt(SO_ERROR) writes one c_int into `err`, whose size is in `len`.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            std::ptr::from_mut(&mut err).cast(),
            &mut len,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_socket_and_the_limit() {
        let e = TransportError::Timeout {
            timeout: Duration::from_secs(5),
        };
        assert_eq!(e.to_string(), "dmsd did not answer within 5 s");
        let e = TransportError::Timeout {
            timeout: Duration::from_millis(500),
        };
        assert_eq!(e.to_string(), "dmsd did not answer within 0.5 s");
        let e = TransportError::NotRunning {
            socket: "/run/dms/pam.sock".into(),
            source: io::Error::from_raw_os_error(libc::ENOENT),
        };
        assert!(e
            .to_string()
            .starts_with("dmsd is not running (cannot connect to /run/dms/pam.sock: "));
        let e = TransportError::Closed {
            socket: "/s".into(),
            received: 0,
        };
        assert_eq!(
            e.to_string(),
            "dmsd closed the connection on /s without answering"
        );
        let e = TransportError::Closed {
            socket: "/s".into(),
            received: 3,
        };
        assert!(e.to_string().ends_with("(after 3 bytes without a newline)"));
    }

    #[test]
    fn socket_paths_are_checked() {
        assert!(sockaddr(Path::new("/run/dms/pam.sock")).is_ok());
        assert!(sockaddr(Path::new(&"a".repeat(108))).is_err());
        assert!(sockaddr(Path::new("")).is_err());
        let (_, len) = sockaddr(Path::new("/x")).unwrap();
        assert_eq!(len as usize, 2 + 2 + 1);
    }

    #[test]
    fn oversize_requests_are_refused_before_connecting() {
        let big = vec![b'x'; MAX_REQUEST];
        match call(Path::new("/nonexistent/s"), Duration::from_secs(1), &big) {
            Err(TransportError::RequestTooLong { len }) => assert_eq!(len, MAX_REQUEST + 1),
            other => panic!("{other:?}"),
        }
    }
}
