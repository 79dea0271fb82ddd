//! Go text/template rendering: the syntax ContainerPilot configs are written in.
//!
//! Supported as Go does it: text and actions with `{{-`/`-}}` trimming and
//! comments; pipelines with `|`; fields on the dot and on variables; `$`,
//! `$x :=` and `$x =`, checked at parse time; `if`/`else if`/`else`, `with`/
//! `else with`, `range` (lists, maps, ints) with `break`/`continue`;
//! `define`/`template`/`block`; Go's number, char, string, bool and nil
//! literals; Go's built-ins (`and`/`or` short-circuit, comparisons that fail
//! on mixed kinds, `printf` with Go's verbs, `slice`, `index`, `len`, `html`,
//! `js`, `urlquery`, `print`, `println`, `not`). Values have no methods and no
//! function values, so `call` is an error. A missing value prints as "" (Go
//! prints `<no value>`). `tests/go_semantics/cases.rs` is the case table.
//!
//! Templates may come from hostile hands (a config, a catalog-driven source
//! file), so parsing and rendering are bounded by [`Limits`]: nesting depth
//! (parse time; blocks plus template calls at render time), output and string size, a step budget and a wall-clock budget
//! (render time). The built-in functions carry their own fixed caps:
//! [`MAX_LOOP`] elements for `loop` and [`MAX_PRINTF_WIDTH`] for a `printf`
//! width or precision. Exceeding any of them is an [`Error`], never a panic,
//! a hang or an unbounded allocation.

#![deny(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap,
    clippy::cast_precision_loss,
    clippy::arithmetic_side_effects
)]

mod exec;
mod funcs;
mod gofmt;
mod parse;
mod value;

use std::time::Duration;

pub use funcs::{Func, Funcs, MAX_LOOP, one as arg1, two as arg2};
pub use gofmt::MAX_PRINTF_WIDTH;
pub use value::Value;

/// A template error with the 1-based line and column in the template source.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}, column {column}: {message}")]
pub struct Error {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl Error {
    pub(crate) fn at(src: &str, offset: usize, message: impl Into<String>) -> Self {
        let (line, column) = line_col(src, offset);
        Error {
            line,
            column,
            message: message.into(),
        }
    }
}

/// Bounds on one parse and one render. The defaults suit any real config or
/// catalog template; callers may tighten them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Deepest nesting of `if`/`with`/`range`/`block` blocks (an `else if`
    /// counts as one more level, as in Go) and, separately, of parentheses
    /// in one action. At render time, blocks entered plus `template` calls
    /// made and not yet left are held to it too, so a template that calls
    /// itself ends with an error rather than a stack overflow.
    pub max_depth: usize,
    /// Largest rendered output, and largest string any step may produce, in bytes.
    pub max_output: usize,
    /// Most evaluation steps in one render: every node, command and `range`
    /// iteration counts one.
    pub max_steps: u64,
    /// Longest one render may take, not counting time inside functions the
    /// caller installed with [`Funcs::insert`] (they bound their own I/O).
    pub max_time: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_depth: 100,
            max_output: 16 * 1024 * 1024,
            max_steps: 2_000_000,
            max_time: Duration::from_millis(500),
        }
    }
}

/// 1-based line and column (in characters) of a byte offset.
pub fn line_col(src: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(src.len());
    let before = &src[..src.floor_char_boundary(offset)];
    let line = before.matches('\n').count().saturating_add(1);
    let line_start = before.rfind('\n').map_or(0, |i| i.saturating_add(1));
    let column = before
        .get(line_start..)
        .map_or(0, |l| l.chars().count())
        .saturating_add(1);
    (line, column)
}

/// A parsed template, ready to render any number of times.
#[derive(Debug, Clone)]
pub struct Template {
    src: String,
    parsed: parse::Parsed,
}

impl Template {
    /// Parses with the default [`Limits`].
    pub fn parse(src: &str) -> Result<Self, Error> {
        Self::parse_with(src, &Limits::default())
    }

    pub fn parse_with(src: &str, limits: &Limits) -> Result<Self, Error> {
        Ok(Template {
            src: src.to_string(),
            parsed: parse::parse(src, limits.max_depth)?,
        })
    }

    /// Fails on the first function the template calls that is not in
    /// `known`, with its position: unknown names are caught when a template
    /// is loaded rather than at its first render.
    pub fn check_functions<'a>(
        &self,
        known: impl IntoIterator<Item = &'a str>,
    ) -> Result<(), Error> {
        let known: std::collections::HashSet<&str> = known.into_iter().collect();
        let mut calls = Vec::new();
        parse::functions(&self.parsed.nodes, &mut calls);
        for body in self.parsed.defs.values() {
            parse::functions(body, &mut calls);
        }
        match calls.into_iter().find(|(name, _)| !known.contains(name)) {
            Some((name, pos)) => Err(Error::at(
                &self.src,
                pos,
                format!("function {name:?} not defined"),
            )),
            None => Ok(()),
        }
    }

    /// Renders with the default [`Limits`].
    pub fn render(&self, data: &Value, funcs: &Funcs) -> Result<String, Error> {
        self.render_with(data, funcs, &Limits::default())
    }

    pub fn render_with(
        &self,
        data: &Value,
        funcs: &Funcs,
        limits: &Limits,
    ) -> Result<String, Error> {
        let mut ex = exec::Exec::new(&self.src, funcs, &self.parsed.defs, data.clone(), limits);
        ex.walk(data, &self.parsed.nodes)?;
        Ok(ex.out)
    }
}

/// Renders `src` with the environment as data (`{{ .VAR }}`) and the
/// ContainerPilot function set, as a config file is rendered. Unknown
/// functions fail before anything is rendered.
pub fn render_env(
    src: &str,
    env: &std::collections::BTreeMap<String, String>,
) -> Result<String, Error> {
    render_env_with(src, env, &Limits::default())
}

/// [`render_env`] within the given limits.
pub fn render_env_with(
    src: &str,
    env: &std::collections::BTreeMap<String, String>,
    limits: &Limits,
) -> Result<String, Error> {
    let data = Value::Map(
        env.iter()
            .map(|(k, v)| (k.clone(), Value::Str(v.clone())))
            .collect(),
    );
    let funcs = Funcs::with_env(env.clone());
    let tpl = Template::parse_with(src, limits)?;
    tpl.check_functions(funcs.names())?;
    tpl.render_with(&data, &funcs, limits)
}

#[cfg(test)]
mod tests;
