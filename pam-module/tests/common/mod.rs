//! A fake dmsd for tests: a Unix listener served from a thread of the test process.
#![allow(dead_code, clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What the fake server does with one connection, after reading the request line.
#[derive(Debug, Clone)]
pub enum Reply {
    /// Writes this line and a newline, then closes.
    Line(String),
    /// Writes these bytes as they are (no newline added), then closes.
    Raw(Vec<u8>),
    /// Writes these pieces with a pause between them, then closes.
    Pieces(Vec<Vec<u8>>, Duration),
    /// Never answers: waits until the client closes (or the server's own deadline).
    Silence,
    /// Closes without answering.
    Close,
}

/// A fake dmsd that serves `replies.len()` connections in order and returns the request lines
/// it received. Gives up after `limit` (so a test cannot hang on it).
pub struct FakeDmsd {
    pub socket: PathBuf,
    handle: Option<JoinHandle<Vec<String>>>,
}

impl FakeDmsd {
    pub fn start(socket: &Path, replies: Vec<Reply>, limit: Duration) -> FakeDmsd {
        let listener = UnixListener::bind(socket).unwrap();
        listener.set_nonblocking(true).unwrap();
        let handle = std::thread::spawn(move || {
            let deadline = Instant::now() + limit;
            let mut got = Vec::new();
            for reply in replies {
                let Some(stream) = accept(&listener, deadline) else {
                    break;
                };
                got.push(serve(stream, reply, deadline));
            }
            got
        });
        FakeDmsd {
            socket: socket.to_path_buf(),
            handle: Some(handle),
        }
    }

    /// Waits for the server thread and returns the requests it received.
    pub fn requests(mut self) -> Vec<String> {
        self.handle.take().unwrap().join().unwrap()
    }
}

impl Drop for FakeDmsd {
    fn drop(&mut self) {
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}

fn accept(listener: &UnixListener, deadline: Instant) -> Option<UnixStream> {
    loop {
        match listener.accept() {
            Ok((s, _)) => return Some(s),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    return None;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(e) => panic!("accept: {e}"),
        }
    }
}

fn serve(stream: UnixStream, reply: Reply, deadline: Instant) -> String {
    stream.set_nonblocking(false).unwrap();
    let left = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(1));
    stream.set_read_timeout(Some(left)).unwrap();
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    let _ = reader.read_line(&mut line);
    let mut stream = reader.into_inner();
    match reply {
        Reply::Line(l) => {
            let _ = stream.write_all(format!("{l}\n").as_bytes());
        }
        Reply::Raw(b) => {
            let _ = stream.write_all(&b);
        }
        Reply::Pieces(pieces, pause) => {
            for p in pieces {
                let _ = stream.write_all(&p);
                let _ = stream.flush();
                std::thread::sleep(pause);
            }
        }
        Reply::Silence => {
            // Returns at the client's close (EOF) or at the read timeout.
            let mut sink = Vec::new();
            let _ = stream.read_to_end(&mut sink);
        }
        Reply::Close => {}
    }
    line
}

/// Entries of /proc/self/fd with their targets.
pub fn open_fds() -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| {
            let target = std::fs::read_link(e.path())
                .map(|p| p.display().to_string())
                .unwrap_or_default();
            (e.file_name().to_string_lossy().into_owned(), target)
        })
        .collect();
    v.sort();
    v
}
