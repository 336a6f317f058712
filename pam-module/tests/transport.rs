//! The client side of the session socket against a real Unix listener served from a thread of
//! this test process. Every test also checks that /proc/self/fd is the same before and after
//! the call (tests hold one lock so no other test opens fds meanwhile).
#![allow(clippy::unwrap_used)]

mod common;

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use common::{open_fds, FakeDmsd, Reply};
use pam_dms::client::{ask, CallError};
use pam_dms::protocol::{Answer, ErrorKind, Request};
use pam_dms::transport::{call, TransportError, MAX_ANSWER};

static LOCK: Mutex<()> = Mutex::new(());

fn lock() -> MutexGuard<'static, ()> {
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

const OPEN: Request<'static> = Request::Open {
    user: "atlas001",
    service: "sshd",
    rhost: Some("127.0.0.1"),
    tty: Some("/dev/pts/3"),
    pid: 4242,
    job: None,
    proxy_pem: None,
};

/// Runs `f` against a fake dmsd with `replies`; checks the fd table is unchanged afterwards
/// (server thread joined and listener closed) and returns f's result and the requests seen.
fn with_server<T>(replies: Vec<Reply>, f: impl FnOnce(&Path) -> T) -> (T, Vec<String>) {
    let _g = lock();
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("pam.sock");
    let before = open_fds();
    let server = FakeDmsd::start(&socket, replies, Duration::from_secs(10));
    let out = f(&socket);
    let requests = server.requests();
    let after = open_fds();
    assert_eq!(before, after, "fds leaked");
    (out, requests)
}

#[test]
fn a_normal_answer_is_decoded() {
    let target = r#"{"ok":true,"session":"s42","domain":"atlas.atlas001","target":{"domain":"atlas.atlas001","init_pid":1234,"init_start":987654,"procs_files":["/sys/fs/cgroup/cpu/dms/atlas.atlas001/cgroup.procs"],"namespaces":["mnt","uts","ipc","net","cgroup","pid"]}}"#;
    let (answer, requests) = with_server(vec![Reply::Line(target.into())], |s| {
        ask(s, Duration::from_secs(2), &OPEN, None)
    });
    match answer.unwrap() {
        Answer::Ok {
            session,
            target: Some(t),
            ..
        } => {
            assert_eq!(session.as_deref(), Some("s42"));
            assert_eq!(t.init_pid, 1234);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        requests,
        vec![String::from_utf8(OPEN.encode()).unwrap() + "\n"]
    );
}

#[test]
fn an_error_answer_keeps_its_kind() {
    let (answer, _) = with_server(
        vec![Reply::Line(
            r#"{"ok":false,"kind":"PermissionDenied","error":"VO \"cms\" is banned on this node"}"#
                .into(),
        )],
        |s| ask(s, Duration::from_secs(2), &OPEN, None),
    );
    assert_eq!(
        answer.unwrap(),
        Answer::Err {
            kind: ErrorKind::PermissionDenied,
            error: "VO \"cms\" is banned on this node".into()
        }
    );
}

#[test]
fn an_answer_in_pieces_is_put_together() {
    let pieces = vec![
        b"{\"ok\":".to_vec(),
        b"true}".to_vec(),
        b"\n{\"ignored\":1}\n".to_vec(),
    ];
    let (answer, _) = with_server(
        vec![Reply::Pieces(pieces, Duration::from_millis(30))],
        |s| call(s, Duration::from_secs(2), b"{}"),
    );
    assert_eq!(answer.unwrap(), b"{\"ok\":true}");
}

#[test]
fn a_silent_server_times_out_in_time() {
    let timeout = Duration::from_secs(1);
    let ((result, elapsed), requests) = with_server(vec![Reply::Silence], |s| {
        let t0 = Instant::now();
        let r = call(s, timeout, &OPEN.encode());
        (r, t0.elapsed())
    });
    match result {
        Err(e @ TransportError::Timeout { .. }) => {
            assert_eq!(e.to_string(), "dmsd did not answer within 1 s")
        }
        other => panic!("{other:?}"),
    }
    assert!(elapsed >= timeout, "{elapsed:?}");
    assert!(
        elapsed < timeout + Duration::from_millis(500),
        "{elapsed:?}"
    );
    assert_eq!(requests.len(), 1, "the request was sent");
}

#[test]
fn a_server_that_closes_without_answering() {
    let (result, _) = with_server(vec![Reply::Close], |s| {
        call(s, Duration::from_secs(2), b"{}")
    });
    match result {
        Err(e @ TransportError::Closed { received: 0, .. }) => {
            assert!(e.to_string().contains("without answering"), "{e}")
        }
        other => panic!("{other:?}"),
    }
    let (result, _) = with_server(vec![Reply::Raw(b"{\"ok\":tr".to_vec())], |s| {
        call(s, Duration::from_secs(2), b"{}")
    });
    match result {
        Err(e @ TransportError::Closed { received: 8, .. }) => {
            assert!(
                e.to_string().contains("after 8 bytes without a newline"),
                "{e}"
            )
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_garbage_answer_is_an_error() {
    let (result, _) = with_server(vec![Reply::Line("hello, world".into())], |s| {
        ask(s, Duration::from_secs(2), &OPEN, None)
    });
    match result {
        Err(e @ CallError::Answer(_)) => {
            let m = e.to_string();
            assert!(m.starts_with("dmsd sent an invalid answer"), "{m}");
            assert!(m.ends_with("hello, world"), "{m}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn an_oversize_answer_is_refused() {
    let mut big = vec![b' '; MAX_ANSWER + 10];
    big.push(b'\n');
    let (result, _) = with_server(vec![Reply::Raw(big)], |s| {
        call(s, Duration::from_secs(5), b"{}")
    });
    match result {
        Err(e @ TransportError::TooLong { .. }) => {
            assert!(e.to_string().contains("longer than 1048576 bytes"), "{e}")
        }
        other => panic!("{other:?}"),
    }
    // Exactly the limit is fine.
    let mut max = vec![b' '; MAX_ANSWER];
    max.push(b'\n');
    let (result, _) = with_server(vec![Reply::Raw(max)], |s| {
        call(s, Duration::from_secs(5), b"{}")
    });
    assert_eq!(result.unwrap().len(), MAX_ANSWER);
}

#[test]
fn no_socket_file_means_dmsd_is_not_running() {
    let _g = lock();
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("pam.sock");
    let before = open_fds();
    let e = call(&socket, Duration::from_secs(1), b"{}").unwrap_err();
    assert_eq!(open_fds(), before, "fds leaked");
    assert_eq!(
        e.to_string(),
        format!(
            "dmsd is not running (cannot connect to {}: No such file or directory (os error 2))",
            socket.display()
        )
    );
    // A socket file nobody listens on: ECONNREFUSED, the same message.
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    let e = call(&socket, Duration::from_secs(1), b"{}").unwrap_err();
    assert_eq!(open_fds(), before, "fds leaked");
    assert!(
        e.to_string().starts_with(&format!(
            "dmsd is not running (cannot connect to {}: Connection refused",
            socket.display()
        )),
        "{e}"
    );
}

#[test]
fn a_full_backlog_times_out_in_time() {
    let _g = lock();
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("pam.sock");
    // A listener with backlog 0 holds one unaccepted connection; the next connect would block.
    let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    // SAFETY: listen on a valid, bound socket fd (Linux updates the backlog of a listener).
    assert_eq!(unsafe { libc::listen(listener.as_raw_fd(), 0) }, 0);
    let queued = UnixStream::connect(&socket).unwrap();
    assert_eq!(nonblocking_connect_errno(&socket), libc::EAGAIN);

    let before = open_fds();
    let t = Duration::from_millis(300);
    let t0 = Instant::now();
    let result = call(&socket, t, b"{}");
    let elapsed = t0.elapsed();
    assert_eq!(open_fds(), before, "fds leaked");
    assert!(
        matches!(result, Err(TransportError::Timeout { .. })),
        "{result:?}"
    );
    assert!(elapsed >= t, "{elapsed:?}");
    assert!(elapsed < t + Duration::from_millis(500), "{elapsed:?}");
    drop(queued);
    drop(listener);
}

/// errno of one non-blocking connect to `path` (0 when it connects).
fn nonblocking_connect_errno(path: &Path) -> i32 {
    // SAFETY: socket(2) with constant arguments.
    let raw = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            0,
        )
    };
    assert!(raw >= 0);
    // SAFETY: a new fd nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: sockaddr_un is plain data; all-zero is valid.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_os_str().as_encoded_bytes();
    for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    // SAFETY: connect with an initialized sockaddr_un and its full size.
    let r = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            std::ptr::from_ref(&addr).cast(),
            std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
        )
    };
    if r == 0 {
        0
    } else {
        std::io::Error::last_os_error().raw_os_error().unwrap_or(-1)
    }
}
