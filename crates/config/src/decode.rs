//! Typed reading of the JSON5 tree: field paths, unknown keys and the value shapes ContainerPilot accepts.

use std::path::Path;
use std::time::Duration;

use crate::ConfigError;
use crate::json5::{Kind, Node};

/// The longest duration any field accepts: ten years of 365 days. Longer
/// values are typos or attacks, and would overflow timers downstream.
pub const MAX_DURATION: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// A non-negative number of seconds as a duration, at most [`MAX_DURATION`].
fn secs(n: f64) -> Option<Duration> {
    Duration::try_from_secs_f64(n)
        .ok()
        .filter(|d| *d <= MAX_DURATION)
}

fn too_long(what: impl std::fmt::Display) -> String {
    format!("{what} is not a valid duration: it must be between 0 and 10 years (315360000s)")
}

/// Where errors point: the file and its rendered text.
pub(crate) struct Doc<'a> {
    pub file: &'a Path,
    pub src: &'a str,
}

impl Doc<'_> {
    pub fn err(&self, pos: usize, field: &str, message: impl Into<String>) -> ConfigError {
        let (line, column) = autopilot_template::line_col(self.src, pos);
        ConfigError::Invalid {
            file: self.file.to_path_buf(),
            line,
            column,
            field: field.to_string(),
            message: message.into(),
        }
    }
}

/// An object being read: tracks which keys were used so unknown keys can be
/// reported with their position.
pub(crate) struct Obj<'a> {
    doc: &'a Doc<'a>,
    pub path: String,
    pub pos: usize,
    entries: &'a [(String, usize, Node)],
    used: Vec<bool>,
}

pub(crate) fn child(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

impl<'a> Obj<'a> {
    pub fn new(doc: &'a Doc<'a>, node: &'a Node, path: &str) -> Result<Self, ConfigError> {
        match &node.kind {
            Kind::Object(entries) => Ok(Obj {
                doc,
                path: path.to_string(),
                pos: node.pos,
                entries,
                used: vec![false; entries.len()],
            }),
            other => Err(doc.err(
                node.pos,
                path_or_root(path),
                format!("expected an object, found {}", other.type_name()),
            )),
        }
    }

    /// The value at `key` (treating `null` as absent) and its field path.
    pub fn get(&mut self, key: &str) -> Option<Field<'a>> {
        let i = self.entries.iter().position(|(k, _, _)| k == key)?;
        self.used[i] = true;
        let node = &self.entries[i].2;
        if node.kind == Kind::Null {
            return None;
        }
        Some(Field {
            doc: self.doc,
            node,
            path: child(&self.path, key),
        })
    }

    /// Reads an optional field with one of `Field`'s converters.
    pub fn opt<T>(
        &mut self,
        key: &str,
        read: impl FnOnce(&Field<'a>) -> Result<T, ConfigError>,
    ) -> Result<Option<T>, ConfigError> {
        self.get(key).map(|f| read(&f)).transpose()
    }

    /// An optional string-or-array field, empty when absent.
    pub fn strings(&mut self, key: &str) -> Result<Vec<String>, ConfigError> {
        Ok(self.opt(key, Field::strings)?.unwrap_or_default())
    }

    pub fn require(&mut self, key: &str) -> Result<Field<'a>, ConfigError> {
        self.get(key).ok_or_else(|| {
            self.doc
                .err(self.pos, &child(&self.path, key), "this field is required")
        })
    }

    pub fn has(&self, key: &str) -> bool {
        self.entries
            .iter()
            .any(|(k, _, n)| k == key && n.kind != Kind::Null)
    }

    pub fn err(&self, key: &str, message: impl Into<String>) -> ConfigError {
        let pos = self
            .entries
            .iter()
            .find(|(k, _, _)| k == key)
            .map_or(self.pos, |(_, p, _)| *p);
        self.doc.err(pos, &child(&self.path, key), message)
    }

    /// Fails on the first key that was never read.
    pub fn finish(self, known: &[&str]) -> Result<(), ConfigError> {
        for (i, (k, pos, _)) in self.entries.iter().enumerate() {
            if !self.used[i] {
                let lower = k.to_ascii_lowercase();
                let hint = match known.iter().find(|c| {
                    let c = c.to_ascii_lowercase();
                    c == lower
                        || (lower.len() > 2 && (c.starts_with(&lower) || lower.starts_with(&c)))
                }) {
                    Some(c) => format!("unknown field (did you mean {c:?}?)"),
                    None => format!("unknown field; expected one of: {}", known.join(", ")),
                };
                return Err(self.doc.err(*pos, &child(&self.path, k), hint));
            }
        }
        Ok(())
    }
}

fn path_or_root(p: &str) -> &str {
    if p.is_empty() { "(root)" } else { p }
}

/// One value with its field path, and the converters for each shape.
pub(crate) struct Field<'a> {
    pub doc: &'a Doc<'a>,
    pub node: &'a Node,
    pub path: String,
}

impl<'a> Field<'a> {
    pub fn err(&self, message: impl Into<String>) -> ConfigError {
        self.doc.err(self.node.pos, &self.path, message)
    }

    fn wrong(&self, want: &str) -> ConfigError {
        self.err(format!(
            "expected {want}, found {}",
            self.node.kind.type_name()
        ))
    }

    pub fn obj(&self) -> Result<Obj<'a>, ConfigError> {
        Obj::new(self.doc, self.node, &self.path)
    }

    pub fn str(&self) -> Result<String, ConfigError> {
        match &self.node.kind {
            // A NUL can be in no argument, path or environment variable.
            Kind::Str(s) if s.contains('\0') => Err(self.err("a NUL byte is not allowed here")),
            Kind::Str(s) => Ok(s.clone()),
            _ => Err(self.wrong("a string")),
        }
    }

    pub fn bool(&self) -> Result<bool, ConfigError> {
        match &self.node.kind {
            Kind::Bool(b) => Ok(*b),
            _ => Err(self.wrong("true or false")),
        }
    }

    /// An integer, also accepted as a numeric string (templated values often are).
    pub fn int(&self, min: i64, max: i64) -> Result<i64, ConfigError> {
        let v = match &self.node.kind {
            Kind::Number(n) if n.fract() == 0.0 && n.is_finite() => *n as i64,
            Kind::Str(s) => s
                .trim()
                .parse::<i64>()
                .map_err(|_| self.err(format!("expected an integer, found {s:?}")))?,
            Kind::Number(n) => return Err(self.err(format!("expected an integer, found {n}"))),
            _ => return Err(self.wrong("an integer")),
        };
        if v < min || v > max {
            return Err(self.err(format!("{v} is out of range ({min}..={max})")));
        }
        Ok(v)
    }

    pub fn array(&self) -> Result<Vec<Field<'a>>, ConfigError> {
        match &self.node.kind {
            Kind::Array(items) => Ok(items
                .iter()
                .enumerate()
                .map(|(i, node)| Field {
                    doc: self.doc,
                    node,
                    path: format!("{}[{i}]", self.path),
                })
                .collect()),
            _ => Err(self.wrong("an array")),
        }
    }

    /// A string or an array of strings.
    pub fn strings(&self) -> Result<Vec<String>, ConfigError> {
        match &self.node.kind {
            Kind::Str(_) => Ok(vec![self.str()?]),
            Kind::Array(_) => self.array()?.iter().map(Field::str).collect(),
            _ => Err(self.wrong("a string or an array of strings")),
        }
    }

    /// A command: an array, or a string split shell-style (quotes respected,
    /// no shell run). ContainerPilot split on single spaces, which broke
    /// `sh -c 'echo hi'`.
    pub fn exec(&self) -> Result<Vec<String>, ConfigError> {
        let argv = match &self.node.kind {
            Kind::Str(s) => shlex::split(&self.str()?).ok_or_else(|| {
                self.err(format!("unbalanced quotes or trailing backslash in {s:?}"))
            })?,
            Kind::Array(_) => self.strings()?,
            _ => return Err(self.wrong("a string or an array of strings")),
        };
        if argv.first().is_none_or(|a| a.is_empty()) {
            return Err(self.err("the command is empty"));
        }
        Ok(argv)
    }

    /// A duration: a number of seconds, or a Go duration string ("500ms",
    /// "1m30s"; a bare number in a string is seconds too).
    pub fn duration(&self) -> Result<Duration, ConfigError> {
        match &self.node.kind {
            Kind::Number(n) => secs(*n).ok_or_else(|| self.err(too_long(n))),
            Kind::Str(s) => parse_duration(s).map_err(|e| self.err(e)),
            _ => Err(self.wrong("a duration (seconds, or a string such as \"10s\")")),
        }
    }

    /// A duration that must be at least 1 ms.
    pub fn positive_duration(&self) -> Result<Duration, ConfigError> {
        let d = self.duration()?;
        if d < Duration::from_millis(1) {
            return Err(self.err("must be at least 1ms"));
        }
        Ok(d)
    }
}

/// Go's `time.ParseDuration` syntax, plus a bare number meaning seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if t.is_empty() {
        return Err("empty duration".into());
    }
    if let Ok(n) = t.parse::<f64>() {
        return secs(n).ok_or_else(|| too_long(format!("{s:?}")));
    }
    if t.starts_with('-') {
        return Err(format!("{s:?}: a duration cannot be negative"));
    }
    let mut rest = t.strip_prefix('+').unwrap_or(t);
    let mut total = 0f64;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_len == 0 {
            return Err(format!("{s:?} is not a valid duration (expected a number)"));
        }
        let n: f64 = rest[..num_len]
            .parse()
            .map_err(|_| format!("{s:?} is not a valid duration"))?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        let scale = match unit {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "" => {
                return Err(format!("{s:?} is missing a unit (ns, us, ms, s, m or h)"));
            }
            u => return Err(format!("{s:?} has an unknown unit {u:?}")),
        };
        // Float arithmetic cannot trap: an overflow becomes infinity,
        // which `secs` refuses.
        total += n * scale;
        rest = &rest[unit_len..];
    }
    secs(total).ok_or_else(|| too_long(format!("{s:?}")))
}

#[cfg(test)]
mod tests {
    use super::parse_duration;
    use std::time::Duration;

    #[test]
    fn go_durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1.5h"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("2us"), Ok(Duration::from_micros(2)));
        assert!(parse_duration("10x").is_err());
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("1s2").is_err());
        assert_eq!(parse_duration("87600h"), Ok(super::MAX_DURATION));
        for huge in [
            "87601h",
            "1e20",
            "1e400",
            "NaN",
            "inf",
            "-0.5",
            &"9".repeat(400),
            "99999999999999999999h",
        ] {
            let e = parse_duration(huge).expect_err(huge);
            assert!(e.contains("10 years"), "{huge}: {e}");
        }
    }
}
