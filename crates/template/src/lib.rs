//! Go text/template rendering: the syntax ContainerPilot configs are written in.
//!
//! Supported: text and actions with `{{-`/`-}}` trimming and comments;
//! pipelines with `|`; fields on the dot and on variables; `$x :=`/`=`;
//! `if`/`else if`/`else`, `range` (lists, maps, ints) and `with`; string, raw
//! string, char, number, bool and nil literals. Not supported:
//! `define`/`template`/`block`. Missing map keys render as "".

mod exec;
mod funcs;
mod parse;
mod value;

pub use funcs::{Func, Funcs, one as arg1, two as arg2};
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

/// 1-based line and column (in characters) of a byte offset.
pub fn line_col(src: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(src.len());
    let before = &src[..src.floor_char_boundary(offset)];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

/// A parsed template, ready to render any number of times.
#[derive(Debug, Clone)]
pub struct Template {
    src: String,
    nodes: Vec<parse::Node>,
}

impl Template {
    pub fn parse(src: &str) -> Result<Self, Error> {
        Ok(Template {
            src: src.to_string(),
            nodes: parse::parse(src)?,
        })
    }

    pub fn render(&self, data: &Value, funcs: &Funcs) -> Result<String, Error> {
        let mut ex = exec::Exec {
            src: &self.src,
            funcs,
            vars: vec![("$".to_string(), data.clone())],
            out: String::new(),
        };
        ex.walk(data, &self.nodes)?;
        Ok(ex.out)
    }
}

/// Renders `src` with the environment as data (`{{ .VAR }}`) and the
/// ContainerPilot function set, as a config file is rendered.
pub fn render_env(
    src: &str,
    env: &std::collections::BTreeMap<String, String>,
) -> Result<String, Error> {
    let data = Value::Map(
        env.iter()
            .map(|(k, v)| (k.clone(), Value::Str(v.clone())))
            .collect(),
    );
    Template::parse(src)?.render(&data, &Funcs::with_env(env.clone()))
}

#[cfg(test)]
mod tests;
