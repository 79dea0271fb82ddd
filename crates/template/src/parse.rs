//! Lexing and parsing of Go text/template source into a small syntax tree.

use std::collections::BTreeMap;

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
    /// `{{template "name" pipeline}}` (and the call half of `{{block}}`).
    Template {
        pos: usize,
        name: String,
        pipe: Option<Pipeline>,
    },
    Break(usize),
    Continue(usize),
}

/// A parsed source: its main body and the templates it defines.
#[derive(Debug, Clone, Default)]
pub(crate) struct Parsed {
    pub nodes: Vec<Node>,
    pub defs: BTreeMap<String, Vec<Node>>,
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

pub(crate) fn parse(src: &str, max_depth: usize) -> Result<Parsed, Error> {
    let pieces = split(src, max_depth)?;
    let mut p = Parser {
        src,
        pieces: pieces.into_iter().peekable(),
        depth: 0,
        max_depth,
        defs: BTreeMap::new(),
        ranges: 0,
        vars: vec!["$".to_string()],
        in_def: false,
    };
    let (nodes, end) = p.list()?;
    match end {
        Term::Eof => Ok(Parsed {
            nodes,
            defs: p.defs,
        }),
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
                text = text.trim_start_matches(SPACE);
            }
            if !text.is_empty() {
                out.push(Piece::Text(text.to_string()));
            }
            break;
        };
        let mut text = &src[rest..open];
        if trim_next {
            text = text.trim_start_matches(SPACE);
        }
        let mut inner = open + 2;
        let bytes = src.as_bytes();
        if bytes.get(inner) == Some(&b'-') && bytes.get(inner + 1).is_some_and(|c| is_space(*c)) {
            text = text.trim_end_matches(SPACE);
            inner += 2;
        }
        if !text.is_empty() {
            out.push(Piece::Text(text.to_string()));
        }
        // A comment starts right at the delimiter (or its trim marker) and
        // ends right at the closing one, as in Go.
        if src[inner..].starts_with("/*") {
            let Some(end) = src[inner + 2..].find("*/") else {
                return Err(Error::at(src, open, "unclosed comment"));
            };
            let after = inner + 2 + end + 2;
            let tail = &src[after..];
            if let Some(r) = tail.strip_prefix("}}") {
                trim_next = false;
                rest = src.len() - r.len();
            } else if tail.as_bytes().first().is_some_and(|c| is_space(*c))
                && tail[1..].starts_with("-}}")
            {
                trim_next = true;
                rest = after + 4;
            } else {
                return Err(Error::at(
                    src,
                    open,
                    "comment ends before closing delimiter",
                ));
            }
            continue;
        }
        let (toks, close, trim) = lex_action(src, inner, open, max_depth)?;
        out.push(Piece::Action(Action { pos: open, toks }));
        trim_next = trim;
        rest = close;
    }
    Ok(out)
}

/// The white space `{{-` and `-}}` trim: Go's, ASCII only.
const SPACE: &[char] = &[' ', '\t', '\r', '\n'];

fn is_space(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\r' | b'\n')
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
        if is_space(c) {
            if src[i + 1..].starts_with("-}}") {
                return Ok((toks, i + 4, true));
            }
            i += 1;
            spaced = true;
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
                let (ch, next) = lex_char(src, i)?;
                i = next;
                Tok::Num(Value::Int(i64::from(u32::from(ch))))
            }
            // `.5` is a number; `.Name` a field; `.` alone the dot.
            b'.' if b.get(i + 1).is_some_and(u8::is_ascii_digit) => {
                let (v, next) = lex_number(src, i)?;
                i = next;
                Tok::Num(v)
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
                let (v, next) = lex_number(src, i)?;
                i = next;
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

/// Lexes a number literal at `i` as Go's scanner does (a sign, a `0x`,
/// `0o` or `0b` prefix, `_` between digits, a fraction, an exponent with its
/// own sign) and returns its value and the offset after it.
#[allow(
    clippy::arithmetic_side_effects,
    reason = "offsets only grow up to the source length, which fits in usize"
)]
fn lex_number(src: &str, start: usize) -> Result<(Value, usize), Error> {
    let b = src.as_bytes();
    let mut j = start;
    if matches!(b.get(j), Some(b'+' | b'-')) {
        j += 1;
    }
    let hex = matches!(b.get(j..j + 2), Some(b"0x" | b"0X"));
    while let Some(&c) = b.get(j) {
        let exp = if hex {
            matches!(c, b'p' | b'P')
        } else {
            matches!(c, b'e' | b'E')
        };
        if exp {
            j += 1;
            if matches!(b.get(j), Some(b'+' | b'-')) {
                j += 1;
            }
        } else if c.is_ascii_alphanumeric() || c == b'_' || c == b'.' {
            j += 1;
        } else {
            break;
        }
    }
    let text = &src[start..j];
    let v = parse_number(text).map_err(|why| Error::at(src, start, format!("{why}: {text:?}")))?;
    Ok((v, j))
}

/// A number literal's value: an int when it is an integer in any base
/// (Go's `strconv.ParseInt(text, 0, 64)`), else a float when it has a
/// fraction or an exponent.
fn parse_number(text: &str) -> Result<Value, &'static str> {
    const BAD: &str = "bad number syntax";
    let (neg, body) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    let lower = body.to_ascii_lowercase();
    let (radix, digits) = if let Some(d) = lower.strip_prefix("0x") {
        (16, d)
    } else if let Some(d) = lower.strip_prefix("0o") {
        (8, d)
    } else if let Some(d) = lower.strip_prefix("0b") {
        (2, d)
    } else if lower.len() > 1
        && lower.starts_with('0')
        && lower.bytes().all(|c| c.is_ascii_digit() || c == b'_')
    {
        (8, &lower[1..])
    } else {
        (10, lower.as_str())
    };
    // `_` only between digits, or right after a base prefix.
    let prefixed = radix != 10;
    let bytes = digits.as_bytes();
    for (k, c) in bytes.iter().enumerate() {
        if *c == b'_' {
            let before_ok = match k.checked_sub(1).and_then(|p| bytes.get(p)) {
                Some(p) => p.is_ascii_hexdigit(),
                None => prefixed,
            };
            let after_ok = bytes
                .get(k.saturating_add(1))
                .is_some_and(u8::is_ascii_hexdigit);
            if !(before_ok && after_ok) {
                return Err(BAD);
            }
        }
    }
    let clean: String = digits.chars().filter(|c| *c != '_').collect();
    if clean.is_empty() {
        return Err(BAD);
    }
    let is_float = radix == 10 && clean.contains(['.', 'e']);
    if !is_float {
        let Ok(mag) = u64::from_str_radix(&clean, radix) else {
            return if clean.chars().all(|c| c.is_digit(radix)) {
                Err("integer overflow")
            } else {
                Err(BAD)
            };
        };
        let v = if neg {
            0i64.checked_sub_unsigned(mag)
        } else {
            i64::try_from(mag).ok()
        };
        return v.map(Value::Int).ok_or("number overflows int");
    }
    if !clean
        .bytes()
        .all(|c| c.is_ascii_digit() || matches!(c, b'.' | b'e' | b'+' | b'-'))
    {
        return Err(BAD);
    }
    let f: f64 = clean.parse().map_err(|_| BAD)?;
    if !f.is_finite() {
        return Err("number out of range");
    }
    Ok(Value::Float(if neg { -f } else { f }))
}

/// A character constant at `start` (`'a'`, `'\n'`, `'\x41'`, `'\u00e9'`).
#[allow(
    clippy::arithmetic_side_effects,
    reason = "offsets only grow up to the source length, which fits in usize"
)]
fn lex_char(src: &str, start: usize) -> Result<(char, usize), Error> {
    let bad = || Error::at(src, start, "unterminated character constant");
    let mut chars = src[start + 1..].char_indices();
    let ch = match chars.next() {
        Some((_, '\\')) => unescape(&mut chars, '\'').map_err(|m| Error::at(src, start, m))?,
        Some((_, '\'' | '\n')) | None => return Err(bad()),
        Some((_, c)) => c,
    };
    match chars.next() {
        Some((off, '\'')) => Ok((ch, start + 1 + off + 1)),
        _ => Err(bad()),
    }
}

/// One escape after a backslash, as Go's `strconv.UnquoteChar`.
fn unescape(chars: &mut std::str::CharIndices<'_>, quote: char) -> Result<char, String> {
    let Some((_, c)) = chars.next() else {
        return Err("unterminated escape".to_string());
    };
    let hex = |chars: &mut std::str::CharIndices<'_>, n: usize, radix: u32| {
        let s: String = (0..n)
            .filter_map(|_| chars.next().map(|(_, c)| c))
            .collect();
        if s.len() != n {
            return None;
        }
        u32::from_str_radix(&s, radix).ok()
    };
    Ok(match c {
        'a' => '\u{7}',
        'b' => '\u{8}',
        'f' => '\u{c}',
        'n' => '\n',
        'r' => '\r',
        't' => '\t',
        'v' => '\u{b}',
        '\\' => '\\',
        'x' => hex(chars, 2, 16)
            .and_then(char::from_u32)
            .ok_or("bad \\x escape")?,
        'u' => hex(chars, 4, 16)
            .and_then(char::from_u32)
            .ok_or("bad \\u escape")?,
        'U' => hex(chars, 8, 16)
            .and_then(char::from_u32)
            .ok_or("bad \\U escape")?,
        '0'..='7' => {
            let rest = hex(chars, 2, 8).ok_or("bad octal escape")?;
            let v = c
                .to_digit(8)
                .and_then(|d| d.checked_mul(64))
                .and_then(|d| d.checked_add(rest))
                .filter(|v| *v <= 255)
                .ok_or("bad octal escape")?;
            char::from_u32(v).ok_or("bad octal escape")?
        }
        c if c == quote => c,
        other => return Err(format!("unknown escape sequence \\{other}")),
    })
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
            '\\' => out.push(unescape(&mut chars, '"').map_err(|m| Error::at(src, start, m))?),
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
    /// Current nesting of `if`/`with`/`range`/`block` (and `else if` links).
    depth: usize,
    max_depth: usize,
    defs: BTreeMap<String, Vec<Node>>,
    /// `range` blocks around the current point of the current template body:
    /// `{{break}}` and `{{continue}}` need one.
    ranges: usize,
    /// Variables in scope, checked at parse time as Go does.
    vars: Vec<String>,
    /// Inside a `define` or `block` body, where `define` is not allowed.
    in_def: bool,
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
                "define" => {
                    if self.in_def || self.depth > 0 {
                        return Err(self.err(
                            pos,
                            "unexpected {{define}}: templates are defined only at the top level",
                        ));
                    }
                    let name = self.template_name(&toks, "define")?;
                    if toks.len() > 2 {
                        return Err(self.err(pos, "unexpected tokens after {{define}} name"));
                    }
                    let body = self.def_body(pos, "define")?;
                    self.add_def(pos, name, body)?;
                }
                "block" => {
                    let name = self.template_name(&toks, "block")?;
                    let pipe = self.template_pipe(pos, toks)?;
                    if self.depth >= self.max_depth {
                        return Err(self.err(
                            pos,
                            format!("{{{{block}}}} nested deeper than {}", self.max_depth),
                        ));
                    }
                    self.depth = self.depth.saturating_add(1);
                    let body = self.def_body(pos, "block");
                    self.depth = self.depth.saturating_sub(1);
                    self.add_def(pos, name.clone(), body?)?;
                    nodes.push(Node::Template { pos, name, pipe });
                }
                "template" => {
                    let name = self.template_name(&toks, "template")?;
                    let pipe = self.template_pipe(pos, toks)?;
                    nodes.push(Node::Template { pos, name, pipe });
                }
                "break" | "continue" => {
                    if toks.len() > 1 {
                        return Err(
                            self.err(pos, format!("unexpected tokens in {{{{{keyword}}}}}"))
                        );
                    }
                    if self.ranges == 0 {
                        return Err(
                            self.err(pos, format!("{{{{{keyword}}}}} outside {{{{range}}}}"))
                        );
                    }
                    nodes.push(if keyword == "break" {
                        Node::Break(pos)
                    } else {
                        Node::Continue(pos)
                    });
                }
                _ => nodes.push(Node::Action(self.pipeline(pos, toks, true)?)),
            }
        }
        Ok((nodes, Term::Eof))
    }

    /// The quoted name after `define`, `template` or `block`.
    fn template_name(&self, toks: &[Token], kw: &str) -> Result<String, Error> {
        match toks.get(1) {
            Some(Token {
                tok: Tok::Str(name),
                ..
            }) => Ok(name.clone()),
            Some(t) => Err(self.err(
                t.pos,
                format!("unexpected token in {{{{{kw}}}}} clause: want a quoted name"),
            )),
            None => Err(self.err(
                toks.first().map_or(0, |t| t.pos),
                format!("missing name in {{{{{kw}}}}} clause"),
            )),
        }
    }

    /// The optional pipeline after a `template` or `block` name.
    fn template_pipe(&mut self, pos: usize, toks: Vec<Token>) -> Result<Option<Pipeline>, Error> {
        let rest: Vec<Token> = toks.into_iter().skip(2).collect();
        if rest.is_empty() {
            return Ok(None);
        }
        self.pipeline(pos, rest, false).map(Some)
    }

    /// A `define` or `block` body up to its `{{end}}`, in a scope of its own:
    /// only `$` is defined and no `range` surrounds it.
    fn def_body(&mut self, pos: usize, kw: &str) -> Result<Vec<Node>, Error> {
        let saved_vars = std::mem::replace(&mut self.vars, vec!["$".to_string()]);
        let saved_ranges = std::mem::replace(&mut self.ranges, 0);
        let saved_def = std::mem::replace(&mut self.in_def, true);
        let body = self.list();
        self.vars = saved_vars;
        self.ranges = saved_ranges;
        self.in_def = saved_def;
        match body? {
            (body, Term::End(_)) => Ok(body),
            (_, Term::Else(epos, _)) => {
                Err(self.err(epos, format!("unexpected {{{{else}}}} in {{{{{kw}}}}}")))
            }
            (_, Term::Eof) => Err(self.err(
                pos,
                format!("unexpected EOF: {{{{{kw}}}}} without {{{{end}}}}"),
            )),
        }
    }

    /// Records a named template. As in Go, a name may be defined twice only
    /// if one of the bodies is empty (white space); an empty body never
    /// replaces a full one.
    fn add_def(&mut self, pos: usize, name: String, body: Vec<Node>) -> Result<(), Error> {
        let empty = |b: &[Node]| {
            b.iter()
                .all(|n| matches!(n, Node::Text(t) if t.trim_matches(SPACE).is_empty()))
        };
        match self.defs.get(&name) {
            Some(old) if !empty(old) => {
                if empty(&body) {
                    return Ok(());
                }
                Err(self.err(
                    pos,
                    format!("template: multiple definition of template {name:?}"),
                ))
            }
            _ => {
                self.defs.insert(name, body);
                Ok(())
            }
        }
    }

    fn control(&mut self, kw: &str, pos: usize, toks: Vec<Token>) -> Result<Node, Error> {
        if self.depth >= self.max_depth {
            return Err(self.err(
                pos,
                format!("{{{{{kw}}}}} nested deeper than {}", self.max_depth),
            ));
        }
        self.depth = self.depth.saturating_add(1);
        let mark = self.vars.len();
        let node = self.control_body(kw, pos, toks);
        self.vars.truncate(mark);
        self.depth = self.depth.saturating_sub(1);
        node
    }

    fn control_body(&mut self, kw: &str, pos: usize, toks: Vec<Token>) -> Result<Node, Error> {
        let pipe = self.pipeline(pos, toks, true)?;
        let is_range = kw == "range";
        if is_range {
            self.ranges = self.ranges.saturating_add(1);
        }
        let body = self.list();
        if is_range {
            self.ranges = self.ranges.saturating_sub(1);
        }
        let (body, end) = body?;
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
                let nested_kw = match rest.first() {
                    Some(Token {
                        tok: Tok::Ident(w), ..
                    }) if w == "if" || w == "with" => w.clone(),
                    _ => return Err(self.err(epos, "unexpected tokens after else")),
                };
                rest.remove(0);
                let nested = self.control(&nested_kw, epos, rest)?;
                if nested_kw == kw {
                    // `{{if}}…{{else if}}` and `{{with}}…{{else with}}` chain:
                    // the nested block shares the outer block's `{{end}}`.
                    vec![nested]
                } else {
                    // Any other pairing (`{{else if}}` in a range or a with)
                    // opens a block inside the else branch, which needs its
                    // own `{{end}}`, as in Go.
                    let (more, end) = self.list()?;
                    if !matches!(end, Term::End(_)) {
                        return Err(self.err(
                            pos,
                            format!("unexpected EOF: {{{{{kw}}}}} without {{{{end}}}}"),
                        ));
                    }
                    std::iter::once(nested).chain(more).collect()
                }
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
    fn pipeline(
        &mut self,
        pos: usize,
        toks: Vec<Token>,
        allow_decl: bool,
    ) -> Result<Pipeline, Error> {
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
        let mut used = Vec::new();
        for cmd in &cmds {
            command_vars(cmd, &mut used);
        }
        if assign {
            used.extend(decl.iter().map(|d| (d.as_str(), pos)));
        }
        if let Some((name, at)) = used
            .into_iter()
            .find(|(v, _)| !self.vars.iter().any(|d| d == v))
        {
            return Err(self.err(at, format!("undefined variable: {name}")));
        }
        if !assign {
            self.vars.extend(decl.iter().cloned());
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
    fn commands(&mut self, pos: usize, toks: &[Token]) -> Result<Vec<Command>, Error> {
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
        if let Some(c) = cmds
            .iter()
            .find(|c| matches!(c.args.first(), Some(Arg::Lit(Value::Nil))))
        {
            return Err(self.err(c.pos, "nil is not a command"));
        }
        Ok(cmds)
    }

    /// Parses one operand at `toks[i]`, returning it and the next index.
    #[allow(
        clippy::arithmetic_side_effects,
        reason = "byte and token offsets only grow up to the source length, which fits in usize"
    )]
    fn operand(&mut self, toks: &[Token], i: usize) -> Result<(Arg, usize), Error> {
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
            Node::Template { pipe, .. } => {
                if let Some(p) = pipe {
                    pipeline_functions(p, out);
                }
            }
            Node::Break(_) | Node::Continue(_) => {}
        }
    }
}

/// Every variable a command reads, with the command's offset.
fn command_vars<'a>(cmd: &'a Command, out: &mut Vec<(&'a str, usize)>) {
    for arg in &cmd.args {
        match arg {
            Arg::Var(name, _) => out.push((name, cmd.pos)),
            Arg::Sub(inner, _) => {
                for c in &inner.cmds {
                    command_vars(c, out);
                }
            }
            Arg::Dot(_) | Arg::Lit(_) | Arg::Ident(_) => {}
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
