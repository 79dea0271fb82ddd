//! The function table: Go's text/template built-ins plus ContainerPilot's extensions.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::{Value, gofmt};

/// A template function. Errors are plain messages; the renderer adds the
/// position and the function's name.
pub type Func = Arc<dyn Fn(&[Value]) -> Result<Value, String> + Send + Sync>;

/// Longest list `loop` will build: large enough for any real config, small
/// enough that a typo cannot exhaust memory.
pub const MAX_LOOP: u64 = 100_000;

/// Most pieces `split` makes: each costs far more memory than its text.
const MAX_PIECES: usize = 1_000_000;

// The largest string `replaceAll`, `regexReplaceAll` and the escapers will
// build; checked before or while building it.
use gofmt::MAX_STRING;

/// The functions a template may call. It holds no ambient authority: a
/// function reaches the environment, the catalog or files only if the caller
/// installed one that does.
#[derive(Clone, Default)]
pub struct Funcs {
    map: HashMap<String, Func>,
    /// Functions installed by the caller with [`Funcs::insert`]. They may
    /// block on I/O the caller bounds itself (a catalog read), so their time
    /// is not counted against a render's wall-clock budget.
    external: std::collections::HashSet<String>,
}

impl Funcs {
    /// Go's built-ins and ContainerPilot's pure helpers, with no access to
    /// anything outside the template's own data.
    pub fn builtin() -> Self {
        let mut f = Funcs::default();
        f.add("default", |a| {
            let [def, val] = two(a, "default")?;
            Ok(match val {
                Value::Nil => def.clone(),
                Value::Str(s) if s.is_empty() => def.clone(),
                v => v.clone(),
            })
        });
        f.add("split", |a| {
            let [sep, s] = two(a, "split")?;
            let (sep, s) = (text(sep), text(s));
            if s.is_empty() {
                return Ok(Value::List(vec![Value::Str(String::new())]));
            }
            let pieces = if sep.is_empty() {
                s.chars().count()
            } else {
                s.matches(sep.as_str()).count().saturating_add(1)
            };
            if pieces > MAX_PIECES {
                return Err(format!(
                    "split would make {pieces} pieces, more than {MAX_PIECES}"
                ));
            }
            Ok(Value::List(if sep.is_empty() {
                s.chars().map(|c| Value::Str(c.to_string())).collect()
            } else {
                s.split(sep.as_str()).map(Value::from).collect()
            }))
        });
        f.add("join", |a| {
            let [sep, list] = two(a, "join")?;
            match list {
                Value::List(l) => Ok(Value::Str(
                    l.iter().map(text).collect::<Vec<_>>().join(&text(sep)),
                )),
                Value::Nil => Ok(Value::Str(String::new())),
                other => Ok(Value::Str(text(other))),
            }
        });
        f.add("replaceAll", |a| {
            let [from, to, s] = three(a, "replaceAll")?;
            let (from, to, s) = (text(from), text(to), text(s));
            // An empty pattern matches between every character.
            let hits = if from.is_empty() {
                s.chars().count().saturating_add(1)
            } else {
                s.matches(from.as_str()).count()
            };
            let size = hits
                .checked_mul(to.len())
                .and_then(|grow| s.len().checked_add(grow))
                .filter(|n| *n <= MAX_STRING)
                .ok_or_else(|| format!("the result would be larger than {MAX_STRING} bytes"))?;
            let mut out = String::with_capacity(size);
            out.push_str(&s.replace(&from, &to));
            Ok(Value::Str(out))
        });
        f.add("regexReplaceAll", |a| {
            let [re, to, s] = three(a, "regexReplaceAll")?;
            let re = regex::RegexBuilder::new(&text(re))
                .size_limit(1 << 20)
                .build()
                .map_err(|e| format!("bad regex: {e}"))?;
            let (to, s) = (text(to), text(s));
            // Each `$name` in the replacement expands to at most the match,
            // so bound the result before expanding anything.
            let refs = to.matches('$').count();
            let mut size = s.len();
            for m in re.find_iter(&s) {
                size = refs
                    .checked_mul(m.len())
                    .and_then(|x| x.checked_add(to.len()))
                    .and_then(|x| size.checked_add(x))
                    .filter(|n| *n <= MAX_STRING)
                    .ok_or_else(|| format!("the result would be larger than {MAX_STRING} bytes"))?;
            }
            Ok(Value::Str(re.replace_all(&s, to.as_str()).into_owned()))
        });
        f.add("loop", |a| {
            let ints: Vec<i64> = a
                .iter()
                .map(|v| {
                    v.as_int()
                        .ok_or_else(|| format!("loop wants integers, got {}", v.type_name()))
                })
                .collect::<Result<_, _>>()?;
            let (from, to) = match ints.as_slice() {
                [n] => (0, *n),
                [a, b] => (*a, *b),
                _ => return Err(format!("loop takes 1 or 2 integers, got {}", ints.len())),
            };
            if from.abs_diff(to) > MAX_LOOP {
                return Err(format!("loop range {from}..{to} is longer than {MAX_LOOP}"));
            }
            Ok(Value::List(if from <= to {
                (from..to).map(Value::Int).collect()
            } else {
                // Counting down from `from` to just above `to`.
                (to..from)
                    .rev()
                    .map(|i| Value::Int(i.saturating_add(1)))
                    .collect()
            }))
        });
        f.add("printf", |a| {
            let (fmt, rest) = a.split_first().ok_or("printf needs a format")?;
            match fmt {
                Value::Str(f) => gofmt::sprintf(f, rest).map(Value::Str),
                other => Err(format!(
                    "printf wants a string format, got {}",
                    other.type_name()
                )),
            }
        });
        f.add("print", |a| Ok(Value::Str(gofmt::sprint(a))));
        f.add("println", |a| Ok(Value::Str(gofmt::sprintln(a))));
        // Go's escapers: one string argument as it is, several printed
        // together as `print` does.
        f.add("html", |a| escape(&escaper_arg(a), html_piece));
        f.add("js", |a| escape(&escaper_arg(a), js_piece));
        f.add("urlquery", |a| escape(&escaper_arg(a), query_piece));
        f.add("slice", slice);
        f.add("call", |a| {
            let what = a.first().map_or("nothing", Value::type_name);
            Err(format!(
                "can't call {what}: templates here hold no function values"
            ))
        });
        f.add("len", |a| {
            let [v] = one(a, "len")?;
            let n = match v {
                Value::Str(s) => s.len(),
                Value::List(l) => l.len(),
                Value::Map(m) => m.len(),
                // A missing value (an unset variable) has no length, as ""
                // has none: kept from ContainerPilot's env-map templates.
                Value::Nil => 0,
                other => return Err(format!("len of type {}", other.go_type())),
            };
            i64::try_from(n)
                .map(Value::Int)
                .map_err(|_| format!("length {n} is too large"))
        });
        f.add("index", |a| {
            let (first, keys) = a.split_first().ok_or("index needs a value")?;
            if *first == Value::Nil {
                return Err("index of untyped nil".to_string());
            }
            let mut v = first.clone();
            for k in keys {
                v = match &v {
                    Value::List(l) => {
                        let i = index_arg(k)?;
                        usize::try_from(i)
                            .ok()
                            .and_then(|u| l.get(u))
                            .cloned()
                            .ok_or_else(|| format!("index {i} out of range"))?
                    }
                    Value::Str(s) => {
                        let i = index_arg(k)?;
                        usize::try_from(i)
                            .ok()
                            .and_then(|u| s.as_bytes().get(u))
                            .map(|b| Value::Int(i64::from(*b)))
                            .ok_or_else(|| format!("index {i} out of range"))?
                    }
                    Value::Map(m) => match k {
                        Value::Str(k) => m.get(k).cloned().unwrap_or_default(),
                        other => {
                            return Err(format!(
                                "value has type {}; should be string",
                                other.go_type()
                            ));
                        }
                    },
                    Value::Nil => return Err("index of nil pointer".to_string()),
                    other => return Err(format!("can't index item of type {}", other.go_type())),
                };
            }
            Ok(v)
        });
        f.add("not", |a| {
            let [v] = one(a, "not")?;
            Ok(Value::Bool(!v.truthy()))
        });
        // The renderer short-circuits `and` and `or` itself (it stops
        // evaluating at the deciding operand); these serve a call with
        // evaluated arguments, such as `{{ .X | and 1 }}`.
        f.add("and", |a| {
            if a.is_empty() {
                return Err("wrong number of args for and: want at least 1 got 0".to_string());
            }
            Ok(a.iter()
                .find(|v| !v.truthy())
                .or(a.last())
                .cloned()
                .unwrap_or_default())
        });
        f.add("or", |a| {
            if a.is_empty() {
                return Err("wrong number of args for or: want at least 1 got 0".to_string());
            }
            Ok(a.iter()
                .find(|v| v.truthy())
                .or(a.last())
                .cloned()
                .unwrap_or_default())
        });
        // Go's comparisons: the operands' kinds must match (an int and a
        // uint compare by value), so `eq 1 "1"` is an error, not false.
        f.add("eq", |a| {
            let (first, rest) = a.split_first().ok_or("missing argument for comparison")?;
            if rest.is_empty() {
                return Err("missing argument for comparison".to_string());
            }
            for b in rest {
                if go_eq(first, b)? {
                    return Ok(Value::Bool(true));
                }
            }
            Ok(Value::Bool(false))
        });
        f.add("ne", |a| {
            let [x, y] = two(a, "ne")?;
            Ok(Value::Bool(!go_eq(x, y)?))
        });
        f.add("lt", |a| {
            let [x, y] = two(a, "lt")?;
            Ok(Value::Bool(go_lt(x, y)?))
        });
        f.add("le", |a| {
            let [x, y] = two(a, "le")?;
            Ok(Value::Bool(go_lt(x, y)? || go_eq(x, y)?))
        });
        f.add("gt", |a| {
            let [x, y] = two(a, "gt")?;
            Ok(Value::Bool(!(go_lt(x, y)? || go_eq(x, y)?)))
        });
        f.add("ge", |a| {
            let [x, y] = two(a, "ge")?;
            Ok(Value::Bool(!go_lt(x, y)?))
        });
        f.add("toJSON", |a| {
            let [v] = one(a, "toJSON")?;
            serde_json::to_string(&v.to_json())
                .map(Value::Str)
                .map_err(|e| e.to_string())
        });
        f.add("byTag", |a| {
            let [list] = one(a, "byTag")?;
            let mut by: BTreeMap<String, Vec<Value>> = BTreeMap::new();
            for item in list_items(list, "byTag")? {
                if let Value::Map(m) = item
                    && let Some(Value::List(tags)) = m.get("Tags")
                {
                    for t in tags {
                        let list = by.entry(text(t)).or_default();
                        // An instance listing a tag twice still appears once.
                        if !list.contains(item) {
                            list.push(item.clone());
                        }
                    }
                }
            }
            Ok(Value::from(by))
        });
        f.add("sortBy", |a| {
            let [field, list] = two(a, "sortBy")?;
            let field = text(field);
            let mut items = list_items(list, "sortBy")?.to_vec();
            let key = |v: &Value| match v {
                Value::Map(m) => m.get(&field).cloned().unwrap_or_default(),
                _ => Value::Nil,
            };
            // Stable, so equal keys keep the catalog's order (by ID).
            items.sort_by(|x, y| compare(&key(x), &key(y)).unwrap_or(Ordering::Equal));
            Ok(Value::List(items))
        });
        f.add("contains", |a| {
            let [needle, hay] = two(a, "contains")?;
            Ok(Value::Bool(match hay {
                Value::List(l) => l
                    .iter()
                    .any(|v| compare(v, needle) == Some(Ordering::Equal)),
                Value::Map(m) => m.contains_key(&text(needle)),
                other => text(other).contains(&text(needle)),
            }))
        });
        f.add("parseJSON", |a| {
            let [v] = one(a, "parseJSON")?;
            serde_json::from_str::<serde_json::Value>(&text(v))
                .map(|j| Value::from_json(&j))
                .map_err(|e| format!("invalid JSON: {e}"))
        });
        f
    }

    /// The built-ins plus `env`, reading from the given environment (not the
    /// process's, so callers decide what a template may see).
    pub fn with_env(env: BTreeMap<String, String>) -> Self {
        let mut f = Self::builtin();
        let env = Arc::new(env);
        f.add("env", move |a| {
            let [k] = one(a, "env")?;
            Ok(Value::Str(env.get(&text(k)).cloned().unwrap_or_default()))
        });
        f
    }

    /// Installs (or replaces) a function. Its time is not counted against
    /// the render's wall-clock budget (see [`crate::Limits::max_time`]): the
    /// caller bounds its own I/O.
    pub fn insert(
        &mut self,
        name: &str,
        f: impl Fn(&[Value]) -> Result<Value, String> + Send + Sync + 'static,
    ) {
        self.map.insert(name.to_string(), Arc::new(f));
        self.external.insert(name.to_string());
    }

    fn add(
        &mut self,
        name: &str,
        f: impl Fn(&[Value]) -> Result<Value, String> + Send + Sync + 'static,
    ) {
        self.map.insert(name.to_string(), Arc::new(f));
        self.external.remove(name);
    }

    pub(crate) fn is_external(&self, name: &str) -> bool {
        self.external.contains(name)
    }

    pub fn get(&self, name: &str) -> Option<&Func> {
        self.map.get(name)
    }

    /// The names of every installed function, for [`crate::Template::check_functions`].
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.map.keys().map(String::as_str)
    }
}

fn list_items<'a>(v: &'a Value, name: &str) -> Result<&'a [Value], String> {
    match v {
        Value::List(l) => Ok(l),
        Value::Nil => Ok(&[]),
        other => Err(format!("{name} wants a list, got {}", other.type_name())),
    }
}

fn text(v: &Value) -> String {
    v.to_string()
}

/// The single argument of function `name`, or an arity error.
pub fn one<'a>(a: &'a [Value], name: &str) -> Result<[&'a Value; 1], String> {
    match a {
        [x] => Ok([x]),
        _ => Err(format!("{name} takes 1 argument, got {}", a.len())),
    }
}

/// The two arguments of function `name`, or an arity error.
pub fn two<'a>(a: &'a [Value], name: &str) -> Result<[&'a Value; 2], String> {
    match a {
        [x, y] => Ok([x, y]),
        _ => Err(format!("{name} takes 2 arguments, got {}", a.len())),
    }
}

fn three<'a>(a: &'a [Value], name: &str) -> Result<[&'a Value; 3], String> {
    match a {
        [x, y, z] => Ok([x, y, z]),
        _ => Err(format!("{name} takes 3 arguments, got {}", a.len())),
    }
}

fn compare(a: &Value, b: &Value) -> Option<Ordering> {
    match (a, b) {
        (Value::Int(x), Value::Int(y)) => Some(x.cmp(y)),
        (Value::Int(x), Value::Float(y)) => int_as_float(*x).partial_cmp(y),
        (Value::Float(x), Value::Int(y)) => x.partial_cmp(&int_as_float(*y)),
        (Value::Float(x), Value::Float(y)) => x.partial_cmp(y),
        (Value::Str(x), Value::Str(y)) => Some(x.cmp(y)),
        (Value::Bool(x), Value::Bool(y)) => Some(x.cmp(y)),
        (Value::Nil, Value::Nil) => Some(Ordering::Equal),
        (x, y) if x == y => Some(Ordering::Equal),
        _ => None,
    }
}

/// The nearest float to an integer, as Go converts for mixed comparisons.
#[allow(
    clippy::cast_precision_loss,
    reason = "rounding to the nearest float is the documented conversion"
)]
fn int_as_float(i: i64) -> f64 {
    i as f64
}

/// An index for `index` or `slice`: an integer of either sign.
fn index_arg(k: &Value) -> Result<i64, String> {
    match k {
        Value::Int(i) => Ok(*i),
        Value::Uint(u) => i64::try_from(*u).map_err(|_| format!("index {u} out of range")),
        other => Err(format!(
            "cannot index slice/array with type {}",
            other.go_type()
        )),
    }
}

/// Go's `slice x 1 2` (and `slice x 1 2 3` for lists): indexes count bytes in a string.
fn slice(a: &[Value]) -> Result<Value, String> {
    let (item, idx) = a.split_first().ok_or("slice needs a value")?;
    let len = match item {
        Value::Str(s) => s.len(),
        Value::List(l) => l.len(),
        Value::Nil => return Err("slice of untyped nil".to_string()),
        other => return Err(format!("can't slice item of type {}", other.go_type())),
    };
    if idx.len() > 3 {
        return Err(format!("too many slice indexes: {}", idx.len()));
    }
    if idx.len() == 3 && matches!(item, Value::Str(_)) {
        return Err("cannot 3-index slice a string".to_string());
    }
    // Go bounds every index by the capacity, which for our values is the length.
    let mut at = [0usize, len, len];
    for (slot, k) in at.iter_mut().zip(idx) {
        let i = index_arg(k)?;
        *slot = usize::try_from(i)
            .ok()
            .filter(|u| *u <= len)
            .ok_or_else(|| format!("index out of range: {i}"))?;
    }
    let [lo, hi, max] = at;
    if lo > hi {
        return Err(format!("invalid slice index: {lo} > {hi}"));
    }
    if idx.len() == 3 && hi > max {
        return Err(format!("invalid slice index: {hi} > {max}"));
    }
    match item {
        Value::Str(s) => s
            .get(lo..hi)
            .map(Value::from)
            .ok_or_else(|| format!("slice {lo}:{hi} splits a character")),
        Value::List(l) => Ok(Value::List(l.get(lo..hi).unwrap_or_default().to_vec())),
        _ => Ok(Value::Nil),
    }
}

/// The text `html`, `js` and `urlquery` escape.
fn escaper_arg(a: &[Value]) -> String {
    match a {
        [Value::Str(s)] => s.clone(),
        _ => gofmt::sprint(a),
    }
}

/// Escapes `s` with `piece` (the replacement of a character, or `None` to
/// keep it). The result's size is counted first, so one larger than
/// [`MAX_STRING`] is refused before it is built.
fn escape(s: &str, piece: fn(char) -> Option<Cow<'static, str>>) -> Result<Value, String> {
    let mut len = 0usize;
    for c in s.chars() {
        len = len.saturating_add(piece(c).map_or(c.len_utf8(), |p| p.len()));
    }
    if len > MAX_STRING {
        return Err(format!(
            "the result would be larger than {MAX_STRING} bytes"
        ));
    }
    let mut out = String::with_capacity(len);
    let mut kept = 0;
    for (i, c) in s.char_indices() {
        if let Some(p) = piece(c) {
            out.push_str(s.get(kept..i).unwrap_or_default());
            out.push_str(&p);
            kept = i.saturating_add(c.len_utf8());
        }
    }
    out.push_str(s.get(kept..).unwrap_or_default());
    Ok(Value::Str(out))
}

/// Go's `template.HTMLEscapeString`.
fn html_piece(c: char) -> Option<Cow<'static, str>> {
    Some(Cow::Borrowed(match c {
        '"' => "&#34;",
        '\'' => "&#39;",
        '&' => "&amp;",
        '<' => "&lt;",
        '>' => "&gt;",
        '\0' => "\u{fffd}",
        _ => return None,
    }))
}

/// Go's `url.QueryEscape`: unreserved bytes as they are, space as `+`,
/// every other byte as `%XX`.
fn query_piece(c: char) -> Option<Cow<'static, str>> {
    match c {
        'A'..='Z' | 'a'..='z' | '0'..='9' | '-' | '_' | '.' | '~' => None,
        ' ' => Some(Cow::Borrowed("+")),
        c => {
            let mut buf = [0u8; 4];
            Some(Cow::Owned(
                c.encode_utf8(&mut buf)
                    .bytes()
                    .map(|b| format!("%{b:02X}"))
                    .collect(),
            ))
        }
    }
}

/// Go's `template.JSEscapeString`.
fn js_piece(c: char) -> Option<Cow<'static, str>> {
    Some(match c {
        '\\' => Cow::Borrowed("\\\\"),
        '\'' => Cow::Borrowed("\\'"),
        '"' => Cow::Borrowed("\\\""),
        '<' => Cow::Borrowed("\\u003C"),
        '>' => Cow::Borrowed("\\u003E"),
        '&' => Cow::Borrowed("\\u0026"),
        '=' => Cow::Borrowed("\\u003D"),
        c if u32::from(c) < 0x20 || (!c.is_ascii() && (c.is_control() || c.is_whitespace())) => {
            Cow::Owned(format!("\\u{:04X}", u32::from(c)))
        }
        _ => return None,
    })
}

/// Go's `eq` for two operands.
fn go_eq(a: &Value, b: &Value) -> Result<bool, String> {
    Ok(match (a, b) {
        (Value::Int(x), Value::Uint(y)) | (Value::Uint(y), Value::Int(x)) => {
            u64::try_from(*x).is_ok_and(|x| x == *y)
        }
        (Value::Int(x), Value::Int(y)) => x == y,
        (Value::Uint(x), Value::Uint(y)) => x == y,
        (Value::Float(x), Value::Float(y)) => x == y,
        (Value::Str(x), Value::Str(y)) => x == y,
        (Value::Bool(x), Value::Bool(y)) => x == y,
        (Value::Nil, Value::Nil) => true,
        // A missing value equals nothing but nil, and is no error.
        (Value::Nil, _) | (_, Value::Nil) => false,
        (Value::List(_) | Value::Map(_), _) => {
            return Err(format!("non-comparable type {}", a.go_type()));
        }
        (_, Value::List(_) | Value::Map(_)) => {
            return Err(format!("non-comparable type {}", b.go_type()));
        }
        _ => return Err(incompatible(a, b)),
    })
}

/// Go's `lt`: ints, uints, floats and strings only.
fn go_lt(a: &Value, b: &Value) -> Result<bool, String> {
    Ok(match (a, b) {
        (Value::Int(x), Value::Uint(y)) => u64::try_from(*x).map_or(true, |x| x < *y),
        (Value::Uint(x), Value::Int(y)) => u64::try_from(*y).is_ok_and(|y| *x < y),
        (Value::Int(x), Value::Int(y)) => x < y,
        (Value::Uint(x), Value::Uint(y)) => x < y,
        (Value::Float(x), Value::Float(y)) => x < y,
        (Value::Str(x), Value::Str(y)) => x < y,
        (
            Value::Int(_) | Value::Uint(_) | Value::Float(_) | Value::Str(_),
            Value::Int(_) | Value::Uint(_) | Value::Float(_) | Value::Str(_),
        ) => {
            return Err(incompatible(a, b));
        }
        _ => {
            let bad = if matches!(
                a,
                Value::Int(_) | Value::Uint(_) | Value::Float(_) | Value::Str(_)
            ) {
                b
            } else {
                a
            };
            return Err(format!("invalid type for comparison: {}", bad.go_type()));
        }
    })
}

fn incompatible(a: &Value, b: &Value) -> String {
    format!(
        "incompatible types for comparison: {} and {}",
        a.go_type(),
        b.go_type()
    )
}
