//! What every binary of this workspace (`dps`, `station`, the fixtures) does the same way as a
//! process: end quietly when its reader goes away.

use std::any::Any;
use std::panic::AssertUnwindSafe;
use std::process::ExitCode;

/// The exit status a shell reports for a program its pipe's reader closed (128 + SIGPIPE).
pub const CLOSED_STDOUT_EXIT: u8 = 141;

/// Runs a program's `body` so that a standard output (or error) whose reader has gone
/// (`station unit list | head -3`) ends it quietly with status 141, as a Unix filter ends,
/// instead of with a panic and a backtrace.
///
/// Rust ignores SIGPIPE, so `println!` to such a pipe panics ("failed printing to stdout:
/// Broken pipe"). Turning SIGPIPE back on would do the same for stdout, but would also kill the
/// process, with no message, on a write to any other pipe or socket whose peer is gone, where
/// the station must say what failed. So only this one panic is caught: the stack unwinds as
/// for any error (open transactions roll back, HSM sessions close), nothing is printed, and
/// every other panic is reported and propagated as before.
pub fn quiet_on_closed_stdout(body: impl FnOnce() -> ExitCode) -> ExitCode {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !is_closed_output(info.payload()) {
            report(info);
        }
    }));
    match std::panic::catch_unwind(AssertUnwindSafe(body)) {
        Ok(code) => code,
        Err(payload) if is_closed_output(payload.as_ref()) => ExitCode::from(CLOSED_STDOUT_EXIT),
        Err(payload) => std::panic::resume_unwind(payload),
    }
}

/// Whether `e`, met while writing the program's output, means its standard output's reader has
/// gone: a broken pipe, and standard output is a pipe with no reader left (so a broken socket or
/// child pipe met elsewhere is still reported as the error it is).
pub fn is_closed_stdout_error(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::BrokenPipe && stdout_has_no_reader()
}

/// Whether standard output is a pipe whose read end is closed (poll reports POLLERR on it).
fn stdout_has_no_reader() -> bool {
    let mut fd = libc::pollfd {
        fd: libc::STDOUT_FILENO,
        events: 0,
        revents: 0,
    };
    // SAFETY: one valid pollfd, counted as one, no timeout; poll only writes `revents`.
    let ready = unsafe { libc::poll(&raw mut fd, 1, 0) };
    ready == 1 && fd.revents & libc::POLLERR != 0
}

/// Whether a panic is `print!`'s or `eprint!`'s on a standard output or error whose reader has
/// gone (EPIPE): `station … 2>&1 | head` closes both.
fn is_closed_output(payload: &(dyn Any + Send)) -> bool {
    let message = payload
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| payload.downcast_ref::<&str>().copied());
    message.is_some_and(|m| {
        (m.starts_with("failed printing to stdout") || m.starts_with("failed printing to stderr"))
            && m.ends_with(&format!("(os error {})", libc::EPIPE))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_closed_stdout_is_recognised() {
        let epipe = std::io::Error::from_raw_os_error(libc::EPIPE);
        let closed: Box<dyn Any + Send> = Box::new(format!("failed printing to stdout: {epipe}"));
        assert!(is_closed_output(closed.as_ref()));
        let stderr: Box<dyn Any + Send> = Box::new(format!("failed printing to stderr: {epipe}"));
        assert!(is_closed_output(stderr.as_ref()));
        let full = std::io::Error::from_raw_os_error(libc::ENOSPC);
        let other: Box<dyn Any + Send> = Box::new(format!("failed printing to stdout: {full}"));
        assert!(!is_closed_output(other.as_ref()));
        let unrelated: Box<dyn Any + Send> = Box::new("index out of bounds");
        assert!(!is_closed_output(unrelated.as_ref()));
    }
}
