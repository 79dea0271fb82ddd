//! Go's `fmt` for template values: `%v` printing, `print`/`println`, `printf` verbs and flags, float formatting and quoting.

use crate::Value;

/// Largest width or precision `printf` accepts (`%9999999999d` is an error,
/// not a 10 GB string).
pub const MAX_PRINTF_WIDTH: usize = 4096;

/// Largest string `printf` and the escapers build; checked as it grows.
pub(crate) const MAX_STRING: usize = 16 * 1024 * 1024;

/// Flags, width and precision of one `printf` directive.
#[derive(Debug, Clone, Copy, Default)]
struct Spec {
    plus: bool,
    minus: bool,
    sharp: bool,
    space: bool,
    zero: bool,
    width: Option<usize>,
    prec: Option<usize>,
}

/// `%v` with no flags: what `{{ . }}` and `print` show.
pub(crate) fn print_v(v: &Value) -> String {
    let mut out = String::new();
    format_value(&mut out, &Spec::default(), 'v', v);
    out
}

/// Go's `fmt.Sprint`: a space between operands when neither is a string.
pub(crate) fn sprint(args: &[Value]) -> String {
    let mut out = String::new();
    let mut prev_str = true;
    for (i, v) in args.iter().enumerate() {
        let is_str = matches!(v, Value::Str(_));
        if i > 0 && !is_str && !prev_str {
            out.push(' ');
        }
        out.push_str(&print_v(v));
        prev_str = is_str;
    }
    out
}

/// Go's `fmt.Sprintln`: spaces between all operands and a final newline.
pub(crate) fn sprintln(args: &[Value]) -> String {
    let mut out = args.iter().map(print_v).collect::<Vec<_>>().join(" ");
    out.push('\n');
    out
}

/// Go's `fmt.Sprintf` over template values: the verbs `%v %s %q %d %b %o %O
/// %x %X %c %U %e %E %f %F %g %G %t %T %%`, the flags `+ - # space 0`, and a
/// width and precision given as digits or `*` (each at most
/// [`MAX_PRINTF_WIDTH`]). Mistakes print as Go prints them (`%!d(string=x)`,
/// `%!d(MISSING)`, `%!(EXTRA int=1)`).
pub(crate) fn sprintf(format: &str, args: &[Value]) -> Result<String, String> {
    let mut out = String::new();
    let mut st = ArgState {
        args,
        next: 0,
        reordered: false,
        good: true,
    };
    let mut chars = format.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        st.good = true;
        let mut spec = Spec::default();
        while let Some(&f) = chars.peek() {
            match f {
                '+' => spec.plus = true,
                '-' => spec.minus = true,
                '#' => spec.sharp = true,
                ' ' => spec.space = true,
                '0' => spec.zero = true,
                _ => break,
            }
            chars.next();
        }
        let mut after_index = st.index(&mut chars);
        if chars.peek() == Some(&'*') {
            chars.next();
            match st.take().and_then(star_arg) {
                Some(w) => {
                    if w < 0 {
                        spec.minus = true;
                    }
                    spec.width = Some(bounded(w.unsigned_abs(), "width")?);
                }
                None => out.push_str("%!(BADWIDTH)"),
            }
            after_index = false;
        } else if chars.peek().is_some_and(char::is_ascii_digit) {
            spec.width = Some(printf_number(&mut chars, "width")?);
            if after_index {
                st.good = false;
            }
        }
        if chars.peek() == Some(&'.') {
            chars.next();
            if after_index {
                st.good = false;
            }
            after_index = st.index(&mut chars);
            if chars.peek() == Some(&'*') {
                chars.next();
                match st.take().and_then(star_arg) {
                    Some(p) if p >= 0 => spec.prec = Some(bounded(p.unsigned_abs(), "precision")?),
                    _ => out.push_str("%!(BADPREC)"),
                }
                after_index = false;
            } else {
                spec.prec = Some(printf_number(&mut chars, "precision")?);
            }
        }
        if !after_index {
            st.index(&mut chars);
        }
        // Go drops the zero flag when padding goes on the right.
        if spec.minus {
            spec.zero = false;
        }
        let Some(verb) = chars.next() else {
            out.push_str("%!(NOVERB)");
            break;
        };
        if verb == '%' {
            out.push('%');
            continue;
        }
        if !st.good {
            out.push_str("%!");
            out.push(verb);
            out.push_str("(BADINDEX)");
            continue;
        }
        match st.take() {
            Some(arg) => format_value(&mut out, &spec, verb, arg),
            None => {
                out.push_str("%!");
                out.push(verb);
                out.push_str("(MISSING)");
            }
        }
        if out.len() > MAX_STRING {
            return Err(format!(
                "the result would be larger than {MAX_STRING} bytes"
            ));
        }
    }
    if !st.reordered {
        let extra: Vec<String> = args.iter().skip(st.next).map(typed).collect();
        if !extra.is_empty() {
            out.push_str("%!(EXTRA ");
            out.push_str(&extra.join(", "));
            out.push(')');
        }
    }
    Ok(out)
}

/// Which operand `printf` uses next, as Go tracks it with explicit
/// indexes (`%[2]d`).
struct ArgState<'a> {
    args: &'a [Value],
    next: usize,
    /// An explicit index was used: Go then reports no extra operands.
    reordered: bool,
    /// The current directive's index was valid.
    good: bool,
}

impl<'a> ArgState<'a> {
    fn take(&mut self) -> Option<&'a Value> {
        let v = self.args.get(self.next)?;
        self.next = self.next.saturating_add(1);
        Some(v)
    }

    /// Reads an explicit `[n]` index, if one is next; returns whether one
    /// was read and valid.
    fn index(&mut self, chars: &mut std::iter::Peekable<std::str::Chars<'_>>) -> bool {
        if chars.peek() != Some(&'[') {
            return false;
        }
        self.reordered = true;
        chars.next();
        let mut look = chars.clone();
        let mut n: Option<usize> = Some(0);
        let mut digits = 0usize;
        let closed = loop {
            match look.next() {
                Some(']') => break true,
                Some(d) if d.is_ascii_digit() => {
                    digits = digits.saturating_add(1);
                    n = n.and_then(|n| n.checked_mul(10)).and_then(|n| {
                        n.checked_add(usize::try_from(d.to_digit(10).unwrap_or(0)).unwrap_or(0))
                    });
                }
                Some(_) => n = None,
                None => break false,
            }
        };
        if !closed {
            // Go consumes only the `[` of an unclosed index.
            self.good = false;
            return false;
        }
        *chars = look;
        match n.filter(|n| digits > 0 && *n >= 1 && *n <= self.args.len()) {
            Some(n) => {
                self.next = n.saturating_sub(1);
                true
            }
            None => {
                self.good = false;
                false
            }
        }
    }
}

/// An argument for `*`: Go takes only integers.
fn star_arg(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        Value::Uint(u) => i64::try_from(*u).ok(),
        _ => None,
    }
}

fn bounded(n: u64, what: &str) -> Result<usize, String> {
    usize::try_from(n)
        .ok()
        .filter(|n| *n <= MAX_PRINTF_WIDTH)
        .ok_or_else(|| format!("printf {what} is larger than {MAX_PRINTF_WIDTH}"))
}

/// Reads a printf width or precision, refusing one above [`MAX_PRINTF_WIDTH`].
fn printf_number(
    chars: &mut std::iter::Peekable<std::str::Chars<'_>>,
    what: &str,
) -> Result<usize, String> {
    let mut n = 0usize;
    while let Some(d) = chars.peek().and_then(|d| d.to_digit(10)) {
        chars.next();
        n = n
            .checked_mul(10)
            .and_then(|n| n.checked_add(usize::try_from(d).unwrap_or(0)))
            .filter(|n| *n <= MAX_PRINTF_WIDTH)
            .ok_or_else(|| format!("printf {what} is larger than {MAX_PRINTF_WIDTH}"))?;
    }
    Ok(n)
}

/// `type=value`, as Go shows a bad or extra argument.
fn typed(v: &Value) -> String {
    match v {
        Value::Nil => "<nil>".to_string(),
        other => format!("{}={}", other.go_type(), print_v(other)),
    }
}

fn bad_verb(out: &mut String, verb: char, v: &Value) {
    out.push_str("%!");
    out.push(verb);
    out.push('(');
    out.push_str(&typed(v));
    out.push(')');
}

/// Formats one operand; lists and maps format each element with the same
/// verb and flags, as Go does.
fn format_value(out: &mut String, spec: &Spec, verb: char, v: &Value) {
    if verb == 'T' {
        pad(out, spec, v.go_type(), false);
        return;
    }
    match v {
        Value::Nil => match verb {
            'v' => pad(out, spec, "<nil>", false),
            _ => bad_verb(out, verb, v),
        },
        Value::Bool(b) => match verb {
            't' | 'v' => pad(out, spec, if *b { "true" } else { "false" }, false),
            _ => bad_verb(out, verb, v),
        },
        Value::Int(i) => format_int(out, spec, verb, *i < 0, i.unsigned_abs(), v),
        Value::Uint(u) => format_int(out, spec, verb, false, *u, v),
        Value::Float(f) => format_float(out, spec, verb, *f, v),
        Value::Str(s) => format_str(out, spec, verb, s, v),
        Value::List(l) => {
            out.push('[');
            for (i, e) in l.iter().enumerate() {
                // Each element is padded to the width: stop early, the
                // caller reports the size.
                if out.len() > MAX_STRING {
                    return;
                }
                if i > 0 {
                    out.push(' ');
                }
                format_value(out, spec, verb, e);
            }
            out.push(']');
        }
        Value::Map(m) => {
            out.push_str("map[");
            for (i, (k, e)) in m.iter().enumerate() {
                if out.len() > MAX_STRING {
                    return;
                }
                if i > 0 {
                    out.push(' ');
                }
                format_str(out, spec, verb, k, &Value::Nil);
                out.push(':');
                format_value(out, spec, verb, e);
            }
            out.push(']');
        }
    }
}

/// Pads `body` to the width: spaces on the left (or right with `-`), or
/// zeros after any sign with `0` when `numeric` (Go zero-pads strings too,
/// at the very left).
fn pad(out: &mut String, spec: &Spec, body: &str, numeric: bool) {
    let len = body.chars().count();
    let fill = spec.width.unwrap_or(0).saturating_sub(len);
    if spec.minus {
        out.push_str(body);
        out.push_str(&" ".repeat(fill));
    } else if spec.zero {
        let split = if numeric && body.starts_with(['+', '-', ' ']) {
            1
        } else {
            0
        };
        let (sign, rest) = body.split_at(split);
        out.push_str(sign);
        out.push_str(&"0".repeat(fill));
        out.push_str(rest);
    } else {
        out.push_str(&" ".repeat(fill));
        out.push_str(body);
    }
}

fn format_int(out: &mut String, spec: &Spec, verb: char, neg: bool, mag: u64, v: &Value) {
    let (digits, prefix) = match verb {
        'd' | 'v' => (mag.to_string(), ""),
        'b' => (format!("{mag:b}"), if spec.sharp { "0b" } else { "" }),
        'o' => (format!("{mag:o}"), if spec.sharp { "0" } else { "" }),
        'O' => (format!("{mag:o}"), "0o"),
        'x' => (format!("{mag:x}"), if spec.sharp { "0x" } else { "" }),
        'X' => (format!("{mag:X}"), if spec.sharp { "0X" } else { "" }),
        'c' => {
            let c = rune(neg, mag);
            pad(out, spec, &c.to_string(), false);
            return;
        }
        'q' => {
            let c = rune(neg, mag);
            pad(out, spec, &quote_rune(c), false);
            return;
        }
        'U' => {
            let mut s = format!("U+{mag:04X}");
            if spec.sharp {
                s.push_str(&format!(" '{}'", rune(neg, mag)));
            }
            pad(out, spec, &s, false);
            return;
        }
        _ => return bad_verb(out, verb, v),
    };
    // Minimum digits: the precision, or the width with the `0` flag (less
    // one for a sign). Go adds a base prefix after this padding.
    let signed = neg || spec.plus || spec.space;
    let min = match spec.prec {
        Some(0) if mag == 0 => {
            pad(out, spec, "", false);
            return;
        }
        Some(p) => p,
        None if spec.zero => spec.width.unwrap_or(0).saturating_sub(usize::from(signed)),
        None => 0,
    };
    let mut body = String::new();
    if neg {
        body.push('-');
    } else if spec.plus {
        body.push('+');
    } else if spec.space {
        body.push(' ');
    }
    body.push_str(prefix);
    body.extend(std::iter::repeat_n('0', min.saturating_sub(digits.len())));
    body.push_str(&digits);
    let plain = Spec {
        zero: false,
        ..*spec
    };
    pad(out, &plain, &body, true);
}

fn rune(neg: bool, mag: u64) -> char {
    if neg {
        return char::REPLACEMENT_CHARACTER;
    }
    u32::try_from(mag)
        .ok()
        .and_then(char::from_u32)
        .unwrap_or(char::REPLACEMENT_CHARACTER)
}

fn format_float(out: &mut String, spec: &Spec, verb: char, f: f64, v: &Value) {
    let body = match verb {
        'v' | 'g' | 'G' => fmt_g(f.abs(), spec.prec, verb == 'G'),
        'e' | 'E' => fmt_e(f.abs(), spec.prec.unwrap_or(6), verb == 'E'),
        'f' | 'F' => format!("{:.*}", spec.prec.unwrap_or(6), f.abs()),
        _ => return bad_verb(out, verb, v),
    };
    if f.is_nan() {
        let s = if spec.plus { "+NaN" } else { "NaN" };
        return pad(
            out,
            &Spec {
                zero: false,
                ..*spec
            },
            s,
            false,
        );
    }
    let sign = if f.is_sign_negative() {
        "-"
    } else if spec.plus || f.is_infinite() {
        "+"
    } else if spec.space {
        " "
    } else {
        ""
    };
    let body = if f.is_infinite() {
        format!("{sign}Inf")
    } else {
        format!("{sign}{body}")
    };
    let spec = if f.is_infinite() {
        Spec {
            zero: false,
            ..*spec
        }
    } else {
        *spec
    };
    pad(out, &spec, &body, true);
}

fn format_str(out: &mut String, spec: &Spec, verb: char, s: &str, v: &Value) {
    match verb {
        's' | 'v' => {
            let s: String = match spec.prec {
                Some(p) => s.chars().take(p).collect(),
                None => s.to_string(),
            };
            pad(out, spec, &s, false);
        }
        'q' => {
            let q = if spec.sharp
                && !s.contains('`')
                && s.chars().all(|c| c == '\t' || !c.is_control())
            {
                format!("`{s}`")
            } else {
                quote(s, spec.plus)
            };
            pad(out, spec, &q, false);
        }
        'x' | 'X' => {
            let mut hex = String::with_capacity(s.len().saturating_mul(2));
            for b in s.bytes() {
                if verb == 'x' {
                    hex.push_str(&format!("{b:02x}"));
                } else {
                    hex.push_str(&format!("{b:02X}"));
                }
            }
            pad(out, spec, &hex, false);
        }
        _ => bad_verb(out, verb, v),
    }
}

/// Go's `strconv.Quote` (`ascii`: `QuoteToASCII`, for `%+q`).
pub(crate) fn quote(s: &str, ascii: bool) -> String {
    let mut out = String::with_capacity(s.len().saturating_add(2));
    out.push('"');
    for c in s.chars() {
        escape_char(&mut out, c, '"', ascii);
    }
    out.push('"');
    out
}

fn quote_rune(c: char) -> String {
    let mut out = String::from("'");
    escape_char(&mut out, c, '\'', false);
    out.push('\'');
    out
}

/// Whether Go's `unicode.IsPrint` holds, near enough: printable means not a
/// control character and not a space other than U+0020.
fn printable(c: char) -> bool {
    c == ' '
        || !(c.is_control()
            || c.is_whitespace()
            || matches!(c, '\u{200b}'..='\u{200f}' | '\u{2028}'..='\u{202e}' | '\u{feff}'))
}

fn escape_char(out: &mut String, c: char, delim: char, ascii: bool) {
    if c == delim || c == '\\' {
        out.push('\\');
        out.push(c);
        return;
    }
    if printable(c) && (!ascii || c.is_ascii()) {
        out.push(c);
        return;
    }
    match c {
        '\u{7}' => out.push_str("\\a"),
        '\u{8}' => out.push_str("\\b"),
        '\u{c}' => out.push_str("\\f"),
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        '\u{b}' => out.push_str("\\v"),
        c if u32::from(c) < 0x20 || c == '\u{7f}' => {
            out.push_str(&format!("\\x{:02x}", u32::from(c)));
        }
        c if u32::from(c) < 0x10000 => out.push_str(&format!("\\u{:04x}", u32::from(c))),
        c => out.push_str(&format!("\\U{:08x}", u32::from(c))),
    }
}

/// The decimal digits of a finite, non-negative float (no trailing zeros)
/// and the position of the decimal point, as Go's `strconv` holds them:
/// `digits` × 10^(dp − len). `sig`: round to that many significant digits;
/// `None`: the shortest digits that read back to the same float.
fn decimal(f: f64, sig: Option<usize>) -> (Vec<u8>, i64) {
    let s = match sig {
        None => format!("{f:e}"),
        Some(n) => format!("{:.*e}", n.saturating_sub(1), f),
    };
    let (mant, exp) = s.split_once('e').unwrap_or((&s, "0"));
    let exp: i64 = exp.parse().unwrap_or(0);
    let mut digits: Vec<u8> = mant.bytes().filter(u8::is_ascii_digit).collect();
    while digits.last() == Some(&b'0') {
        digits.pop();
    }
    if digits.is_empty() {
        return (digits, 0);
    }
    (digits, exp.saturating_add(1))
}

/// `%e` with `prec` digits after the point, from decimal digits.
fn exp_form(digits: &[u8], dp: i64, prec: usize, upper: bool) -> String {
    let mut out = String::new();
    out.push(char::from(digits.first().copied().unwrap_or(b'0')));
    if prec > 0 {
        out.push('.');
        for i in 1..=prec {
            out.push(char::from(digits.get(i).copied().unwrap_or(b'0')));
        }
    }
    let exp = if digits.is_empty() {
        0
    } else {
        dp.saturating_sub(1)
    };
    out.push(if upper { 'E' } else { 'e' });
    out.push(if exp < 0 { '-' } else { '+' });
    let mag = exp.unsigned_abs();
    if mag < 10 {
        out.push('0');
    }
    out.push_str(&mag.to_string());
    out
}

/// `%f` with `prec` digits after the point, from decimal digits.
fn fixed_form(digits: &[u8], dp: i64, prec: usize) -> String {
    let mut out = String::new();
    let digit = |i: i64| {
        usize::try_from(i)
            .ok()
            .and_then(|i| digits.get(i))
            .map_or('0', |d| char::from(*d))
    };
    if dp > 0 {
        for i in 0..dp {
            out.push(digit(i));
        }
    } else {
        out.push('0');
    }
    if prec > 0 {
        out.push('.');
        for i in 1..=prec {
            out.push(digit(
                dp.saturating_add(i64::try_from(i).unwrap_or(i64::MAX))
                    .saturating_sub(1),
            ));
        }
    }
    out
}

/// `%e` of a non-negative float.
fn fmt_e(f: f64, prec: usize, upper: bool) -> String {
    if !f.is_finite() {
        return String::new();
    }
    let (digits, dp) = decimal(f, Some(prec.saturating_add(1)));
    exp_form(&digits, dp, prec, upper)
}

/// `%g` (and `%v`) of a non-negative float: the shortest representation
/// without a precision, exponent form when the exponent is below -4 or at
/// least the precision (6 for the shortest form), as Go's `strconv`.
pub(crate) fn fmt_g(f: f64, prec: Option<usize>, upper: bool) -> String {
    if !f.is_finite() {
        return String::new();
    }
    let (digits, dp) = decimal(f, prec.map(|p| p.max(1)));
    let nd = i64::try_from(digits.len()).unwrap_or(i64::MAX);
    let (mut p, eprec) = match prec {
        None => (nd, 6),
        Some(p) => {
            let p = i64::try_from(p.max(1)).unwrap_or(i64::MAX);
            let eprec = if p > nd && nd >= dp { nd } else { p };
            (p, eprec)
        }
    };
    let exp = dp.saturating_sub(1);
    if exp < -4 || exp >= eprec {
        if p > nd {
            p = nd;
        }
        let prec = usize::try_from(p.saturating_sub(1)).unwrap_or(0);
        return exp_form(&digits, dp, prec, upper);
    }
    if p > dp {
        p = nd;
    }
    let prec = usize::try_from(p.saturating_sub(dp).max(0)).unwrap_or(0);
    fixed_form(&digits, dp, prec)
}
