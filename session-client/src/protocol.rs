//! The session socket protocol (`docs/pam-protocol.md`): one JSON request line, one JSON
//! answer line.

use std::fmt;

use dms_join::JoinTarget;
use serde::{Deserialize, Serialize};

/// A request to dmsd. Absent optional fields are sent as `null`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Request<'a> {
    /// May this user log in now?
    Account {
        /// PAM_USER.
        user: &'a str,
        /// PAM_SERVICE.
        service: &'a str,
        /// PAM_RHOST.
        rhost: Option<&'a str>,
    },
    /// A session opens; dmsd answers with the join target.
    Open {
        /// PAM_USER.
        user: &'a str,
        /// PAM_SERVICE.
        service: &'a str,
        /// PAM_RHOST.
        rhost: Option<&'a str>,
        /// PAM_TTY.
        tty: Option<&'a str>,
        /// The process that will be moved into the domain (the PAM caller).
        pid: u32,
        /// Batch job id (Slurm).
        job: Option<&'a str>,
        /// Text of the user's X.509 proxy.
        proxy_pem: Option<&'a str>,
    },
    /// The session of process `pid` ends.
    Close {
        /// PAM_USER.
        user: &'a str,
        /// PAM_SERVICE.
        service: &'a str,
        /// The process that opened the session.
        pid: u32,
    },
}

impl Request<'_> {
    /// The request line, without the terminating newline.
    pub fn encode(&self) -> Vec<u8> {
        // Serializing plain strings and integers into memory cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// The request as JSON for the debug log: the proxy text is replaced by its length.
    pub fn to_log_string(&self) -> String {
        match self {
            Request::Open {
                proxy_pem: Some(p), ..
            } => {
                let mut r = self.clone();
                let redacted = format!("[{} bytes, not logged]", p.len());
                if let Request::Open { proxy_pem, .. } = &mut r {
                    *proxy_pem = Some(&redacted);
                }
                String::from_utf8_lossy(&r.encode()).into_owned()
            }
            _ => String::from_utf8_lossy(&self.encode()).into_owned(),
        }
    }

    /// The operation name (`account`, `open`, `close`).
    pub fn op(&self) -> &'static str {
        match self {
            Request::Account { .. } => "account",
            Request::Open { .. } => "open",
            Request::Close { .. } => "close",
        }
    }
}

/// An API error kind (`kind` of an `ok:false` answer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ErrorKind {
    /// `InvalidArgument`.
    InvalidArgument,
    /// `NotFound`.
    NotFound,
    /// `PermissionDenied`: a policy decision.
    PermissionDenied,
    /// `Conflict`.
    Conflict,
    /// `Timeout`.
    Timeout,
    /// `Failed`.
    Failed,
    /// A kind this module does not know (treated as an error).
    Other(String),
}

impl ErrorKind {
    fn from_name(s: &str) -> ErrorKind {
        match s {
            "InvalidArgument" => ErrorKind::InvalidArgument,
            "NotFound" => ErrorKind::NotFound,
            "PermissionDenied" => ErrorKind::PermissionDenied,
            "Conflict" => ErrorKind::Conflict,
            "Timeout" => ErrorKind::Timeout,
            "Failed" => ErrorKind::Failed,
            other => ErrorKind::Other(other.to_string()),
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ErrorKind::InvalidArgument => "InvalidArgument",
            ErrorKind::NotFound => "NotFound",
            ErrorKind::PermissionDenied => "PermissionDenied",
            ErrorKind::Conflict => "Conflict",
            ErrorKind::Timeout => "Timeout",
            ErrorKind::Failed => "Failed",
            ErrorKind::Other(s) => s,
        })
    }
}

/// dmsd's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// `ok:true`; `open` answers carry the session, domain and join target.
    Ok {
        /// Session id.
        session: Option<String>,
        /// Domain name.
        domain: Option<String>,
        /// Where the session goes.
        target: Option<JoinTarget>,
        /// Set when dmsd does not manage the user (no grid identity) and lets the session
        /// through untouched: why.
        unmanaged: Option<String>,
        /// The domain is a libvirt guest: the session is recorded but stays on the host.
        guest: bool,
    },
    /// `ok:false`.
    Err {
        /// The error kind.
        kind: ErrorKind,
        /// dmsd's message.
        error: String,
    },
}

#[derive(Deserialize)]
struct RawAnswer {
    ok: bool,
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    session: Option<String>,
    #[serde(default)]
    domain: Option<String>,
    #[serde(default)]
    target: Option<JoinTarget>,
    #[serde(default)]
    unmanaged: Option<String>,
    #[serde(default)]
    guest: bool,
}

/// An answer line that is no valid answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("dmsd sent an invalid answer ({why}): {excerpt}")]
pub struct AnswerError {
    /// What is wrong.
    pub why: String,
    /// The start of the line, for the log.
    pub excerpt: String,
}

/// Decodes an answer line (without its newline). Unknown fields are ignored.
pub fn decode_answer(line: &[u8]) -> Result<Answer, AnswerError> {
    let bad = |why: String| AnswerError {
        why,
        excerpt: excerpt(line, 200),
    };
    let raw: RawAnswer = serde_json::from_slice(line).map_err(|e| bad(e.to_string()))?;
    if raw.ok {
        return Ok(Answer::Ok {
            session: raw.session,
            domain: raw.domain,
            target: raw.target,
            unmanaged: raw.unmanaged,
            guest: raw.guest,
        });
    }
    let kind = raw
        .kind
        .ok_or_else(|| bad("ok is false but kind is missing".into()))?;
    Ok(Answer::Err {
        kind: ErrorKind::from_name(&kind),
        error: raw.error.unwrap_or_else(|| "(no message)".into()),
    })
}

/// The first `max` bytes of `b` as text, marked when cut.
pub fn excerpt(b: &[u8], max: usize) -> String {
    let cut = b.len() > max;
    let mut s = String::from_utf8_lossy(&b[..b.len().min(max)]).into_owned();
    if cut {
        s.push_str(&format!("... ({} bytes)", b.len()));
    }
    s
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use dms_join::Namespace;

    use super::*;

    fn s(r: &Request) -> String {
        String::from_utf8(r.encode()).unwrap()
    }

    #[test]
    fn requests_encode_exactly_as_documented() {
        let account = Request::Account {
            user: "atlas001",
            service: "sshd",
            rhost: Some("127.0.0.1"),
        };
        assert_eq!(
            s(&account),
            r#"{"op":"account","user":"atlas001","service":"sshd","rhost":"127.0.0.1"}"#
        );
        let open = Request::Open {
            user: "atlas001",
            service: "sshd",
            rhost: Some("127.0.0.1"),
            tty: Some("/dev/pts/3"),
            pid: 4242,
            job: None,
            proxy_pem: None,
        };
        assert_eq!(
            s(&open),
            r#"{"op":"open","user":"atlas001","service":"sshd","rhost":"127.0.0.1","tty":"/dev/pts/3","pid":4242,"job":null,"proxy_pem":null}"#
        );
        let close = Request::Close {
            user: "atlas001",
            service: "sshd",
            pid: 4242,
        };
        assert_eq!(
            s(&close),
            r#"{"op":"close","user":"atlas001","service":"sshd","pid":4242}"#
        );
        let slurm = Request::Open {
            user: "a\"b",
            service: "slurm",
            rhost: None,
            tty: None,
            pid: 7,
            job: Some("123"),
            proxy_pem: Some("-----BEGIN CERTIFICATE-----\nAB\n"),
        };
        let line = s(&slurm);
        assert_eq!(
            line,
            r#"{"op":"open","user":"a\"b","service":"slurm","rhost":null,"tty":null,"pid":7,"job":"123","proxy_pem":"-----BEGIN CERTIFICATE-----\nAB\n"}"#
        );
        assert!(!line.contains('\n'));
        assert_eq!(account.op(), "account");
        assert_eq!(slurm.op(), "open");
        assert_eq!(close.op(), "close");
    }

    #[test]
    fn the_log_never_shows_the_proxy() {
        let r = Request::Open {
            user: "u",
            service: "sshd",
            rhost: None,
            tty: None,
            pid: 1,
            job: None,
            proxy_pem: Some("SECRET KEY"),
        };
        let log = r.to_log_string();
        assert!(!log.contains("SECRET"), "{log}");
        assert!(
            log.contains(r#""proxy_pem":"[10 bytes, not logged]""#),
            "{log}"
        );
        let plain = Request::Close {
            user: "u",
            service: "s",
            pid: 1,
        };
        assert_eq!(plain.to_log_string(), s(&plain));
    }

    #[test]
    fn answers_decode() {
        assert_eq!(
            decode_answer(br#"{"ok":true}"#).unwrap(),
            Answer::Ok {
                session: None,
                domain: None,
                target: None,
                unmanaged: None,
                guest: false,
            }
        );
        let a = decode_answer(
            br#"{"ok":true,"session":"s42","domain":"atlas.atlas001",
 "target":{"domain":"atlas.atlas001","init_pid":1234,"init_start":987654,
           "procs_files":["/sys/fs/cgroup/cpu/dms/atlas.atlas001/cgroup.procs"],
           "namespaces":["mnt","uts","ipc","net","cgroup","pid"]},"future":1}"#,
        )
        .unwrap();
        let Answer::Ok {
            session,
            domain,
            target: Some(t),
            unmanaged: None,
            guest: false,
        } = a
        else {
            panic!("{a:?}")
        };
        assert_eq!(session.as_deref(), Some("s42"));
        assert_eq!(domain.as_deref(), Some("atlas.atlas001"));
        assert_eq!(t.domain, "atlas.atlas001");
        assert_eq!(t.init_pid, 1234);
        assert_eq!(t.init_start, 987654);
        assert_eq!(
            t.procs_files,
            vec![PathBuf::from(
                "/sys/fs/cgroup/cpu/dms/atlas.atlas001/cgroup.procs"
            )]
        );
        assert_eq!(t.namespaces, Namespace::DOMAIN.to_vec());
    }

    #[test]
    fn errors_decode_with_their_kind() {
        assert_eq!(
            decode_answer(
                br#"{"ok":false,"kind":"PermissionDenied","error":"VO \"cms\" is banned on this node"}"#
            )
            .unwrap(),
            Answer::Err {
                kind: ErrorKind::PermissionDenied,
                error: "VO \"cms\" is banned on this node".into()
            }
        );
        for k in [
            "InvalidArgument",
            "NotFound",
            "PermissionDenied",
            "Conflict",
            "Timeout",
            "Failed",
            "Brandnew",
        ] {
            let line = format!(r#"{{"ok":false,"kind":"{k}","error":"e"}}"#);
            match decode_answer(line.as_bytes()).unwrap() {
                Answer::Err { kind, error } => {
                    assert_eq!(kind.to_string(), k);
                    assert_eq!(error, "e");
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(
            decode_answer(br#"{"ok":false,"kind":"Brandnew"}"#).unwrap(),
            Answer::Err {
                kind: ErrorKind::Other("Brandnew".into()),
                error: "(no message)".into()
            }
        );
    }

    #[test]
    fn invalid_answers_are_errors() {
        let e = decode_answer(b"hello").unwrap_err().to_string();
        assert!(e.starts_with("dmsd sent an invalid answer ("), "{e}");
        assert!(e.ends_with("): hello"), "{e}");
        assert!(decode_answer(br#"{"ok":false,"error":"x"}"#)
            .unwrap_err()
            .to_string()
            .contains("ok is false but kind is missing"));
        assert!(decode_answer(br#"{"kind":"Failed"}"#).is_err());
        assert!(decode_answer(br#"{"ok":"yes"}"#).is_err());
        assert!(decode_answer(br#"{"ok":true,"target":{"domain":"d"}}"#).is_err());
        assert_eq!(
            decode_answer(br#"{"ok":true,"unmanaged":"not a grid user"}"#).unwrap(),
            Answer::Ok {
                session: None,
                domain: None,
                target: None,
                unmanaged: Some("not a grid user".into()),
                guest: false,
            }
        );
        assert_eq!(
            decode_answer(br#"{"ok":true,"session":"s1","domain":"cms.u","guest":true}"#).unwrap(),
            Answer::Ok {
                session: Some("s1".into()),
                domain: Some("cms.u".into()),
                target: None,
                unmanaged: None,
                guest: true,
            }
        );
        assert!(decode_answer(b"").is_err());
        let long = vec![b'x'; 1000];
        let e = decode_answer(&long).unwrap_err();
        assert!(e.excerpt.ends_with("... (1000 bytes)"), "{}", e.excerpt);
    }
}
