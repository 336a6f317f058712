//! The stand-in the plugin leaves behind when it starts a task in a domain's pid namespace:
//! it ends like the task, keeps none of the task's fds, and is not killed by the signals it
//! can block. Each case forks a process that calls `fork_with_stand_in` (single-threaded
//! there) and plays the task in the grandchild, with pipes to the test.
#![allow(clippy::unwrap_used)]

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use spank_dms::task::fork_with_stand_in;

fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two new fds into the array.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: the kernel returned two new fds that nothing else owns.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

/// Waits until `fd` is readable (data or end) for at most `limit`.
fn readable(fd: &OwnedFd, limit: Duration) -> bool {
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: poll on one pollfd on this stack frame.
    unsafe { libc::poll(&mut p, 1, limit.as_millis() as libc::c_int) == 1 }
}

fn read_byte(fd: &OwnedFd) -> Option<u8> {
    let mut b = [0u8; 1];
    // SAFETY: read into a one-byte stack buffer.
    let n = unsafe { libc::read(fd.as_raw_fd(), b.as_mut_ptr().cast(), 1) };
    (n == 1).then_some(b[0])
}

fn write_byte(fd: &OwnedFd, b: u8) {
    // SAFETY: write one byte from a stack buffer.
    let n = unsafe { libc::write(fd.as_raw_fd(), [b].as_ptr().cast(), 1) };
    assert_eq!(n, 1);
}

/// Forks the stand-in's process; in the task (grandchild) runs `task`, which gets the
/// task-side pipe ends and must end the process. Returns the stand-in's pid.
fn spawn(task: fn(&OwnedFd, &OwnedFd) -> !, to_task: &OwnedFd, from_task: &OwnedFd) -> libc::pid_t {
    // SAFETY: the child only calls fork_with_stand_in and the task function, which use plain
    // system calls.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        if fork_with_stand_in().is_err() {
            // SAFETY: ends the forked test process.
            unsafe { libc::_exit(100) }
        }
        task(to_task, from_task)
    }
    pid
}

fn wait(pid: libc::pid_t) -> libc::c_int {
    let mut status = 0;
    // SAFETY: waitpid for our own child into a local.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    status
}

/// The task: signals it started (and closes its copy of the test's write end), waits for a
/// byte from the test, then ends as the byte says: `e` exits 7, `t` dies of SIGTERM.
fn task(to_task: &OwnedFd, from_task: &OwnedFd) -> ! {
    write_byte(from_task, b's');
    // SAFETY: closing the task's copy of the write end; the test then sees the pipe's end
    // only if the stand-in holds no copy either.
    unsafe { libc::close(from_task.as_raw_fd()) };
    let how = read_byte(to_task);
    // SAFETY: ending the forked process as asked.
    unsafe {
        match how {
            Some(b't') => {
                libc::signal(libc::SIGTERM, libc::SIG_DFL);
                let mut set: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut set);
                libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
                libc::raise(libc::SIGTERM);
                libc::_exit(99)
            }
            Some(b'e') => libc::_exit(7),
            _ => libc::_exit(98),
        }
    }
}

fn case(how: u8, signal_the_stand_in: bool) -> libc::c_int {
    let (to_task_r, to_task_w) = pipe();
    let (from_task_r, from_task_w) = pipe();
    let pid = spawn(task, &to_task_r, &from_task_w);
    drop(from_task_w);
    drop(to_task_r);
    assert!(readable(&from_task_r, Duration::from_secs(10)));
    assert_eq!(read_byte(&from_task_r), Some(b's'));
    // The task closed its write end, the test too: the end of the pipe shows although the
    // stand-in is alive (it keeps no fd).
    assert!(
        readable(&from_task_r, Duration::from_secs(10)),
        "the stand-in keeps the task's pipe open"
    );
    assert_eq!(read_byte(&from_task_r), None);
    if signal_the_stand_in {
        for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGUSR1] {
            // SAFETY: signalling our own child.
            assert_eq!(unsafe { libc::kill(pid, sig) }, 0);
        }
        std::thread::sleep(Duration::from_millis(100));
        let mut status = 0;
        // SAFETY: a non-blocking waitpid for our own child.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        assert_eq!(r, 0, "the stand-in died of a signal meant for the task");
    }
    write_byte(&to_task_w, how);
    wait(pid)
}

#[test]
fn the_stand_in_ends_like_the_task_and_keeps_nothing_open() {
    let status = case(b'e', false);
    assert!(libc::WIFEXITED(status), "{status:#x}");
    assert_eq!(libc::WEXITSTATUS(status), 7);

    let status = case(b't', true);
    assert!(libc::WIFSIGNALED(status), "{status:#x}");
    assert_eq!(libc::WTERMSIG(status), libc::SIGTERM);
    assert!(!libc::WCOREDUMP(status));
}
