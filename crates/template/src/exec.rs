//! Evaluation of a parsed template against data and a function table, within a step, size and time budget.

use std::collections::BTreeMap;
use std::time::Instant;

use crate::parse::{Arg, Command, Node, Pipeline};
use crate::{Error, Funcs, Limits, Value};

/// How many steps pass between two looks at the clock.
const CLOCK_EVERY: u64 = 16;

/// How a list of nodes ended: normally, or at a `{{break}}`/`{{continue}}`
/// that the nearest enclosing `range` acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flow {
    Normal,
    Break,
    Continue,
}

pub(crate) struct Exec<'a> {
    src: &'a str,
    funcs: &'a Funcs,
    defs: &'a BTreeMap<String, Vec<Node>>,
    /// Blocks and template calls entered and not yet left: bounded by
    /// `max_depth`, so a self-recursive template ends with an error, not a
    /// stack overflow.
    depth: usize,
    vars: Vec<(String, Value)>,
    pub out: String,
    limits: &'a Limits,
    steps: u64,
    started: Instant,
    /// Time spent in caller-installed functions, which the clock skips.
    external: std::time::Duration,
    /// The action being evaluated, so text and size errors point near it.
    at: usize,
}

impl<'a> Exec<'a> {
    pub fn new(
        src: &'a str,
        funcs: &'a Funcs,
        defs: &'a BTreeMap<String, Vec<Node>>,
        data: Value,
        limits: &'a Limits,
    ) -> Self {
        Exec {
            src,
            funcs,
            defs,
            depth: 0,
            vars: vec![("$".to_string(), data)],
            out: String::new(),
            limits,
            steps: 0,
            started: Instant::now(),
            at: 0,
            external: std::time::Duration::ZERO,
        }
    }

    fn err(&self, pos: usize, msg: impl Into<String>) -> Error {
        Error::at(self.src, pos, msg)
    }

    /// Counts one step against the budget, and looks at the clock now and then.
    fn tick(&mut self, pos: usize) -> Result<(), Error> {
        self.at = pos;
        self.steps = self.steps.saturating_add(1);
        if self.steps > self.limits.max_steps {
            return Err(self.err(
                pos,
                format!(
                    "template needs more than {} evaluation steps",
                    self.limits.max_steps
                ),
            ));
        }
        if self.steps.is_multiple_of(CLOCK_EVERY)
            && self.started.elapsed().saturating_sub(self.external) > self.limits.max_time
        {
            return Err(self.err(
                pos,
                format!(
                    "template took longer than {:?} to render",
                    self.limits.max_time
                ),
            ));
        }
        Ok(())
    }

    fn check_size(&self, pos: usize, len: usize, what: &str) -> Result<(), Error> {
        if len > self.limits.max_output {
            return Err(self.err(
                pos,
                format!("{what} is larger than {} bytes", self.limits.max_output),
            ));
        }
        Ok(())
    }

    /// Walks a nested list (a block body or a called template), counting
    /// it against the depth bound.
    fn nested(
        &mut self,
        pos: usize,
        dot: &Value,
        nodes: &[Node],
        what: &str,
    ) -> Result<Flow, Error> {
        if self.depth >= self.limits.max_depth {
            return Err(self.err(
                pos,
                format!("{what} nested deeper than {}", self.limits.max_depth),
            ));
        }
        self.depth = self.depth.saturating_add(1);
        let flow = self.walk(dot, nodes);
        self.depth = self.depth.saturating_sub(1);
        flow
    }

    pub fn walk(&mut self, dot: &Value, nodes: &[Node]) -> Result<Flow, Error> {
        for node in nodes {
            let flow = match node {
                Node::Text(t) => {
                    self.tick(self.at)?;
                    self.out.push_str(t);
                    Flow::Normal
                }
                Node::Action(p) => {
                    self.tick(p.pos)?;
                    let v = self.pipeline(dot, p)?;
                    if p.decl.is_empty() {
                        use std::fmt::Write;
                        let _ = write!(self.out, "{v}");
                    }
                    self.check_size(p.pos, self.out.len(), "rendered output")?;
                    Flow::Normal
                }
                Node::If {
                    pipe,
                    then,
                    otherwise,
                } => {
                    self.tick(pipe.pos)?;
                    let mark = self.vars.len();
                    let v = self.pipeline(dot, pipe)?;
                    let branch = if v.truthy() { then } else { otherwise };
                    let flow = self.nested(pipe.pos, dot, branch, "blocks")?;
                    self.vars.truncate(mark);
                    flow
                }
                Node::With {
                    pipe,
                    body,
                    otherwise,
                } => {
                    self.tick(pipe.pos)?;
                    let mark = self.vars.len();
                    let v = self.pipeline(dot, pipe)?;
                    let flow = if v.truthy() {
                        self.nested(pipe.pos, &v, body, "blocks")?
                    } else {
                        self.nested(pipe.pos, dot, otherwise, "blocks")?
                    };
                    self.vars.truncate(mark);
                    flow
                }
                Node::Range {
                    pipe,
                    body,
                    otherwise,
                } => {
                    self.tick(pipe.pos)?;
                    self.range(dot, pipe, body, otherwise)?
                }
                Node::Template { pos, name, pipe } => {
                    self.tick(*pos)?;
                    self.template(dot, *pos, name, pipe.as_ref())?;
                    Flow::Normal
                }
                Node::Break(pos) => {
                    self.tick(*pos)?;
                    Flow::Break
                }
                Node::Continue(pos) => {
                    self.tick(*pos)?;
                    Flow::Continue
                }
            };
            self.check_size(self.at, self.out.len(), "rendered output")?;
            if flow != Flow::Normal {
                return Ok(flow);
            }
        }
        Ok(Flow::Normal)
    }

    /// `{{template "name" pipeline}}`: the named body runs with the
    /// pipeline's value as both dot and `$`, and sees no caller variables.
    fn template(
        &mut self,
        dot: &Value,
        pos: usize,
        name: &str,
        pipe: Option<&Pipeline>,
    ) -> Result<(), Error> {
        let defs = self.defs;
        let body = defs
            .get(name)
            .ok_or_else(|| self.err(pos, format!("template {name:?} not defined")))?;
        let arg = match pipe {
            Some(p) => self.pipeline(dot, p)?,
            None => Value::Nil,
        };
        let saved = std::mem::replace(&mut self.vars, vec![("$".to_string(), arg.clone())]);
        let flow = self.nested(pos, &arg, body, "template calls");
        self.vars = saved;
        flow.map(|_| ())
    }

    fn range(
        &mut self,
        dot: &Value,
        pipe: &Pipeline,
        body: &[Node],
        otherwise: &[Node],
    ) -> Result<Flow, Error> {
        let mark = self.vars.len();
        // The declared variables name the key/index and element, so evaluate
        // the pipeline without declaring.
        let undeclared = Pipeline {
            decl: Vec::new(),
            ..pipe.clone()
        };
        let v = self.pipeline(dot, &undeclared)?;
        if matches!(v, Value::Int(_) | Value::Uint(_)) && pipe.decl.len() > 1 {
            return Err(self.err(
                pipe.pos,
                format!("can't use {v} to iterate over more than one variable"),
            ));
        }
        // Items are produced one at a time: `range 1000000000` must run out of
        // budget, not build a billion-element list first. A negative count
        // runs no iteration, as Go's `for i := 0; i < n; i++`.
        let mut items: Box<dyn Iterator<Item = (Value, Value)>> = match v {
            Value::List(l) => Box::new(l.into_iter().zip(0i64..).map(|(e, i)| (Value::Int(i), e))),
            Value::Map(m) => Box::new(m.into_iter().map(|(k, e)| (Value::Str(k), e))),
            Value::Int(n) => Box::new((0..n.max(0)).map(|i| (Value::Int(i), Value::Int(i)))),
            Value::Uint(n) => Box::new((0..n).map(|i| (Value::Uint(i), Value::Uint(i)))),
            Value::Nil => Box::new(std::iter::empty()),
            other => {
                return Err(self.err(
                    pipe.pos,
                    format!("range can't iterate over {}", other.type_name()),
                ));
            }
        };
        let Some(first) = items.next() else {
            let flow = self.nested(pipe.pos, dot, otherwise, "blocks")?;
            self.vars.truncate(mark);
            return Ok(flow);
        };
        for (k, e) in std::iter::once(first).chain(items) {
            self.tick(pipe.pos)?;
            let inner = self.vars.len();
            match pipe.decl.as_slice() {
                [] => {}
                [one] => self.vars.push((one.clone(), e.clone())),
                [a, b, ..] => {
                    self.vars.push((a.clone(), k));
                    self.vars.push((b.clone(), e.clone()));
                }
            }
            let flow = self.nested(pipe.pos, &e, body, "blocks")?;
            self.vars.truncate(inner);
            if flow == Flow::Break {
                break;
            }
        }
        self.vars.truncate(mark);
        Ok(Flow::Normal)
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
        self.tick(cmd.pos)?;
        let Some((first, rest)) = cmd.args.split_first() else {
            return Err(self.err(cmd.pos, "missing value for command"));
        };
        if let Arg::Ident(name) = first {
            if (name == "and" || name == "or")
                && !self.funcs.is_external(name)
                && self.funcs.get(name).is_some()
            {
                return self.and_or(dot, name == "and", rest, piped, cmd.pos);
            }
            let mut args = Vec::with_capacity(cmd.args.len());
            for a in rest {
                args.push(self.arg(dot, a, cmd.pos)?);
            }
            if let Some(p) = piped {
                args.push(p);
            }
            return self.call(name, &args, cmd.pos);
        }
        if !rest.is_empty() || piped.is_some() {
            return Err(self.err(cmd.pos, "can't give argument to non-function"));
        }
        self.arg(dot, first, cmd.pos)
    }

    /// Go's `and`/`or`: operands are evaluated left to right only until one
    /// decides the result, which is returned (a piped value comes last).
    fn and_or(
        &mut self,
        dot: &Value,
        is_and: bool,
        args: &[Arg],
        piped: Option<Value>,
        pos: usize,
    ) -> Result<Value, Error> {
        let name = if is_and { "and" } else { "or" };
        if args.is_empty() && piped.is_none() {
            return Err(self.err(
                pos,
                format!("wrong number of args for {name}: want at least 1 got 0"),
            ));
        }
        let mut last = Value::Nil;
        for a in args {
            last = self.arg(dot, a, pos)?;
            if last.truthy() != is_and {
                return Ok(last);
            }
        }
        Ok(piped.unwrap_or(last))
    }

    fn call(&mut self, name: &str, args: &[Value], pos: usize) -> Result<Value, Error> {
        let f = self
            .funcs
            .get(name)
            .ok_or_else(|| self.err(pos, format!("function {name:?} not defined")))?;
        let external = self.funcs.is_external(name).then(Instant::now);
        let v = f(args);
        if let Some(t) = external {
            self.external = self.external.saturating_add(t.elapsed());
        }
        let v = v.map_err(|e| self.err(pos, format!("error calling {name}: {e}")))?;
        // Strings can double on every step (`$x = printf "%s%s" $x $x`), so
        // each result is held to the output bound, not only the final text.
        if let Value::Str(s) = &v {
            self.check_size(pos, s.len(), &format!("the result of {name}"))?;
        }
        Ok(v)
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
                self.tick(pos)?;
                self.call(name, &[], pos)
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
