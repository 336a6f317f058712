//! One call to dmsd: encode, exchange, decode.

use std::path::Path;
use std::time::Duration;

use crate::protocol::{self, Answer, AnswerError, Request};
use crate::transport::{self, TransportError};

/// Why a call to dmsd did not produce an answer.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The exchange failed (not running, timeout, closed, too long).
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The answer line is not a valid answer.
    #[error(transparent)]
    Answer(#[from] AnswerError),
}

/// Sends `req` to dmsd at `socket` and decodes the answer, all within `timeout`. `debug`, when
/// given, receives the request (proxy text redacted) and the raw answer line.
pub fn ask(
    socket: &Path,
    timeout: Duration,
    req: &Request<'_>,
    debug: Option<&dyn Fn(String)>,
) -> Result<Answer, CallError> {
    if let Some(d) = debug {
        d(format!(
            "request to {}: {}",
            socket.display(),
            req.to_log_string()
        ));
    }
    let line = transport::call(socket, timeout, &req.encode())?;
    if let Some(d) = debug {
        d(format!("answer: {}", protocol::excerpt(&line, 4096)));
    }
    Ok(protocol::decode_answer(&line)?)
}
