//! Property tests of the template engine: it never panics and every render ends within its budget.

use std::time::{Duration, Instant};

use autopilot_template::{Funcs, Limits, Template, Value};
use proptest::prelude::*;

fn limits() -> Limits {
    Limits {
        max_time: Duration::from_millis(50),
        max_steps: 200_000,
        ..Limits::default()
    }
}

/// Parses and, if that works, renders `src`; fails if the render overran.
fn exercise(src: &str) -> Result<(), TestCaseError> {
    let limits = limits();
    let Ok(t) = Template::parse_with(src, &limits) else {
        return Ok(());
    };
    let data = Value::from_json(&serde_json::json!({
        "A": "x", "L": [1, 2, 3], "M": { "k": [ { "Tags": ["a"] } ] }
    }));
    let started = Instant::now();
    let _ = t.render_with(&data, &Funcs::with_env(Default::default()), &limits);
    // One step can overshoot the clock by at most one bounded function call.
    prop_assert!(
        started.elapsed() < limits.max_time + Duration::from_secs(1),
        "{src:?} took {:?}",
        started.elapsed()
    );
    Ok(())
}

const SYNTAX: &[&str] = &[
    "{{",
    "}}",
    "{{-",
    "-}}",
    " ",
    "(",
    ")",
    "|",
    ".",
    "$",
    "$x",
    ":=",
    "=",
    "\"",
    "`",
    "'",
    "1",
    "-1",
    "0x",
    "9223372036854775807",
    "if",
    "else",
    "end",
    "range",
    "with",
    "loop",
    "printf",
    "len",
    "index",
    "/*",
    "*/",
    "define",
    "template",
    "block",
    "break",
    "continue",
    "\"T\"",
    "and",
    "or",
    "slice",
    "0o17",
    "0x1p4",
    "1_0",
    "1e",
    "'\\",
    "a",
    ".A",
    ".L",
    ",",
    "\n",
    "%",
    "d",
];

/// Block openers; each generated one gets a body and its `{{ end }}`.
const OPENERS: &[&str] = &[
    "{{ range 1000000000 }}",
    "{{ range loop 100000 }}",
    "{{ range .L }}",
    "{{ range $i, $e := .M }}",
    "{{ if 1 }}",
    "{{ if .A }}x{{ else if 0 }}",
    "{{ with .M }}",
    "{{ with $y := .L }}y{{ else }}",
    "{{ define \"T\" }}",
    "{{ block \"T\" . }}",
    "{{ block \"U\" .L }}{{ template \"T\" . }}",
    "{{ range .L }}{{ if . }}{{ break }}{{ end }}",
];

/// Templates whose blocks balance, so most reach the renderer.
fn balanced() -> impl Strategy<Value = String> {
    let leaf = prop::sample::select(PIECES).prop_map(str::to_string);
    leaf.prop_recursive(6, 64, 4, |inner| {
        (
            prop::sample::select(OPENERS),
            prop::collection::vec(inner, 0..4),
        )
            .prop_map(|(open, body)| format!("{open}{}{{{{ end }}}}", body.concat()))
    })
}

const PIECES: &[&str] = &[
    "x",
    "{{ range 1000000000 }}",
    "{{ range loop 100000 }}",
    "{{ range .L }}",
    "{{ range $i, $e := .M }}",
    "{{ if 1 }}",
    "{{ if .A }}",
    "{{ else }}",
    "{{ else if 0 }}",
    "{{ with .M }}",
    "{{ end }}",
    "{{ end }}",
    "{{ $x := \"ab\" }}",
    "{{ $x = printf \"%s%s\" $x $x }}",
    "{{ printf \"%4096d\" 1 }}",
    "{{ printf \"%9999999999d\" 1 }}",
    "{{ printf \"%.70000f\" 1.5 }}",
    "{{ loop -1 9223372036854775807 }}",
    "{{ loop -9223372036854775808 9223372036854775807 }}",
    "{{ replaceAll \"\" \"abcdefgh\" (printf \"%4096d\" 1) }}",
    "{{ regexReplaceAll \".\" \"$0$0$0$0\" (printf \"%4096d\" 1) }}",
    "{{ (((((len .L))))) }}",
    "{{ index .L 99 }}",
    "{{ .M | toJSON | parseJSON | byTag }}",
    "{{ split \"\" (printf \"%4096d\" 1) | join \",\" }}",
    "{{ define \"T\" }}{{ template \"T\" . }}{{ end }}",
    "{{ define \"U\" }}{{ range . }}{{ template \"U\" $ }}{{ end }}{{ end }}",
    "{{ template \"T\" .L }}",
    "{{ template \"U\" .L }}",
    "{{ template \"V\" }}",
    "{{ range .L }}{{ break }}{{ continue }}{{ end }}",
    "{{ continue }}",
    "{{ and .A (index .L 9) }}",
    "{{ or 0 (slice .L 2 1) }}",
    "{{ slice .A 0 1 }}",
    "{{ printf \"%*d%-*x%.*e%+q%#U%T\" 4096 1 -4096 -1 4096 1e308 \"\\x00\" 1114111 . }}",
    "{{ printf \"%g%G%o%O%b%c%x\" 1e-320 -0.0 -9223372036854775808 8 -1 1114112 \"\" }}",
    "{{ html .M }}{{ js .L }}{{ urlquery . }}",
    "{{ eq .L .M }}{{ lt .A 1 }}{{ eq 1 \"1\" }}",
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn never_panics_on_arbitrary_text(s in any::<String>()) {
        exercise(&s)?;
    }

    #[test]
    fn never_panics_on_syntax_soup(parts in prop::collection::vec(prop::sample::select(SYNTAX), 0..60)) {
        exercise(&parts.concat())?;
    }

    #[test]
    fn balanced_templates_end_within_budget(parts in prop::collection::vec(balanced(), 1..4)) {
        exercise(&parts.concat())?;
    }

    #[test]
    fn generated_templates_end_within_budget(parts in prop::collection::vec(prop::sample::select(PIECES), 0..24)) {
        exercise(&parts.concat())?;
    }
}

/// Characters of `printf` directives: flags, widths, indexes and verbs.
const FORMAT: &[&str] = &[
    "%", "%", "[", "]", "*", ".", "-", "+", "#", " ", "0", "1", "9", "4096", "v", "d", "s", "x",
    "X", "q", "e", "E", "g", "G", "f", "c", "U", "o", "O", "b", "t", "T", "z", "é",
];

/// Characters of number and character literals.
const NUMBER: &[&str] = &[
    "0",
    "1",
    "7",
    "9",
    "x",
    "X",
    "o",
    "b",
    "_",
    ".",
    "e",
    "E",
    "p",
    "+",
    "-",
    "'",
    "\\",
    "u",
    "a",
    "f",
    "9223372036854775807",
    "18446744073709551616",
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn printf_never_panics(
        fmt in prop::collection::vec(prop::sample::select(FORMAT), 0..24),
        args in prop::sample::select(&[
            "", "1", "-1 \"a\"", "1.5 .L .M", "nil 0x7fffffffffffffff 1e308", "'x' true -0.0 .A",
        ][..]),
    ) {
        let fmt = fmt.concat().replace('`', "");
        exercise(&format!("{{{{ printf `{fmt}` {args} }}}}"))?;
    }

    #[test]
    fn number_literals_never_panic(parts in prop::collection::vec(prop::sample::select(NUMBER), 1..12)) {
        exercise(&format!("{{{{ {} }}}}", parts.concat()))?;
        exercise(&format!("{{{{ printf \"%v%T\" {0} {0} }}}}", parts.concat()))?;
    }
}
