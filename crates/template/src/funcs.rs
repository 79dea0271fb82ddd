//! The function table: Go's text/template built-ins plus ContainerPilot's extensions.

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::Value;

/// A template function. Errors are plain messages; the renderer adds the
/// position and the function's name.
pub type Func = Arc<dyn Fn(&[Value]) -> Result<Value, String> + Send + Sync>;

/// Longest list `loop` will build: large enough for any real config, small
/// enough that a typo cannot exhaust memory.
pub const MAX_LOOP: u64 = 100_000;

/// Largest width or precision `printf` accepts (`%9999999999d` is an error,
/// not a 10 GB string).
pub const MAX_PRINTF_WIDTH: usize = 4096;

/// Most pieces `split` makes: each costs far more memory than its text.
const MAX_PIECES: usize = 1_000_000;

/// Largest string `replaceAll` and `regexReplaceAll` will build; checked
/// before building it.
const MAX_STRING: usize = 16 * 1024 * 1024;

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
            sprintf(&text(fmt), rest).map(Value::Str)
        });
        f.add("print", |a| Ok(Value::Str(sprint(a))));
        f.add("println", |a| {
            let words: Vec<String> = a.iter().map(text).collect();
            Ok(Value::Str(words.join(" ") + "\n"))
        });
        f.add("len", |a| {
            let [v] = one(a, "len")?;
            let n = match v {
                Value::Str(s) => s.len(),
                Value::List(l) => l.len(),
                Value::Map(m) => m.len(),
                Value::Nil => 0,
                other => return Err(format!("len of {}", other.type_name())),
            };
            i64::try_from(n)
                .map(Value::Int)
                .map_err(|_| format!("length {n} is too large"))
        });
        f.add("index", |a| {
            let (first, keys) = a.split_first().ok_or("index needs a value")?;
            let mut v = first.clone();
            for k in keys {
                v = match (&v, k) {
                    (Value::List(l), k) => {
                        let i = k.as_int().ok_or("list index must be an integer")?;
                        l.get(usize::try_from(i).map_err(|_| "negative index".to_string())?)
                            .cloned()
                            .ok_or_else(|| format!("index {i} out of range"))?
                    }
                    (Value::Map(m), k) => m.get(&text(k)).cloned().unwrap_or_default(),
                    (Value::Nil, _) => Value::Nil,
                    (other, _) => return Err(format!("can't index {}", other.type_name())),
                };
            }
            Ok(v)
        });
        f.add("not", |a| {
            let [v] = one(a, "not")?;
            Ok(Value::Bool(!v.truthy()))
        });
        f.add("and", |a| {
            Ok(a.iter()
                .find(|v| !v.truthy())
                .or(a.last())
                .cloned()
                .unwrap_or_default())
        });
        f.add("or", |a| {
            Ok(a.iter()
                .find(|v| v.truthy())
                .or(a.last())
                .cloned()
                .unwrap_or_default())
        });
        f.add("eq", |a| {
            let (first, rest) = a.split_first().ok_or("eq needs arguments")?;
            Ok(Value::Bool(
                rest.iter()
                    .any(|b| compare(first, b) == Some(Ordering::Equal)),
            ))
        });
        f.add("ne", |a| {
            let [x, y] = two(a, "ne")?;
            Ok(Value::Bool(compare(x, y) != Some(Ordering::Equal)))
        });
        for (name, want) in [
            ("lt", &[Ordering::Less][..]),
            ("le", &[Ordering::Less, Ordering::Equal][..]),
            ("gt", &[Ordering::Greater][..]),
            ("ge", &[Ordering::Greater, Ordering::Equal][..]),
        ] {
            let want = want.to_vec();
            f.add(name, move |a| {
                let [x, y] = two(a, name)?;
                let ord = compare(x, y).ok_or_else(|| {
                    format!(
                        "incompatible types for comparison: {} and {}",
                        x.type_name(),
                        y.type_name()
                    )
                })?;
                Ok(Value::Bool(want.contains(&ord)))
            });
        }
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

/// Go's `fmt.Sprint`: spaces only between operands when neither is a string.
fn sprint(args: &[Value]) -> String {
    let mut out = String::new();
    for (i, v) in args.iter().enumerate() {
        let prev_str = i
            .checked_sub(1)
            .and_then(|p| args.get(p))
            .is_some_and(|p| matches!(p, Value::Str(_)));
        if i > 0 && !matches!(v, Value::Str(_)) && !prev_str {
            out.push(' ');
        }
        out.push_str(&v.to_string());
    }
    out
}

/// The subset of Go's `fmt.Sprintf` that configs use: `%v %s %d %q %f %x %X
/// %t %%`, with flags `-` and `0`, a width and a precision (each at most
/// [`MAX_PRINTF_WIDTH`]).
fn sprintf(fmt: &str, args: &[Value]) -> Result<String, String> {
    let mut out = String::new();
    let mut args = args.iter();
    let mut chars = fmt.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let (mut left, mut zero) = (false, false);
        while let Some(&f) = chars.peek() {
            match f {
                '-' => left = true,
                '0' => zero = true,
                '+' | ' ' | '#' => {}
                _ => break,
            }
            chars.next();
        }
        let width = printf_number(&mut chars, "width")?;
        let mut prec: Option<usize> = None;
        if chars.peek() == Some(&'.') {
            chars.next();
            prec = Some(printf_number(&mut chars, "precision")?);
        }
        let Some(verb) = chars.next() else {
            out.push_str("%!(NOVERB)");
            break;
        };
        if verb == '%' {
            out.push('%');
            continue;
        }
        let Some(arg) = args.next() else {
            out.push_str(&format!("%!{verb}(MISSING)"));
            continue;
        };
        let body = match verb {
            'd' => match arg.as_int() {
                Some(i) => i.to_string(),
                None => format!("%!d({})", arg.type_name()),
            },
            'f' | 'F' => {
                let f = match arg {
                    Value::Float(f) => *f,
                    other => other.as_int().map(int_as_float).unwrap_or(f64::NAN),
                };
                format!("{:.*}", prec.unwrap_or(6), f)
            }
            'x' | 'X' => {
                let s = match arg {
                    Value::Str(s) => s.bytes().map(|b| format!("{b:02x}")).collect(),
                    other => other.as_int().map(|i| format!("{i:x}")).unwrap_or_default(),
                };
                if verb == 'X' { s.to_uppercase() } else { s }
            }
            'q' => serde_json::to_string(&arg.to_string()).unwrap_or_default(),
            't' => arg.truthy().to_string(),
            _ => {
                let s = arg.to_string();
                match prec {
                    Some(p) if verb == 's' => s.chars().take(p).collect(),
                    _ => s,
                }
            }
        };
        let pad = width.saturating_sub(body.chars().count());
        if left {
            out.push_str(&body);
            out.extend(std::iter::repeat_n(' ', pad));
        } else if zero && matches!(verb, 'd' | 'f' | 'x' | 'X') {
            let (sign, digits) = body
                .strip_prefix('-')
                .map_or(("", body.as_str()), |d| ("-", d));
            out.push_str(sign);
            out.extend(std::iter::repeat_n('0', pad));
            out.push_str(digits);
        } else {
            out.extend(std::iter::repeat_n(' ', pad));
            out.push_str(&body);
        }
        if out.len() > MAX_STRING {
            return Err(format!(
                "the result would be larger than {MAX_STRING} bytes"
            ));
        }
    }
    let extra: Vec<_> = args.collect();
    if !extra.is_empty() {
        out.push_str("%!(EXTRA ");
        out.push_str(
            &extra
                .iter()
                .map(|v| v.to_string())
                .collect::<Vec<_>>()
                .join(", "),
        );
        out.push(')');
    }
    Ok(out)
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
