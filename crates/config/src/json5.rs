//! A JSON5 parser that keeps the byte offset of every value and key, so config errors can point at them.

use std::collections::HashSet;

#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub pos: usize,
    pub kind: Kind,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    Null,
    Bool(bool),
    Number(f64),
    Str(String),
    Array(Vec<Node>),
    /// Entries in source order: key, the key's offset, and the value.
    Object(Vec<(String, usize, Node)>),
}

impl Kind {
    pub fn type_name(&self) -> &'static str {
        match self {
            Kind::Null => "null",
            Kind::Bool(_) => "a boolean",
            Kind::Number(_) => "a number",
            Kind::Str(_) => "a string",
            Kind::Array(_) => "an array",
            Kind::Object(_) => "an object",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct SyntaxError {
    pub pos: usize,
    pub message: String,
}

/// Nesting deeper than this is rejected rather than risking the stack.
const MAX_DEPTH: usize = 128;

pub fn parse(src: &str) -> Result<Node, SyntaxError> {
    let mut p = P {
        s: src.as_bytes(),
        src,
        i: 0,
        depth: 0,
    };
    p.ws()?;
    let v = p.value()?;
    p.ws()?;
    if p.i < p.s.len() {
        return Err(p.err("unexpected text after the end of the document"));
    }
    Ok(v)
}

struct P<'a> {
    s: &'a [u8],
    src: &'a str,
    i: usize,
    depth: usize,
}

impl P<'_> {
    fn err(&self, msg: impl Into<String>) -> SyntaxError {
        SyntaxError {
            pos: self.i,
            message: msg.into(),
        }
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    /// Skips whitespace and comments.
    fn ws(&mut self) -> Result<(), SyntaxError> {
        loop {
            match self.peek() {
                Some(b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c) => self.i += 1,
                Some(b'/') if self.s.get(self.i + 1) == Some(&b'/') => {
                    while self.peek().is_some_and(|c| c != b'\n') {
                        self.i += 1;
                    }
                }
                Some(b'/') if self.s.get(self.i + 1) == Some(&b'*') => {
                    let start = self.i;
                    match self.src[self.i + 2..].find("*/") {
                        Some(end) => self.i += 2 + end + 2,
                        None => {
                            self.i = start;
                            return Err(self.err("unterminated block comment"));
                        }
                    }
                }
                Some(_)
                    if self.src[self.i..].starts_with('\u{a0}')
                        || self.src[self.i..].starts_with('\u{feff}')
                        || self.src[self.i..].starts_with('\u{2028}')
                        || self.src[self.i..].starts_with('\u{2029}') =>
                {
                    self.i += self.src[self.i..].chars().next().map_or(1, char::len_utf8);
                }
                _ => return Ok(()),
            }
        }
    }

    fn value(&mut self) -> Result<Node, SyntaxError> {
        let pos = self.i;
        let kind = match self.peek() {
            None => return Err(self.err("unexpected end of input, expected a value")),
            Some(b'{') => self.nested(Self::object)?,
            Some(b'[') => self.nested(Self::array)?,
            Some(b'"' | b'\'') => Kind::Str(self.string()?),
            Some(b'0'..=b'9' | b'-' | b'+' | b'.') => Kind::Number(self.number()?),
            Some(_) => {
                let word = self.ident_raw();
                match word.as_str() {
                    "null" => Kind::Null,
                    "true" => Kind::Bool(true),
                    "false" => Kind::Bool(false),
                    "Infinity" => Kind::Number(f64::INFINITY),
                    "NaN" => Kind::Number(f64::NAN),
                    "" => {
                        let ch = self.src[self.i..].chars().next().unwrap_or('?');
                        return Err(self.err(format!("unexpected character {ch:?}")));
                    }
                    w => {
                        self.i = pos;
                        return Err(
                            self.err(format!("unexpected word {w:?}: strings must be quoted"))
                        );
                    }
                }
            }
        };
        Ok(Node { pos, kind })
    }

    fn nested(
        &mut self,
        f: fn(&mut Self) -> Result<Kind, SyntaxError>,
    ) -> Result<Kind, SyntaxError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(self.err("document is nested too deeply"));
        }
        let k = f(self);
        self.depth -= 1;
        k
    }

    fn object(&mut self) -> Result<Kind, SyntaxError> {
        self.i += 1;
        let mut entries = Vec::new();
        let mut seen = HashSet::new();
        loop {
            self.ws()?;
            if self.peek() == Some(b'}') {
                self.i += 1;
                return Ok(Kind::Object(entries));
            }
            let kpos = self.i;
            let key = match self.peek() {
                Some(b'"' | b'\'') => self.string()?,
                _ => {
                    let k = self.ident_raw();
                    if k.is_empty() {
                        return Err(self.err("expected a key or '}'"));
                    }
                    k
                }
            };
            if !seen.insert(key.clone()) {
                self.i = kpos;
                return Err(self.err(format!("duplicate key {key:?}")));
            }
            self.ws()?;
            if self.peek() != Some(b':') {
                return Err(self.err(format!("expected ':' after key {key:?}")));
            }
            self.i += 1;
            self.ws()?;
            let v = self.value()?;
            entries.push((key, kpos, v));
            self.ws()?;
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b'}') => {}
                None => return Err(self.err("unexpected end of input: missing '}'")),
                _ => return Err(self.err("expected ',' or '}' after an object member")),
            }
        }
    }

    fn array(&mut self) -> Result<Kind, SyntaxError> {
        self.i += 1;
        let mut items = Vec::new();
        loop {
            self.ws()?;
            if self.peek() == Some(b']') {
                self.i += 1;
                return Ok(Kind::Array(items));
            }
            items.push(self.value()?);
            self.ws()?;
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b']') => {}
                None => return Err(self.err("unexpected end of input: missing ']'")),
                _ => return Err(self.err("expected ',' or ']' after an array element")),
            }
        }
    }

    /// An ECMAScript IdentifierName (ASCII, `$`, `_` and any non-ASCII letter).
    fn ident_raw(&mut self) -> String {
        let start = self.i;
        for (off, c) in self.src[self.i..].char_indices() {
            let ok = c == '$'
                || c == '_'
                || c.is_alphabetic()
                || (off > 0 && (c.is_ascii_digit() || c.is_numeric()));
            if !ok {
                self.i = start + off;
                return self.src[start..self.i].to_string();
            }
        }
        self.i = self.s.len();
        self.src[start..].to_string()
    }

    fn string(&mut self) -> Result<String, SyntaxError> {
        let start = self.i;
        let quote = self.s[self.i] as char;
        self.i += 1;
        let mut out = String::new();
        loop {
            let Some(c) = self.src[self.i..].chars().next() else {
                self.i = start;
                return Err(self.err("unterminated string"));
            };
            self.i += c.len_utf8();
            match c {
                c if c == quote => return Ok(out),
                '\n' | '\r' => {
                    self.i = start;
                    return Err(self.err("unterminated string (a newline must be escaped)"));
                }
                '\\' => {
                    let Some(e) = self.src[self.i..].chars().next() else {
                        return Err(self.err("unterminated string"));
                    };
                    self.i += e.len_utf8();
                    match e {
                        'n' => out.push('\n'),
                        't' => out.push('\t'),
                        'r' => out.push('\r'),
                        'b' => out.push('\u{8}'),
                        'f' => out.push('\u{c}'),
                        'v' => out.push('\u{b}'),
                        '0' if !self.peek().is_some_and(|d| d.is_ascii_digit()) => out.push('\0'),
                        'x' => {
                            let h = self.hex(2)?;
                            out.push(char::from_u32(h).unwrap_or('\u{fffd}'));
                        }
                        'u' => {
                            let mut h = self.hex(4)?;
                            // A surrogate pair spelled as two escapes.
                            if (0xd800..0xdc00).contains(&h)
                                && self.src[self.i..].starts_with("\\u")
                            {
                                self.i += 2;
                                let lo = self.hex(4)?;
                                h = 0x10000
                                    + ((h - 0xd800) << 10)
                                    + (lo.wrapping_sub(0xdc00) & 0x3ff);
                            }
                            out.push(char::from_u32(h).unwrap_or('\u{fffd}'));
                        }
                        '\r' => {
                            if self.peek() == Some(b'\n') {
                                self.i += 1;
                            }
                        }
                        '\n' | '\u{2028}' | '\u{2029}' => {}
                        d if d.is_ascii_digit() => {
                            return Err(self.err("octal escapes are not allowed"));
                        }
                        other => out.push(other),
                    }
                }
                c => out.push(c),
            }
        }
    }

    fn hex(&mut self, n: usize) -> Result<u32, SyntaxError> {
        let digits = self.src.get(self.i..self.i + n).unwrap_or("");
        let v = u32::from_str_radix(digits, 16)
            .ok()
            .filter(|_| digits.len() == n && digits.bytes().all(|b| b.is_ascii_hexdigit()))
            .ok_or_else(|| self.err("bad hex escape"))?;
        self.i += n;
        Ok(v)
    }

    fn number(&mut self) -> Result<f64, SyntaxError> {
        let start = self.i;
        let mut neg = false;
        if let Some(c @ (b'-' | b'+')) = self.peek() {
            neg = c == b'-';
            self.i += 1;
        }
        let sign = if neg { -1.0 } else { 1.0 };
        let rest = &self.src[self.i..];
        if rest.starts_with("Infinity") {
            self.i += 8;
            return Ok(sign * f64::INFINITY);
        }
        if rest.starts_with("NaN") {
            self.i += 3;
            return Ok(f64::NAN);
        }
        if rest.starts_with("0x") || rest.starts_with("0X") {
            self.i += 2;
            let hs = self.i;
            while self.peek().is_some_and(|c| c.is_ascii_hexdigit()) {
                self.i += 1;
            }
            return i64::from_str_radix(&self.src[hs..self.i], 16)
                .map(|v| sign * v as f64)
                .map_err(|_| {
                    self.i = start;
                    self.err("bad hexadecimal number")
                });
        }
        let ds = self.i;
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.i += 1;
        }
        if self.peek() == Some(b'.') {
            self.i += 1;
            while self.peek().is_some_and(|c| c.is_ascii_digit()) {
                self.i += 1;
            }
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.i += 1;
            if let Some(b'-' | b'+') = self.peek() {
                self.i += 1;
            }
            while self.peek().is_some_and(|c| c.is_ascii_digit()) {
                self.i += 1;
            }
        }
        let text = &self.src[ds..self.i];
        if text.is_empty()
            || text == "."
            || self
                .peek()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == b'_')
        {
            self.i = start;
            return Err(self.err("invalid number"));
        }
        let text = if text.starts_with('.') {
            format!("0{text}")
        } else {
            text.to_string()
        };
        let text = text.strip_suffix('.').map(str::to_string).unwrap_or(text);
        text.parse::<f64>().map(|v| sign * v).map_err(|_| {
            self.i = start;
            self.err("invalid number")
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(src: &str) -> Kind {
        parse(src).unwrap_or_else(|e| panic!("{src}: {e:?}")).kind
    }

    #[test]
    fn json5_features() {
        let v = k(
            "// c\n{a: 1, 'b': \"x\", $c_1: [1, 2,], /* c */ d: .5, e: +5., f: 0x1F, g: 'multi\\\nline', h: null, i: -Infinity,}",
        );
        let Kind::Object(e) = v else { panic!() };
        let get = |n: &str| {
            e.iter()
                .find(|(k, _, _)| k == n)
                .map(|(_, _, v)| v.kind.clone())
        };
        assert_eq!(get("a"), Some(Kind::Number(1.0)));
        assert_eq!(get("b"), Some(Kind::Str("x".into())));
        assert_eq!(get("d"), Some(Kind::Number(0.5)));
        assert_eq!(get("e"), Some(Kind::Number(5.0)));
        assert_eq!(get("f"), Some(Kind::Number(31.0)));
        assert_eq!(get("g"), Some(Kind::Str("multiline".into())));
        assert_eq!(get("h"), Some(Kind::Null));
        assert_eq!(get("i"), Some(Kind::Number(f64::NEG_INFINITY)));
        assert!(matches!(get("$c_1"), Some(Kind::Array(a)) if a.len() == 2));
        assert_eq!(k(r#""\u00e9\x41\t""#), Kind::Str("éA\t".into()));
    }

    #[test]
    fn positions_and_errors() {
        let n = parse("{\n  a: [1,\n   true]\n}").unwrap();
        let Kind::Object(e) = n.kind else { panic!() };
        let Kind::Array(items) = &e[0].2.kind else {
            panic!()
        };
        assert_eq!(items[1].pos, 14);
        for (src, msg) in [
            ("{a: 1", "missing '}'"),
            ("{a: 1 b: 2}", "expected ',' or '}'"),
            ("{a: hello}", "strings must be quoted"),
            ("{a: 1, a: 2}", "duplicate key"),
            ("[1,, 2]", "unexpected character ','"),
            ("'abc", "unterminated string"),
            ("/* x", "unterminated block comment"),
            ("{} x", "after the end"),
            ("01x", "invalid number"),
        ] {
            let e = parse(src).unwrap_err();
            assert!(e.message.contains(msg), "{src}: {e:?}");
        }
        assert!(parse(&"[".repeat(1000)).is_err());
    }
}
