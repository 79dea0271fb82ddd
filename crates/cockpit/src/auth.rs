//! Bearer tokens: reading `--token-file` files (`ROLE NAME TOKEN` lines, private files only) and finding a caller's token in constant time.

use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use axum::http::HeaderMap;
use serde::Serialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::{ApiError, CockpitError};

/// The shortest token accepted: shorter ones can be guessed.
pub const MIN_TOKEN_LEN: usize = 16;
/// The largest token file read (a token file is a few lines).
const MAX_FILE: u64 = 1024 * 1024;
/// The most tokens kept (each request compares against all of them).
const MAX_TOKENS: usize = 1000;

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Every read.
    Read,
    /// Every read, and the actions.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Admin => "admin",
        }
    }
}

struct Token {
    name: String,
    role: Role,
    /// SHA-256 of the token: digests have one length, so comparing them in
    /// constant time does not reveal a token's length either.
    digest: [u8; 32],
}

/// The tokens from every `--token-file`; empty when none was given.
#[derive(Default)]
pub struct Tokens {
    tokens: Vec<Token>,
}

/// Who made a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// No tokens are configured: reads are open, actions refused.
    Anonymous,
    Token {
        name: String,
        role: Role,
    },
}

impl Caller {
    /// The name recorded in the audit log.
    pub fn who(&self) -> &str {
        match self {
            Caller::Anonymous => "anonymous",
            Caller::Token { name, .. } => name,
        }
    }
}

fn digest(token: &[u8]) -> [u8; 32] {
    Sha256::digest(token).into()
}

impl Tokens {
    /// Reads every file; a file readable by group or others, a bad line
    /// (naming file:line) or a name or token given twice is an error.
    pub fn load(paths: &[PathBuf]) -> Result<Tokens, CockpitError> {
        let mut tokens: Vec<Token> = Vec::new();
        for path in paths {
            let found = read_file(path)?;
            if found.is_empty() {
                return Err(CockpitError::TokenFile {
                    path: path.clone(),
                    message: "no tokens in the file".into(),
                });
            }
            for t in found {
                if tokens.iter().any(|o| o.digest == t.digest) {
                    return Err(CockpitError::TokenFile {
                        path: path.clone(),
                        message: format!("the token of {} is given twice", t.name),
                    });
                }
                if tokens.iter().any(|o| o.name == t.name) {
                    return Err(CockpitError::TokenFile {
                        path: path.clone(),
                        message: format!("the name {} is given twice", t.name),
                    });
                }
                if tokens.len() >= MAX_TOKENS {
                    return Err(CockpitError::TokenFile {
                        path: path.clone(),
                        message: format!("more than {MAX_TOKENS} tokens"),
                    });
                }
                tokens.push(t);
            }
        }
        Ok(Tokens { tokens })
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// The token's owner. Every configured token is compared, in constant
    /// time, whatever matches: the time taken says nothing about which
    /// token, or how much of one, was right.
    pub fn find(&self, token: &str) -> Option<(String, Role)> {
        let d = digest(token.as_bytes());
        let mut found: Option<&Token> = None;
        for t in &self.tokens {
            if bool::from(t.digest.ct_eq(&d)) {
                found = Some(t);
            }
        }
        found.map(|t| (t.name.clone(), t.role))
    }

    /// The caller of a request from its `Authorization` header: anonymous
    /// when no tokens are configured, else 401 without a known token.
    pub fn caller(&self, headers: &HeaderMap) -> Result<Caller, ApiError> {
        if self.is_empty() {
            return Ok(Caller::Anonymous);
        }
        let unauthorized =
            |m: &str| ApiError::new(axum::http::StatusCode::UNAUTHORIZED, m.to_string());
        let Some(value) = headers.get(axum::http::header::AUTHORIZATION) else {
            return Err(unauthorized(
                "a token is needed: send Authorization: Bearer <token>",
            ));
        };
        let token = value
            .to_str()
            .ok()
            .and_then(|v| {
                let (scheme, rest) = v.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
            })
            .ok_or_else(|| unauthorized("the Authorization header must be Bearer <token>"))?;
        match self.find(token) {
            Some((name, role)) => Ok(Caller::Token { name, role }),
            None => Err(unauthorized("unknown token")),
        }
    }
}

fn read_file(path: &Path) -> Result<Vec<Token>, CockpitError> {
    let read_err = |source| CockpitError::TokenFileRead {
        path: path.to_path_buf(),
        source,
    };
    // One open, then every check on what was opened: the file cannot be
    // swapped between the checks and the read.
    let file = std::fs::File::open(path).map_err(read_err)?;
    let meta = file.metadata().map_err(read_err)?;
    if !meta.is_file() {
        return Err(CockpitError::TokenFile {
            path: path.to_path_buf(),
            message: "not a regular file".into(),
        });
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(CockpitError::TokenFileMode {
            path: path.to_path_buf(),
            mode,
        });
    }
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me && meta.uid() != 0 {
        return Err(CockpitError::TokenFile {
            path: path.to_path_buf(),
            message: format!(
                "owned by uid {}, not by this user ({me}) or root: another user could change it",
                meta.uid()
            ),
        });
    }
    if meta.len() > MAX_FILE {
        return Err(CockpitError::TokenFile {
            path: path.to_path_buf(),
            message: format!("larger than {MAX_FILE} bytes"),
        });
    }
    let mut text = String::new();
    file.take(MAX_FILE.saturating_add(1))
        .read_to_string(&mut text)
        .map_err(read_err)?;
    if u64::try_from(text.len()).unwrap_or(u64::MAX) > MAX_FILE {
        return Err(CockpitError::TokenFile {
            path: path.to_path_buf(),
            message: format!("larger than {MAX_FILE} bytes"),
        });
    }
    parse(path, &text)
}

/// Parses `ROLE NAME TOKEN` lines; `#` starts a comment line, blank lines are skipped.
fn parse(path: &Path, text: &str) -> Result<Vec<Token>, CockpitError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line_no = i.saturating_add(1);
        let bad = |message: String| CockpitError::TokenLine {
            path: path.to_path_buf(),
            line: line_no,
            message,
        };
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [role, name, token] = fields[..] else {
            return Err(bad(format!(
                "expected ROLE NAME TOKEN, found {} fields",
                fields.len()
            )));
        };
        let role = match role {
            "admin" => Role::Admin,
            "read" => Role::Read,
            other => {
                return Err(bad(format!(
                    "unknown role {other:?}: expected admin or read"
                )));
            }
        };
        if name.len() > 64
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.@".contains(c))
        {
            return Err(bad(format!(
                "the name {name:?} must be at most 64 letters, digits, '-', '_', '.' or '@'"
            )));
        }
        if token.len() < MIN_TOKEN_LEN {
            return Err(bad(format!(
                "the token of {name} is shorter than {MIN_TOKEN_LEN} characters"
            )));
        }
        out.push(Token {
            name: name.to_string(),
            role,
            digest: digest(token.as_bytes()),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(dir: &Path, name: &str, text: &str, mode: u32) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    #[test]
    fn tokens_are_read_and_found_by_value() {
        let d = tempfile::tempdir().unwrap();
        let a = file(
            d.path(),
            "a",
            "# people\nadmin alice 0123456789abcdef0123\n\nread  bob   bbbbbbbbbbbbbbbbbbbb\n",
            0o600,
        );
        let b = file(d.path(), "b", "read carol cccccccccccccccccccc\n", 0o400);
        let t = Tokens::load(&[a, b]).unwrap();
        assert_eq!(t.len(), 3);
        assert_eq!(
            t.find("0123456789abcdef0123"),
            Some(("alice".into(), Role::Admin))
        );
        assert_eq!(
            t.find("cccccccccccccccccccc"),
            Some(("carol".into(), Role::Read))
        );
        assert_eq!(t.find("0123456789abcdef012"), None, "a prefix is no token");
        assert_eq!(t.find(""), None);
        let mut h = HeaderMap::new();
        assert!(t.caller(&h).is_err(), "no header");
        h.insert(
            "authorization",
            "Bearer bbbbbbbbbbbbbbbbbbbb".parse().unwrap(),
        );
        assert_eq!(
            t.caller(&h).unwrap(),
            Caller::Token {
                name: "bob".into(),
                role: Role::Read
            }
        );
        h.insert(
            "authorization",
            "Basic bbbbbbbbbbbbbbbbbbbb".parse().unwrap(),
        );
        assert_eq!(
            t.caller(&h).unwrap_err().status,
            axum::http::StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            Tokens::default().caller(&HeaderMap::new()).unwrap(),
            Caller::Anonymous
        );
    }

    #[test]
    fn bad_files_are_refused_naming_the_file_and_line() {
        let d = tempfile::tempdir().unwrap();
        let open = file(d.path(), "open", "admin a aaaaaaaaaaaaaaaaaaaa\n", 0o644);
        let e = Tokens::load(std::slice::from_ref(&open))
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains(&open.display().to_string()) && e.contains("644"),
            "{e}"
        );
        let cases = [
            ("root x xxxxxxxxxxxxxxxxxxxx", ":1: unknown role"),
            ("# c\nadmin a short", ":2: the token of a is shorter"),
            ("admin a", ":1: expected ROLE NAME TOKEN"),
            ("admin a/b xxxxxxxxxxxxxxxxxxxx", ":1: the name"),
            (
                "admin a xxxxxxxxxxxxxxxxxxxx\nread a yyyyyyyyyyyyyyyyyyyy",
                "the name a is given twice",
            ),
            (
                "admin a xxxxxxxxxxxxxxxxxxxx\nread b xxxxxxxxxxxxxxxxxxxx",
                "the token of b is given twice",
            ),
            ("# nothing\n", "no tokens"),
        ];
        for (text, want) in cases {
            let p = file(d.path(), "bad", text, 0o600);
            let e = Tokens::load(&[p]).err().unwrap().to_string();
            assert!(e.contains(want), "{text:?}: {e}");
            assert!(e.contains("bad"), "names the file: {e}");
        }
        let missing = d.path().join("missing");
        assert!(Tokens::load(&[missing]).is_err());
        assert!(
            Tokens::load(&[d.path().to_path_buf()]).is_err(),
            "a directory"
        );
        // Another user's file: they could change the tokens. Only root can
        // give a file away, so this case needs root (CI runs as root).
        if nix::unistd::geteuid().is_root() {
            let theirs = file(d.path(), "theirs", "admin a aaaaaaaaaaaaaaaaaaaa\n", 0o600);
            std::os::unix::fs::chown(&theirs, Some(65534), None).unwrap();
            let e = Tokens::load(&[theirs]).err().unwrap().to_string();
            assert!(e.contains("owned by uid 65534"), "{e}");
        }
    }
}
