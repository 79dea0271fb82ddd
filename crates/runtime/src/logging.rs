//! The agent's log output: level, text or JSON format, and a file target reopened on SIGUSR1.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use autopilot_config::{Level, LogFormat, LogOutput, LoggingConfig};
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

enum Target {
    Stdout,
    Stderr,
    File { path: PathBuf, file: File },
}

/// A handle to the log target, for reopening the file after rotation.
#[derive(Clone)]
pub struct LogHandle {
    target: Arc<Mutex<Target>>,
}

fn open(path: &PathBuf) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

impl LogHandle {
    /// Reopens the log file (after a rotation moved it away); a no-op for
    /// stdout and stderr.
    pub fn reopen(&self) -> io::Result<()> {
        let mut t = self.target.lock().unwrap_or_else(|e| e.into_inner());
        if let Target::File { path, file } = &mut *t {
            *file = open(path).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("cannot reopen log file {}: {e}", path.display()),
                )
            })?;
        }
        Ok(())
    }
}

pub struct Writer(Arc<Mutex<Target>>);

impl Write for Writer {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut t = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match &mut *t {
            Target::Stdout => io::stdout().lock().write_all(buf)?,
            Target::Stderr => io::stderr().lock().write_all(buf)?,
            Target::File { file, .. } => file.write_all(buf)?,
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for LogHandle {
    type Writer = Writer;
    fn make_writer(&'a self) -> Writer {
        Writer(self.target.clone())
    }
}

/// Installs the global subscriber. Called once per process, before the agent starts.
pub fn init(cfg: &LoggingConfig) -> io::Result<LogHandle> {
    let target = match &cfg.output {
        LogOutput::Stdout => Target::Stdout,
        LogOutput::Stderr => Target::Stderr,
        LogOutput::File(path) => Target::File {
            file: open(path).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("cannot open log file {}: {e}", path.display()),
                )
            })?,
            path: path.clone(),
        },
    };
    let handle = LogHandle {
        target: Arc::new(Mutex::new(target)),
    };
    let level = match cfg.level {
        Level::Debug => tracing::Level::DEBUG,
        Level::Info => tracing::Level::INFO,
        Level::Warn => tracing::Level::WARN,
        Level::Error => tracing::Level::ERROR,
    };
    // hickory (the `dns` block's server) logs every query at info: its
    // crates log warnings and errors only, unless the level is debug.
    let hickory = match cfg.level {
        Level::Debug => LevelFilter::DEBUG,
        Level::Error => LevelFilter::ERROR,
        Level::Info | Level::Warn => LevelFilter::WARN,
    };
    let targets = Targets::new()
        .with_default(LevelFilter::TRACE)
        .with_target("hickory_server", hickory)
        .with_target("hickory_proto", hickory)
        .with_target("hickory_net", hickory);
    let builder = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(handle.clone())
        .with_ansi(false);
    let res = match cfg.format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .finish()
            .with(targets)
            .try_init(),
        LogFormat::Text => builder.finish().with(targets).try_init(),
    };
    // A second init (tests, or a re-exec) keeps the first subscriber.
    let _ = res;
    Ok(handle)
}

/// A duration as people write it in configs (`250ms`, `1.5s`, `2m30s`),
/// for log lines: never Rust's debug form.
pub fn dur(d: std::time::Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let secs = d.as_secs();
    if secs < 60 {
        let tenths = (ms % 1000) / 100;
        return if tenths == 0 {
            format!("{secs}s")
        } else {
            format!("{secs}.{tenths}s")
        };
    }
    let (h, m, s) = (secs / 3600, (secs % 3600) / 60, secs % 60);
    if h > 0 {
        format!("{h}h{m}m{s}s")
    } else {
        format!("{m}m{s}s")
    }
}

#[cfg(test)]
mod tests {
    use super::dur;
    use std::time::Duration;

    #[test]
    fn durations_read_as_in_a_config() {
        assert_eq!(dur(Duration::from_millis(250)), "250ms");
        assert_eq!(dur(Duration::from_millis(1500)), "1.5s");
        assert_eq!(dur(Duration::from_secs(10)), "10s");
        assert_eq!(dur(Duration::from_secs(150)), "2m30s");
        assert_eq!(dur(Duration::from_secs(3700)), "1h1m40s");
    }
}
