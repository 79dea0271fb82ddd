//! Lexing and parsing of Go text/template source into a small syntax tree.

use crate::{Error, Value};

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Node {
    Text(String),
    Action(Pipeline),
    If {
        pipe: Pipeline,
        then: Vec<Node>,
        otherwise: Vec<Node>,
    },
    Range {
        pipe: Pipeline,
        body: Vec<Node>,
        otherwise: Vec<Node>,
    },
    With {
        pipe: Pipeline,
        body: Vec<Node>,
        otherwise: Vec<Node>,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Pipeline {
    pub pos: usize,
    pub decl: Vec<String>,
    /// `=` re-assigns existing variables, `:=` declares new ones.
    pub assign: bool,
    pub cmds: Vec<Command>,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Command {
    pub pos: usize,
    pub args: Vec<Arg>,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Arg {
    /// `.`, or `.A.B` on the current dot.
    Dot(Vec<String>),
    /// `$x`, or `$x.A.B`.
    Var(String, Vec<String>),
    Lit(Value),
    Ident(String),
    /// `(pipeline)`, optionally followed by `.A.B`.
    Sub(Box<Pipeline>, Vec<String>),
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Pipe,
    LParen,
    RParen,
    Comma,
    Declare,
    Assign,
    Str(String),
    Num(Value),
    Field(String),
    Dot,
    Var(String),
    Ident(String),
}

#[derive(Debug, Clone)]
struct Token {
    tok: Tok,
    pos: usize,
    /// Whether whitespace separated this token from the previous one; a field
    /// chain only binds to an operand it touches (`$x.Foo`, `(f).Bar`).
    spaced: bool,
}

/// One `{{ ... }}` action, already tokenised.
struct Action {
    pos: usize,
    toks: Vec<Token>,
}

enum Piece {
    Text(String),
    Action(Action),
}

pub(crate) fn parse(src: &str, max_depth: usize) -> Result<Vec<Node>, Error> {
    let pieces = split(src, max_depth)?;
    let mut p = Parser {
        src,
        pieces: pieces.into_iter().peekable(),
        depth: 0,
        max_depth,
    };
    let (nodes, end) = p.list()?;
    match end {
        Term::Eof => Ok(nodes),
        Term::End(pos) => Err(Error::at(src, pos, "unexpected {{end}}")),
        Term::Else(pos, _) => Err(Error::at(src, pos, "unexpected {{else}}")),
    }
}

/// Splits the source into text and actions, applying `{{-` / `-}}` trimming
/// and dropping comments.
#[allow(
    clippy::arithmetic_side_effects,
    reason = "byte and token offsets only grow up to the source length, which fits in usize"
)]
fn split(src: &str, max_depth: usize) -> Result<Vec<Piece>, Error> {
    let mut out = Vec::new();
    let mut rest = 0usize;
    let mut trim_next = false;
    while rest < src.len() {
        let Some(open) = src[rest..].find("{{").map(|i| i + rest) else {
            let mut text = &src[rest..];
            if trim_next {
                text = text.trim_start();
            }
            if !text.is_empty() {
                out.push(Piece::Text(text.to_string()));
            }
            break;
        };
        let mut text = &src[rest..open];
        if trim_next {
            text = text.trim_start();
        }
        let mut inner = open + 2;
        let bytes = src.as_bytes();
        if bytes.get(inner) == Some(&b'-')
            && bytes
                .get(inner + 1)
                .is_some_and(|c| c.is_ascii_whitespace())
        {
            text = text.trim_end();
            inner += 1;
        }
        if !text.is_empty() {
            out.push(Piece::Text(text.to_string()));
        }
        let body_start = inner;
        let trimmed = src[inner..].trim_start();
        if trimmed.starts_with("/*") {
            let start = src.len() - trimmed.len();
            let Some(end) = src[start..].find("*/") else {
                return Err(Error::at(src, open, "unclosed comment"));
            };
            let after = start + end + 2;
            let tail = &src[after..];
            let tail_trim = tail.trim_start();
            if let Some(r) = tail_trim.strip_prefix("-}}") {
                trim_next = true;
                rest = src.len() - r.len();
            } else if let Some(r) = tail_trim.strip_prefix("}}") {
                trim_next = false;
                rest = src.len() - r.len();
            } else {
                return Err(Error::at(
                    src,
                    open,
                    "comment ends before closing delimiter",
                ));
            }
            continue;
        }
        let (toks, close, trim) = lex_action(src, body_start, open, max_depth)?;
        out.push(Piece::Action(Action { pos: open, toks }));
        trim_next = trim;
        rest = close;
    }
    Ok(out)
}

/// Lexes the inside of an action starting at `i`; returns the tokens, the
/// offset just past `}}`, and whether the action asked to trim what follows.
/// Parentheses nested deeper than `max_depth` are refused here, so the
/// recursive parse of sub-pipelines stays shallow and linear.
#[allow(
    clippy::arithmetic_side_effects,
    reason = "byte and token offsets only grow up to the source length, which fits in usize"
)]
fn lex_action(
    src: &str,
    mut i: usize,
    open: usize,
    max_depth: usize,
) -> Result<(Vec<Token>, usize, bool), Error> {
    let b = src.as_bytes();
    let mut toks = Vec::new();
    let mut spaced = true;
    let mut parens = 0usize;
    loop {
        let Some(&c) = b.get(i) else {
            return Err(Error::at(src, open, "unclosed action"));
        };
        if c.is_ascii_whitespace() {
            let ws_start = i;
            while b.get(i).is_some_and(|c| c.is_ascii_whitespace()) {
                i += 1;
            }
            if src[i..].starts_with("-}}") {
                return Ok((toks, i + 3, true));
            }
            spaced = i > ws_start;
            continue;
        }
        if src[i..].starts_with("}}") {
            return Ok((toks, i + 2, false));
        }
        let pos = i;
        let tok = match c {
            b'|' => {
                i += 1;
                Tok::Pipe
            }
            b'(' => {
                parens += 1;
                if parens > max_depth {
                    return Err(Error::at(
                        src,
                        i,
                        format!("parentheses nested deeper than {max_depth}"),
                    ));
                }
                i += 1;
                Tok::LParen
            }
            b')' => {
                parens = parens.saturating_sub(1);
                i += 1;
                Tok::RParen
            }
            b',' => {
                i += 1;
                Tok::Comma
            }
            b':' if b.get(i + 1) == Some(&b'=') => {
                i += 2;
                Tok::Declare
            }
            b'=' => {
                i += 1;
                Tok::Assign
            }
            b'"' => {
                let (s, next) = lex_quoted(src, i)?;
                i = next;
                Tok::Str(s)
            }
            b'`' => {
                let Some(end) = src[i + 1..].find('`') else {
                    return Err(Error::at(src, i, "unterminated raw string"));
                };
                let s = src[i + 1..i + 1 + end].to_string();
                i += end + 2;
                Tok::Str(s)
            }
            b'\'' => {
                let rest = &src[i + 1..];
                let mut chars = rest.chars();
                let ch = match chars.next() {
                    Some('\\') => match chars.next() {
                        Some('n') => '\n',
                        Some('t') => '\t',
                        Some(c) => c,
                        None => return Err(Error::at(src, i, "unterminated character constant")),
                    },
                    Some(c) => c,
                    None => return Err(Error::at(src, i, "unterminated character constant")),
                };
                let used = rest.len() - chars.as_str().len();
                if !chars.as_str().starts_with('\'') {
                    return Err(Error::at(src, i, "unterminated character constant"));
                }
                i += 1 + used + 1;
                Tok::Num(Value::Int(i64::from(u32::from(ch))))
            }
            b'.' => {
                let start = i + 1;
                let mut j = start;
                while b
                    .get(j)
                    .is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'_')
                {
                    j += 1;
                }
                i = j;
                if j == start {
                    Tok::Dot
                } else {
                    Tok::Field(src[start..j].to_string())
                }
            }
            b'$' => {
                let mut j = i + 1;
                while b
                    .get(j)
                    .is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'_')
                {
                    j += 1;
                }
                let name = src[i..j].to_string();
                i = j;
                Tok::Var(name)
            }
            b'-' | b'+' | b'0'..=b'9' => {
                let mut j = i + 1;
                while b
                    .get(j)
                    .is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'.' || *c == b'_')
                {
                    j += 1;
                }
                let text = &src[i..j];
                let v = parse_number(text)
                    .ok_or_else(|| Error::at(src, i, format!("bad number syntax: {text:?}")))?;
                i = j;
                Tok::Num(v)
            }
            c if c.is_ascii_alphabetic() || c == b'_' => {
                let mut j = i;
                while b
                    .get(j)
                    .is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'_')
                {
                    j += 1;
                }
                let word = src[i..j].to_string();
                i = j;
                Tok::Ident(word)
            }
            _ => {
                let ch = src[i..].chars().next().unwrap_or('?');
                return Err(Error::at(src, i, format!("unexpected {ch:?} in action")));
            }
        };
        toks.push(Token { tok, pos, spaced });
        spaced = false;
    }
}

fn parse_number(text: &str) -> Option<Value> {
    let clean = text.replace('_', "");
    let (neg, digits) = match clean.strip_prefix('-') {
        Some(d) => (true, d),
        None => (false, clean.strip_prefix('+').unwrap_or(&clean)),
    };
    let signed = |v: i64| if neg { v.checked_neg() } else { Some(v) };
    if let Some(hex) = digits
        .strip_prefix("0x")
        .or_else(|| digits.strip_prefix("0X"))
    {
        return i64::from_str_radix(hex, 16)
            .ok()
            .and_then(signed)
            .map(Value::Int);
    }
    if let Ok(v) = digits.parse::<i64>() {
        return signed(v).map(Value::Int);
    }
    digits
        .parse::<f64>()
        .ok()
        .filter(|f| f.is_finite())
        .map(|f| Value::Float(if neg { -f } else { f }))
}

#[allow(
    clippy::arithmetic_side_effects,
    reason = "byte and token offsets only grow up to the source length, which fits in usize"
)]
fn lex_quoted(src: &str, start: usize) -> Result<(String, usize), Error> {
    let mut out = String::new();
    let mut chars = src[start + 1..].char_indices();
    while let Some((off, c)) = chars.next() {
        match c {
            '"' => return Ok((out, start + 1 + off + 1)),
            '\n' => break,
            '\\' => match chars.next() {
                Some((_, 'n')) => out.push('\n'),
                Some((_, 't')) => out.push('\t'),
                Some((_, 'r')) => out.push('\r'),
                Some((_, '\\')) => out.push('\\'),
                Some((_, '"')) => out.push('"'),
                Some((_, '\'')) => out.push('\''),
                Some((_, 'u')) => {
                    let hex: String = (0..4)
                        .filter_map(|_| chars.next().map(|(_, c)| c))
                        .collect();
                    let ch = u32::from_str_radix(&hex, 16)
                        .ok()
                        .and_then(char::from_u32)
                        .ok_or_else(|| Error::at(src, start, "bad \\u escape in string"))?;
                    out.push(ch);
                }
                Some((_, other)) => {
                    return Err(Error::at(
                        src,
                        start,
                        format!("unknown escape sequence \\{other}"),
                    ));
                }
                None => break,
            },
            c => out.push(c),
        }
    }
    Err(Error::at(src, start, "unterminated quoted string"))
}

enum Term {
    Eof,
    End(usize),
    Else(usize, Vec<Token>),
}

struct Parser<'a> {
    src: &'a str,
    pieces: std::iter::Peekable<std::vec::IntoIter<Piece>>,
    /// Current nesting of `if`/`with`/`range` (and `else if` links).
    depth: usize,
    max_depth: usize,
}

impl Parser<'_> {
    fn err(&self, pos: usize, msg: impl Into<String>) -> Error {
        Error::at(self.src, pos, msg)
    }

    /// Parses nodes until end of input, `{{end}}` or `{{else ...}}`.
    fn list(&mut self) -> Result<(Vec<Node>, Term), Error> {
        let mut nodes = Vec::new();
        while let Some(piece) = self.pieces.next() {
            let action = match piece {
                Piece::Text(t) => {
                    nodes.push(Node::Text(t));
                    continue;
                }
                Piece::Action(a) => a,
            };
            let pos = action.pos;
            let mut toks = action.toks;
            let keyword = match toks.first() {
                Some(Token {
                    tok: Tok::Ident(w), ..
                }) => w.clone(),
                None => return Err(self.err(pos, "missing value for command")),
                _ => String::new(),
            };
            match keyword.as_str() {
                "end" => {
                    if toks.len() > 1 {
                        return Err(self.err(pos, "unexpected tokens after end"));
                    }
                    return Ok((nodes, Term::End(pos)));
                }
                "else" => {
                    toks.remove(0);
                    return Ok((nodes, Term::Else(pos, toks)));
                }
                "if" | "range" | "with" => {
                    toks.remove(0);
                    nodes.push(self.control(&keyword, pos, toks)?);
                }
                "define" | "template" | "block" | "break" | "continue" => {
                    return Err(self.err(pos, format!("{{{{{keyword}}}}} is not supported")));
                }
                _ => nodes.push(Node::Action(self.pipeline(pos, toks, true)?)),
            }
        }
        Ok((nodes, Term::Eof))
    }

    fn control(&mut self, kw: &str, pos: usize, toks: Vec<Token>) -> Result<Node, Error> {
        if self.depth >= self.max_depth {
            return Err(self.err(
                pos,
                format!("{{{{{kw}}}}} nested deeper than {}", self.max_depth),
            ));
        }
        self.depth = self.depth.saturating_add(1);
        let node = self.control_body(kw, pos, toks);
        self.depth = self.depth.saturating_sub(1);
        node
    }

    fn control_body(&mut self, kw: &str, pos: usize, toks: Vec<Token>) -> Result<Node, Error> {
        let pipe = self.pipeline(pos, toks, true)?;
        let (body, end) = self.list()?;
        let otherwise = match end {
            Term::Eof => {
                return Err(self.err(
                    pos,
                    format!("unexpected EOF: {{{{{kw}}}}} without {{{{end}}}}"),
                ));
            }
            Term::End(_) => Vec::new(),
            Term::Else(epos, rest) if rest.is_empty() => {
                let (other, end) = self.list()?;
                match end {
                    Term::End(_) => other,
                    _ => {
                        return Err(self.err(
                            epos,
                            format!("{{{{else}}}} of {{{{{kw}}}}} without {{{{end}}}}"),
                        ));
                    }
                }
            }
            Term::Else(epos, mut rest) => {
                // `{{else if x}}` / `{{else with x}}` chain: the nested block
                // shares the outer block's `{{end}}`.
                let nested_kw = match rest.first() {
                    Some(Token {
                        tok: Tok::Ident(w), ..
                    }) if w == "if" || w == "with" => w.clone(),
                    _ => return Err(self.err(epos, "unexpected tokens after else")),
                };
                rest.remove(0);
                vec![self.control(&nested_kw, epos, rest)?]
            }
        };
        Ok(match kw {
            "if" => Node::If {
                pipe,
                then: body,
                otherwise,
            },
            "range" => Node::Range {
                pipe,
                body,
                otherwise,
            },
            _ => Node::With {
                pipe,
                body,
                otherwise,
            },
        })
    }

    #[allow(
        clippy::arithmetic_side_effects,
        reason = "byte and token offsets only grow up to the source length, which fits in usize"
    )]
    fn pipeline(&self, pos: usize, toks: Vec<Token>, allow_decl: bool) -> Result<Pipeline, Error> {
        let mut toks = toks.into_iter().peekable();
        let mut decl = Vec::new();
        let mut assign = false;
        // Variable declarations: `$x :=`, `$i, $e :=`, `$x =`.
        let snapshot: Vec<Token> = toks.clone().collect();
        if allow_decl
            && matches!(
                snapshot.first(),
                Some(Token {
                    tok: Tok::Var(_),
                    ..
                })
            )
        {
            let mut j = 0;
            let mut names = Vec::new();
            let mut found = None;
            while let Some(Token {
                tok: Tok::Var(v), ..
            }) = snapshot.get(j)
            {
                names.push(v.clone());
                match snapshot.get(j + 1).map(|t| &t.tok) {
                    Some(Tok::Comma) => j += 2,
                    Some(Tok::Declare) => {
                        found = Some((j + 2, false));
                        break;
                    }
                    Some(Tok::Assign) => {
                        found = Some((j + 2, true));
                        break;
                    }
                    _ => break,
                }
            }
            if let Some((skip, is_assign)) = found {
                if names.len() > 2 {
                    return Err(self.err(pos, "too many declarations"));
                }
                decl = names;
                assign = is_assign;
                for _ in 0..skip {
                    toks.next();
                }
            }
        }
        let rest: Vec<Token> = toks.collect();
        let cmds = self.commands(pos, &rest)?;
        if cmds.is_empty() {
            return Err(self.err(pos, "missing value for command"));
        }
        Ok(Pipeline {
            pos,
            decl,
            assign,
            cmds,
        })
    }

    #[allow(
        clippy::arithmetic_side_effects,
        reason = "byte and token offsets only grow up to the source length, which fits in usize"
    )]
    fn commands(&self, pos: usize, toks: &[Token]) -> Result<Vec<Command>, Error> {
        let mut cmds = Vec::new();
        let mut i = 0;
        let mut cur = Command {
            pos,
            args: Vec::new(),
        };
        while i < toks.len() {
            let t = &toks[i];
            match &t.tok {
                Tok::Pipe => {
                    if cur.args.is_empty() {
                        return Err(self.err(t.pos, "missing command before |"));
                    }
                    cmds.push(std::mem::replace(
                        &mut cur,
                        Command {
                            pos: t.pos,
                            args: Vec::new(),
                        },
                    ));
                    i += 1;
                }
                _ => {
                    if cur.args.is_empty() {
                        cur.pos = t.pos;
                    }
                    let (arg, next) = self.operand(toks, i)?;
                    cur.args.push(arg);
                    i = next;
                }
            }
        }
        if !cur.args.is_empty() {
            cmds.push(cur);
        } else if !cmds.is_empty() {
            return Err(self.err(pos, "missing command after |"));
        }
        Ok(cmds)
    }

    /// Parses one operand at `toks[i]`, returning it and the next index.
    #[allow(
        clippy::arithmetic_side_effects,
        reason = "byte and token offsets only grow up to the source length, which fits in usize"
    )]
    fn operand(&self, toks: &[Token], i: usize) -> Result<(Arg, usize), Error> {
        let t = &toks[i];
        let mut next = i + 1;
        let chain = |next: &mut usize| {
            let mut fields = Vec::new();
            while let Some(Token {
                tok: Tok::Field(f),
                spaced: false,
                ..
            }) = toks.get(*next)
            {
                fields.push(f.clone());
                *next += 1;
            }
            fields
        };
        let arg = match &t.tok {
            Tok::Dot => Arg::Dot(Vec::new()),
            Tok::Field(f) => {
                let mut fields = vec![f.clone()];
                fields.extend(chain(&mut next));
                Arg::Dot(fields)
            }
            Tok::Var(v) => Arg::Var(v.clone(), chain(&mut next)),
            Tok::Str(s) => Arg::Lit(Value::Str(s.clone())),
            Tok::Num(n) => Arg::Lit(n.clone()),
            Tok::Ident(w) => match w.as_str() {
                "true" => Arg::Lit(Value::Bool(true)),
                "false" => Arg::Lit(Value::Bool(false)),
                "nil" => Arg::Lit(Value::Nil),
                _ => Arg::Ident(w.clone()),
            },
            Tok::LParen => {
                let mut depth = 1;
                let mut j = i + 1;
                while j < toks.len() {
                    match toks[j].tok {
                        Tok::LParen => depth += 1,
                        Tok::RParen => {
                            depth -= 1;
                            if depth == 0 {
                                break;
                            }
                        }
                        _ => {}
                    }
                    j += 1;
                }
                if depth != 0 {
                    return Err(self.err(t.pos, "unclosed left paren"));
                }
                let inner = self.pipeline(t.pos, toks[i + 1..j].to_vec(), false)?;
                next = j + 1;
                Arg::Sub(Box::new(inner), chain(&mut next))
            }
            Tok::RParen => return Err(self.err(t.pos, "unexpected right paren")),
            Tok::Comma => return Err(self.err(t.pos, "unexpected comma")),
            Tok::Declare | Tok::Assign => {
                return Err(self.err(t.pos, "unexpected assignment"));
            }
            Tok::Pipe => return Err(self.err(t.pos, "unexpected |")),
        };
        Ok((arg, next))
    }
}

/// Every function a template calls, with the offset of its command.
pub(crate) fn functions<'a>(nodes: &'a [Node], out: &mut Vec<(&'a str, usize)>) {
    for node in nodes {
        match node {
            Node::Text(_) => {}
            Node::Action(p) => pipeline_functions(p, out),
            Node::If {
                pipe,
                then: body,
                otherwise,
            }
            | Node::Range {
                pipe,
                body,
                otherwise,
            }
            | Node::With {
                pipe,
                body,
                otherwise,
            } => {
                pipeline_functions(pipe, out);
                functions(body, out);
                functions(otherwise, out);
            }
        }
    }
}

fn pipeline_functions<'a>(p: &'a Pipeline, out: &mut Vec<(&'a str, usize)>) {
    for cmd in &p.cmds {
        for arg in &cmd.args {
            match arg {
                Arg::Ident(name) => out.push((name, cmd.pos)),
                Arg::Sub(inner, _) => pipeline_functions(inner, out),
                Arg::Dot(_) | Arg::Var(..) | Arg::Lit(_) => {}
            }
        }
    }
}
