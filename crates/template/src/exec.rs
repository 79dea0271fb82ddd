//! Evaluation of a parsed template against data and a function table.

use crate::parse::{Arg, Command, Node, Pipeline};
use crate::{Error, Funcs, Value};

/// A bound on the rendered size, so a hostile or mistaken template (say a
/// `loop` over a huge range) fails cleanly instead of exhausting memory.
const MAX_OUTPUT: usize = 64 * 1024 * 1024;

pub(crate) struct Exec<'a> {
    pub src: &'a str,
    pub funcs: &'a Funcs,
    pub vars: Vec<(String, Value)>,
    pub out: String,
}

impl Exec<'_> {
    fn err(&self, pos: usize, msg: impl Into<String>) -> Error {
        Error::at(self.src, pos, msg)
    }

    pub fn walk(&mut self, dot: &Value, nodes: &[Node]) -> Result<(), Error> {
        for node in nodes {
            match node {
                Node::Text(t) => self.out.push_str(t),
                Node::Action(p) => {
                    let v = self.pipeline(dot, p)?;
                    if p.decl.is_empty() {
                        use std::fmt::Write;
                        let _ = write!(self.out, "{v}");
                    }
                }
                Node::If {
                    pipe,
                    then,
                    otherwise,
                } => {
                    let mark = self.vars.len();
                    let v = self.pipeline(dot, pipe)?;
                    let branch = if v.truthy() { then } else { otherwise };
                    self.walk(dot, branch)?;
                    self.vars.truncate(mark);
                }
                Node::With {
                    pipe,
                    body,
                    otherwise,
                } => {
                    let mark = self.vars.len();
                    let v = self.pipeline(dot, pipe)?;
                    if v.truthy() {
                        self.walk(&v, body)?;
                    } else {
                        self.walk(dot, otherwise)?;
                    }
                    self.vars.truncate(mark);
                }
                Node::Range {
                    pipe,
                    body,
                    otherwise,
                } => self.range(dot, pipe, body, otherwise)?,
            }
            if self.out.len() > MAX_OUTPUT {
                return Err(Error::at(self.src, 0, "rendered output is too large"));
            }
        }
        Ok(())
    }

    fn range(
        &mut self,
        dot: &Value,
        pipe: &Pipeline,
        body: &[Node],
        otherwise: &[Node],
    ) -> Result<(), Error> {
        let mark = self.vars.len();
        // The declared variables name the key/index and element, so evaluate
        // the pipeline without declaring.
        let undeclared = Pipeline {
            decl: Vec::new(),
            ..pipe.clone()
        };
        let v = self.pipeline(dot, &undeclared)?;
        let items: Vec<(Value, Value)> = match v {
            Value::List(l) => l
                .into_iter()
                .enumerate()
                .map(|(i, e)| (Value::Int(i as i64), e))
                .collect(),
            Value::Map(m) => m.into_iter().map(|(k, e)| (Value::Str(k), e)).collect(),
            Value::Int(n) if n >= 0 => (0..n).map(|i| (Value::Int(i), Value::Int(i))).collect(),
            Value::Nil => Vec::new(),
            other => {
                return Err(self.err(
                    pipe.pos,
                    format!("range can't iterate over {}", other.type_name()),
                ));
            }
        };
        if items.is_empty() {
            self.walk(dot, otherwise)?;
        }
        for (k, e) in items {
            let inner = self.vars.len();
            match pipe.decl.as_slice() {
                [] => {}
                [one] => self.vars.push((one.clone(), e.clone())),
                [a, b, ..] => {
                    self.vars.push((a.clone(), k));
                    self.vars.push((b.clone(), e.clone()));
                }
            }
            self.walk(&e, body)?;
            self.vars.truncate(inner);
        }
        self.vars.truncate(mark);
        Ok(())
    }

    fn pipeline(&mut self, dot: &Value, p: &Pipeline) -> Result<Value, Error> {
        let mut last: Option<Value> = None;
        for cmd in &p.cmds {
            last = Some(self.command(dot, cmd, last)?);
        }
        let v = last.unwrap_or_default();
        for name in &p.decl {
            if p.assign {
                match self.vars.iter_mut().rev().find(|(n, _)| n == name) {
                    Some(slot) => slot.1 = v.clone(),
                    None => return Err(self.err(p.pos, format!("undefined variable: {name}"))),
                }
            } else {
                self.vars.push((name.clone(), v.clone()));
            }
        }
        Ok(v)
    }

    fn command(
        &mut self,
        dot: &Value,
        cmd: &Command,
        piped: Option<Value>,
    ) -> Result<Value, Error> {
        let first = &cmd.args[0];
        if let Arg::Ident(name) = first {
            let mut args = Vec::with_capacity(cmd.args.len());
            for a in &cmd.args[1..] {
                args.push(self.arg(dot, a, cmd.pos)?);
            }
            if let Some(p) = piped {
                args.push(p);
            }
            let f = self
                .funcs
                .get(name)
                .ok_or_else(|| self.err(cmd.pos, format!("function {name:?} not defined")))?;
            return f(&args).map_err(|e| self.err(cmd.pos, format!("error calling {name}: {e}")));
        }
        if cmd.args.len() > 1 || piped.is_some() {
            return Err(self.err(cmd.pos, "can't give argument to non-function"));
        }
        self.arg(dot, first, cmd.pos)
    }

    fn arg(&mut self, dot: &Value, arg: &Arg, pos: usize) -> Result<Value, Error> {
        match arg {
            Arg::Dot(fields) => self.fields(dot.clone(), fields, pos),
            Arg::Var(name, fields) => {
                let base = if name == "$" {
                    self.vars
                        .first()
                        .map(|(_, v)| v.clone())
                        .unwrap_or_default()
                } else {
                    self.vars
                        .iter()
                        .rev()
                        .find(|(n, _)| n == name)
                        .map(|(_, v)| v.clone())
                        .ok_or_else(|| self.err(pos, format!("undefined variable: {name}")))?
                };
                self.fields(base, fields, pos)
            }
            Arg::Lit(v) => Ok(v.clone()),
            Arg::Ident(name) => {
                let f = self
                    .funcs
                    .get(name)
                    .ok_or_else(|| self.err(pos, format!("function {name:?} not defined")))?;
                f(&[]).map_err(|e| self.err(pos, format!("error calling {name}: {e}")))
            }
            Arg::Sub(p, fields) => {
                let v = self.pipeline(dot, p)?;
                self.fields(v, fields, pos)
            }
        }
    }

    fn fields(&self, mut v: Value, fields: &[String], pos: usize) -> Result<Value, Error> {
        for f in fields {
            v = match v {
                Value::Map(mut m) => m.remove(f).unwrap_or_default(),
                Value::Nil => Value::Nil,
                other => {
                    return Err(self.err(
                        pos,
                        format!("can't evaluate field {f} in type {}", other.type_name()),
                    ));
                }
            };
        }
        Ok(v)
    }
}
