//! Native health checks run inside the agent, with no process: an HTTP/1.1 GET or a TCP connect, bounded by the check's timeout.
//!
//! A probe is a task on the agent's runtime. The whole attempt (name
//! resolution, connect, request, response head) shares one deadline, so a
//! server that accepts and then stalls fails after `timeout` instead of
//! holding the check. The response body is never read: the status decides.

use std::time::Duration;

use http_body_util::Empty;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Why a probe failed, or could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// An `exec` check runs as a process, never as a probe.
    #[error("not a native check: an 'exec' check runs as a process")]
    NotNative,
    #[error("unusable check target: {source}")]
    Target {
        #[source]
        source: autopilot_config::AddressError,
    },
    #[error("no answer within {}", crate::logging::dur(*.timeout))]
    Timeout { timeout: Duration },
    #[error("cannot connect to {host}:{port}: {source}")]
    Connect {
        host: String,
        port: u16,
        #[source]
        source: std::io::Error,
    },
    #[error("http handshake with {host}:{port}: {source}")]
    Handshake {
        host: String,
        port: u16,
        #[source]
        source: hyper::Error,
    },
    #[error("cannot build the request for {target}: {source}")]
    Request {
        target: String,
        #[source]
        source: hyper::http::Error,
    },
    #[error("GET {target} from {host}:{port}: {source}")]
    Get {
        target: String,
        host: String,
        port: u16,
        #[source]
        source: hyper::Error,
    },
    #[error("GET {target} from {host}:{port} answered {status}, expected {want}")]
    Status {
        target: String,
        host: String,
        port: u16,
        status: u16,
        want: String,
    },
}

/// What a probe checks.
#[derive(Debug, Clone, PartialEq)]
pub enum Probe {
    /// GET `target` from `host:port`; passes on `expect`, or any 2xx.
    Http {
        host: String,
        port: u16,
        target: String,
        expect: Option<u16>,
    },
    /// Passes when a connection to `host:port` opens.
    Tcp { host: String, port: u16 },
}

impl Probe {
    /// The probe for a native check; an `exec` check has none.
    pub fn of(check: &autopilot_core::HealthCheck) -> Result<Probe, ProbeError> {
        let target = |source| ProbeError::Target { source };
        match check {
            autopilot_core::HealthCheck::Exec { .. } => Err(ProbeError::NotNative),
            autopilot_core::HealthCheck::Http { url, expect } => autopilot_config::http_url(url)
                .map(|(host, port, target)| Probe::Http {
                    host,
                    port,
                    target,
                    expect: *expect,
                })
                .map_err(target),
            autopilot_core::HealthCheck::Tcp { address } => autopilot_config::host_port(address)
                .map(|(host, port)| Probe::Tcp { host, port })
                .map_err(target),
        }
    }

    /// Runs the probe once; `Err` says why it failed.
    pub async fn run(&self, timeout: Duration) -> Result<(), ProbeError> {
        match tokio::time::timeout(timeout, self.attempt()).await {
            Ok(res) => res,
            Err(_) => Err(ProbeError::Timeout { timeout }),
        }
    }

    async fn attempt(&self) -> Result<(), ProbeError> {
        match self {
            Probe::Tcp { host, port } => connect(host, *port).await.map(drop),
            Probe::Http {
                host,
                port,
                target,
                expect,
            } => {
                let status = http_status(host, *port, target).await?;
                let ok = match expect {
                    Some(want) => status == *want,
                    None => (200..300).contains(&status),
                };
                if ok {
                    Ok(())
                } else {
                    let want = expect.map_or_else(|| "2xx".to_string(), |w| w.to_string());
                    Err(ProbeError::Status {
                        target: target.clone(),
                        host: host.clone(),
                        port: *port,
                        status,
                        want,
                    })
                }
            }
        }
    }
}

/// One GET of `target` from `host:port` (no deadline of its own: callers
/// bound it); the answer's status code. The body is never read.
pub async fn http_status(host: &str, port: u16, target: &str) -> Result<u16, ProbeError> {
    let stream = connect(host, port).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|source| ProbeError::Handshake {
            host: host.to_string(),
            port,
            source,
        })?;
    // The connection is driven beside the request; it ends when
    // the probe's future is dropped (timeout or done).
    let driver = async move {
        let _ = conn.await;
    };
    let authority = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let req = hyper::Request::get(target)
        .header(hyper::header::HOST, authority)
        .header(hyper::header::USER_AGENT, "autopilot-health-check")
        .header(hyper::header::CONNECTION, "close")
        .body(Empty::<Bytes>::new())
        .map_err(|source| ProbeError::Request {
            target: target.to_string(),
            source,
        })?;
    let response = sender.send_request(req);
    tokio::pin!(response, driver);
    // The connection may finish (the server closes after
    // answering) before the response is polled: it is then
    // ready, or failed with the reason.
    let resp = tokio::select! {
        biased;
        r = &mut response => r,
        () = &mut driver => response.await,
    }
    .map_err(|source| ProbeError::Get {
        target: target.to_string(),
        host: host.to_string(),
        port,
        source,
    })?;
    Ok(resp.status().as_u16())
}

pub(crate) async fn connect(host: &str, port: u16) -> Result<TcpStream, ProbeError> {
    TcpStream::connect((host, port))
        .await
        .map_err(|source| ProbeError::Connect {
            host: host.to_string(),
            port,
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;

    fn http(port: u16, expect: Option<u16>) -> Probe {
        Probe::Http {
            host: "127.0.0.1".into(),
            port,
            target: "/health".into(),
            expect,
        }
    }

    /// Serves one connection per entry: answers with that status, or stalls
    /// (reads the request and never answers) for `None`.
    fn server(answers: Vec<Option<u16>>) -> (u16, std::thread::JoinHandle<()>) {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().expect("addr").port();
        let t = std::thread::spawn(move || {
            let mut stalled = Vec::new();
            for a in answers {
                let (mut s, _) = l.accept().expect("accept");
                // The whole request head is read: closing with unread
                // input would reset the connection before the answer lands.
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                match a {
                    Some(code) => {
                        let _ = write!(
                            s,
                            "HTTP/1.1 {code} X\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
                        );
                    }
                    None => stalled.push(s),
                }
            }
            // A stalled connection stays open until the client gives up.
            for mut s in stalled {
                let _ = s.read(&mut [0u8; 16]);
            }
        });
        (port, t)
    }

    #[tokio::test]
    async fn http_status_decides_and_a_stall_times_out() {
        let (port, t) = server(vec![Some(200), Some(500), Some(204), Some(204), None]);
        let d = Duration::from_secs(5);
        http(port, None).run(d).await.expect("200 passes");
        let e = http(port, None)
            .run(d)
            .await
            .expect_err("500 fails")
            .to_string();
        assert!(e.contains("answered 500, expected 2xx"), "{e}");
        http(port, Some(204)).run(d).await.expect("204 passes");
        let e = http(port, Some(200))
            .run(d)
            .await
            .expect_err("204 is not 200")
            .to_string();
        assert!(e.contains("expected 200"), "{e}");
        let started = std::time::Instant::now();
        let e = http(port, None)
            .run(Duration::from_millis(300))
            .await
            .expect_err("a stall fails")
            .to_string();
        assert!(e.contains("no answer within 300ms"), "{e}");
        assert!(started.elapsed() < Duration::from_secs(3));
        t.join().expect("server");
    }

    #[tokio::test]
    async fn tcp_connects_or_fails() {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().expect("addr").port();
        let p = Probe::Tcp {
            host: "127.0.0.1".into(),
            port,
        };
        p.run(Duration::from_secs(5)).await.expect("open");
        drop(l);
        let e = p
            .run(Duration::from_secs(5))
            .await
            .expect_err("closed")
            .to_string();
        assert!(e.contains("cannot connect to 127.0.0.1"), "{e}");
    }

    #[test]
    fn an_exec_check_has_no_probe_and_a_bad_target_is_an_error() {
        let e = Probe::of(&autopilot_core::HealthCheck::exec(&["true"])).expect_err("exec");
        assert!(matches!(e, ProbeError::NotNative), "{e:?}");
        let e = Probe::of(&autopilot_core::HealthCheck::Tcp {
            address: "nope".into(),
        })
        .expect_err("no port");
        assert_eq!(
            e.to_string(),
            "unusable check target: 'nope' is not host:port"
        );
        assert!(std::error::Error::source(&e).is_some());
        let p = Probe::of(&autopilot_core::HealthCheck::Http {
            url: "http://127.0.0.1:81/h".into(),
            expect: None,
        })
        .expect("http");
        assert_eq!(p, http(81, None).with_target("/h"));
    }

    impl Probe {
        fn with_target(mut self, t: &str) -> Probe {
            if let Probe::Http { target, .. } = &mut self {
                *target = t.to_string();
            }
            self
        }
    }
}
