use std::collections::BTreeMap;

use super::*;

fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn r(src: &str, pairs: &[(&str, &str)]) -> String {
    render_env(src, &env(pairs)).unwrap_or_else(|e| panic!("{src:?}: {e}"))
}

#[test]
fn variables_and_unset() {
    assert_eq!(r("a {{ .FOO }} b", &[("FOO", "x")]), "a x b");
    assert_eq!(r("[{{ .MISSING }}]", &[]), "[]");
    assert_eq!(r("{{.A.B}}", &[]), "");
}

#[test]
fn value_with_equals_is_kept_whole() {
    assert_eq!(r("{{ .Q }}", &[("Q", "a=b=c")]), "a=b=c");
}

#[test]
fn containerpilot_documented_examples() {
    assert_eq!(
        r(r#"{{ .CONSUL | default "localhost" }}"#, &[]),
        "localhost"
    );
    assert_eq!(
        r(
            r#"{{ .CONSUL | default "localhost" }}"#,
            &[("CONSUL", "c:8500")]
        ),
        "c:8500"
    );
    assert_eq!(
        r(
            r#"Hello, {{.PARTS | split ":" | join "." }}!"#,
            &[("PARTS", "a:b:c")]
        ),
        "Hello, a.b.c!"
    );
    assert_eq!(
        r(
            r#"Hello, {{.NAME | replaceAll "e" "_" }}!"#,
            &[("NAME", "Template")]
        ),
        "Hello, T_mplat_!"
    );
    assert_eq!(
        r(
            r#"Hello, {{.NAME | regexReplaceAll "[epa]+" "_" }}!"#,
            &[("NAME", "Template")]
        ),
        "Hello, T_m_l_t_!"
    );
    assert_eq!(
        r("{{ range $i := loop 5 }}{{ $i }},{{end}}", &[]),
        "0,1,2,3,4,"
    );
    assert_eq!(
        r("{{ range $i := loop 5 8 }}{{ $i }},{{end}}", &[]),
        "5,6,7,"
    );
    assert_eq!(
        r("{{ range $i := loop 5 1 }}{{ $i }},{{end}}", &[]),
        "5,4,3,2,"
    );
    assert_eq!(r(r#"{{ env "MY_VAR_1" }}"#, &[("MY_VAR_1", "v")]), "v");
}

#[test]
fn dynamic_watches_example() {
    let src = r#"[{{ range $i := loop 0 3 -}}{{ if (env (printf "SERVICE_NAME_%d" $i)) -}}
{name: "{{ (env (printf "SERVICE_NAME_%d" $i)) }}", interval: {{ (env (printf "SERVICE_INTERVAL_%d" $i)) | default 10 }}},
{{- end }}{{- end }}]"#;
    let out = r(
        src,
        &[
            ("SERVICE_NAME_1", "db"),
            ("SERVICE_INTERVAL_1", "3"),
            ("SERVICE_NAME_2", "web"),
        ],
    );
    assert_eq!(
        out,
        r#"[{name: "db", interval: 3},{name: "web", interval: 10},]"#
    );
}

#[test]
fn control_flow() {
    assert_eq!(
        r("{{ if .A }}yes{{ else }}no{{ end }}", &[("A", "1")]),
        "yes"
    );
    assert_eq!(r("{{ if .A }}yes{{ else }}no{{ end }}", &[]), "no");
    assert_eq!(
        r(
            "{{ if .A }}a{{ else if .B }}b{{ else }}c{{ end }}",
            &[("B", "1")]
        ),
        "b"
    );
    assert_eq!(
        r(
            "{{ with .A }}<{{ . }}>{{ else }}none{{ end }}",
            &[("A", "x")]
        ),
        "<x>"
    );
    assert_eq!(
        r("{{ range .NOPE }}x{{ else }}empty{{ end }}", &[]),
        "empty"
    );
    assert_eq!(r("{{ $x := \"v\" }}{{ $x = \"w\" }}{{ $x }}", &[]), "w");
    assert_eq!(
        r(
            r#"{{ range $k, $v := split "," "a,b" }}{{$k}}={{$v}} {{end}}"#,
            &[]
        ),
        "0=a 1=b "
    );
    assert_eq!(r("{{/* a comment */}}x {{- /* trimmed */ -}} y", &[]), "xy");
    assert_eq!(
        r(
            r#"{{ if and (eq .A "1") (ne .B "2") }}ok{{ end }}"#,
            &[("A", "1")]
        ),
        "ok"
    );
    assert_eq!(
        r(r#"{{ if lt 1 2 }}lt{{ end }}{{ len "abc" }}"#, &[]),
        "lt3"
    );
    assert_eq!(
        r(r#"{{ printf "%03d|%-3s|%.2f|%q" 7 "a" 1.5 "x" }}"#, &[]),
        "007|a  |1.50|\"x\""
    );
    assert_eq!(r(r#"{{ index (split "," "a,b") 1 }}"#, &[]), "b");
}

#[test]
fn errors_carry_position() {
    let e = render_env("ok\n  {{ nosuch .X }}", &env(&[])).unwrap_err();
    assert_eq!((e.line, e.column), (2, 6));
    assert!(e.message.contains("nosuch"), "{e}");
    let e = render_env("{{ if .A }}x", &env(&[])).unwrap_err();
    assert!(e.message.contains("without {{end}}"), "{e}");
    let e = render_env("x {{ .A ", &env(&[])).unwrap_err();
    assert!(e.message.contains("unclosed action"), "{e}");
    let e = render_env("{{ end }}", &env(&[])).unwrap_err();
    assert!(e.message.contains("unexpected {{end}}"), "{e}");
    assert!(render_env("{{ loop 0 100000000 }}", &env(&[])).is_err());
}

#[test]
fn json_helpers() {
    assert_eq!(
        r(r#"{{ (parseJSON "{\"a\":[1,2]}").a | toJSON }}"#, &[]),
        "[1,2]"
    );
}

#[test]
fn catalog_shaped_helpers() {
    let list = r#"[{"ID":"b","Port":9,"Tags":["x","y"]},{"ID":"a","Port":10,"Tags":["y","y"]}]"#;
    let src = format!(
        r#"{{{{ $l := parseJSON `{list}` }}}}{{{{ range sortBy "Port" $l }}}}{{{{ .ID }}}}{{{{ end }}}} {{{{ range $t, $s := byTag $l }}}}{{{{ $t }}}}={{{{ len $s }}}} {{{{ end }}}}{{{{ contains "x" (index $l 0).Tags }}}}"#
    );
    assert_eq!(r(&src, &[]), "ba x=1 y=2 true");
    assert!(render_env("{{ sortBy \"P\" 3 }}", &env(&[])).is_err());
}

fn fails(src: &str, want: &str) {
    let start = std::time::Instant::now();
    let e = match render_env(src, &env(&[])) {
        Ok(out) => panic!("{src}: rendered {} bytes", out.len()),
        Err(e) => e,
    };
    // `A | B`: either, where two limits race on a loaded machine.
    assert!(
        want.split(" | ").any(|w| e.message.contains(w)),
        "{}: got {e}, want {want}",
        &src[..src.len().min(60)]
    );
    assert!(
        start.elapsed() < std::time::Duration::from_secs(2),
        "took {:?}",
        start.elapsed()
    );
}

#[test]
fn hostile_templates_fail_fast() {
    let n = 100_000;
    fails(
        &format!("{}x{}", "{{if 1}}".repeat(n), "{{end}}".repeat(n)),
        "nested deeper than 100",
    );
    fails(
        &format!(
            "{}x{}",
            "{{with 1}}{{range 1}}".repeat(n),
            "{{end}}".repeat(2 * n)
        ),
        "nested deeper than 100",
    );
    fails(
        &format!("{{{{ {}1{} }}}}", "(".repeat(n), ")".repeat(n)),
        "parentheses nested deeper than 100",
    );
    fails(
        "{{ range 1000000000 }}x{{ end }}",
        "evaluation steps | took longer than",
    );
    fails(
        "{{ range loop 100000 }}{{ range loop 100000 }}{{ end }}{{ end }}",
        "evaluation steps | took longer than",
    );
    fails("{{ loop -1 9223372036854775807 }}", "longer than 100000");
    fails(
        "{{ loop -9223372036854775808 9223372036854775807 }}",
        "longer than",
    );
    fails(
        r#"{{ printf "%9999999999d" 1 }}"#,
        "printf width is larger than 4096",
    );
    fails(
        r#"{{ printf "%.70000f" 1.5 }}"#,
        "printf precision is larger than 4096",
    );
    fails(
        r#"{{ $x := "ab" }}{{ range 100 }}{{ $x = printf "%s%s" $x $x }}{{ end }}"#,
        "larger than",
    );
    fails(
        r#"{{ range 100 }}{{ printf "%4096d" 1 }}{{ end }}{{ range 10000 }}{{ printf "%4096d" 1 }}{{ end }}"#,
        "rendered output is larger than | took longer than",
    );
    fails(
        r#"{{ $big := printf "%4096d%4096d" 1 2 }}{{ replaceAll " " $big $big }}"#,
        "larger than 16777216",
    );
    fails(
        r#"{{ $big := printf "%4096d%4096d" 1 2 }}{{ regexReplaceAll "." $big $big }}"#,
        "larger than 16777216",
    );
    fails(
        r#"{{ $big := printf "%4096d%4096d" 1 2 }}{{ regexReplaceAll "." "$0$0$0$0$0$0$0$0$0$0$0$0$0" ($big | replaceAll " " $big) }}"#,
        "larger than 16777216",
    );
    fails("{{ nosuch 1 }}", "function \"nosuch\" not defined");
    // Go pads every element of a list to the width: 100000 × 4096 bytes
    // must stop at the size bound, not be built first.
    fails(
        r#"{{ printf "%4096v" (loop 100000) }}"#,
        "larger than 16777216",
    );
    fails(
        r#"{{ $b := printf "%2100d" 1 }}{{ $c := replaceAll " " "<" (replaceAll " " $b $b) }}{{ html $c }}"#,
        "larger than 16777216",
    );
    fails(
        r#"{{ define "R" }}{{ range 2 }}{{ template "R" }}{{ end }}{{ end }}{{ template "R" }}"#,
        "template calls nested deeper than 100",
    );
    fails(
        r#"{{ $b := printf "%4096d%4096d" 1 2 }}{{ split "" (replaceAll " " (printf "%200d" 0) $b) }}"#,
        "more than 1000000",
    );
}

#[test]
fn loop_counts_both_ways_at_the_edges() {
    assert_eq!(r("{{ loop 3 }}", &[]), "[0 1 2]");
    assert_eq!(r("{{ loop 3 0 }}", &[]), "[3 2 1]");
    assert_eq!(
        r("{{ loop 9223372036854775806 9223372036854775807 }}", &[]),
        "[9223372036854775806]"
    );
    assert_eq!(
        r("{{ loop -9223372036854775807 -9223372036854775808 }}", &[]),
        "[-9223372036854775807]"
    );
    assert_eq!(
        r(r#"{{ printf "%05d|%-3s|%.2f" 42 "a" 1.5 }}"#, &[]),
        "00042|a  |1.50"
    );
}

#[test]
fn limits_can_be_tightened() {
    let tight = Limits {
        max_depth: 2,
        max_output: 10,
        max_steps: 50,
        max_time: std::time::Duration::from_secs(5),
    };
    let deep = "{{if 1}}{{if 1}}{{if 1}}x{{end}}{{end}}{{end}}";
    assert!(Template::parse(deep).is_ok());
    let e = Template::parse_with(deep, &tight).expect_err("depth 3 of 2");
    assert_eq!((e.line, e.column), (1, 17), "{e}");
    let funcs = Funcs::builtin();
    let t = Template::parse("{{ range 100 }}{{ end }}").expect("parse");
    let e = t
        .render_with(&Value::Nil, &funcs, &tight)
        .expect_err("steps");
    assert!(e.message.contains("more than 50"), "{e}");
    let t = Template::parse("{{ range 20 }}x{{ end }}").expect("parse");
    let e = t
        .render_with(&Value::Nil, &funcs, &tight)
        .expect_err("size");
    assert!(e.message.contains("larger than 10"), "{e}");
    let slow = Limits {
        max_time: std::time::Duration::ZERO,
        ..Limits::default()
    };
    let t = Template::parse("{{ range 1000 }}x{{ end }}").expect("parse");
    let e = t.render_with(&Value::Nil, &funcs, &slow).expect_err("time");
    assert!(e.message.contains("took longer than"), "{e}");
}

#[test]
fn unknown_functions_are_found_before_rendering() {
    let t = Template::parse("a\n{{ if eq 1 1 }}{{ (printf \"%d\" (nosuch 2)) }}{{ end }}")
        .expect("parse");
    let e = t
        .check_functions(Funcs::builtin().names())
        .expect_err("nosuch");
    assert_eq!((e.line, e.column), (2, 33), "{e}");
    assert!(e.message.contains("\"nosuch\""), "{e}");
    assert!(
        t.check_functions(Funcs::builtin().names().chain(["nosuch"]))
            .is_ok()
    );
    let t = Template::parse("{{ .X | env }}{{ with $v := env \"A\" }}{{ $v }}{{ end }}")
        .expect("parse");
    assert!(t.check_functions(Funcs::builtin().names()).is_err());
    assert!(
        t.check_functions(Funcs::with_env(BTreeMap::new()).names())
            .is_ok()
    );
}

#[test]
fn time_in_caller_functions_is_not_the_templates() {
    let mut funcs = Funcs::builtin();
    // A catalog read that is slow but answers: not the template's fault.
    funcs.insert("slow", |_| {
        std::thread::sleep(std::time::Duration::from_millis(30));
        Ok(Value::Int(1))
    });
    let limits = Limits {
        max_time: std::time::Duration::from_millis(20),
        ..Limits::default()
    };
    let t = Template::parse("{{ range 40 }}{{ slow }}{{ end }}").expect("parse");
    assert_eq!(
        t.render_with(&Value::Nil, &funcs, &limits)
            .expect("render")
            .len(),
        40
    );
    let t = Template::parse("{{ range 100000000 }}{{ end }}").expect("parse");
    let e = t
        .render_with(&Value::Nil, &funcs, &limits)
        .expect_err("own time counts");
    assert!(e.message.contains("took longer than"), "{e}");
}

/// Renders `src` with the built-ins on a thread with a small stack, so a
/// recursion the limits fail to bound shows as a crash here rather than in
/// PID 1's deeper stack.
fn render_small_stack(src: &str, limits: Limits) -> Result<String, Error> {
    let src = src.to_string();
    std::thread::Builder::new()
        .stack_size(2 * 1024 * 1024)
        .spawn(move || {
            let t = Template::parse_with(&src, &limits)?;
            t.render_with(&Value::Nil, &Funcs::builtin(), &limits)
        })
        .expect("spawn")
        .join()
        .expect("render thread must not crash")
}

#[test]
fn recursive_templates_end_with_an_error() {
    let deep_ifs = format!(
        "{}{{{{template \"R\" .}}}}{}",
        "{{if 1}}".repeat(90),
        "{{end}}".repeat(90)
    );
    let parens = format!("{}1{}", "(".repeat(100), ")".repeat(100));
    for src in [
        // Itself, directly, through a block, through another, in a range,
        // and under 90 levels of `if` with 100 parentheses in each call.
        r#"{{define "R"}}{{template "R" .}}{{end}}{{template "R"}}"#.to_string(),
        r#"{{block "R" .}}x{{template "R" .}}{{end}}"#.to_string(),
        r#"{{define "A"}}{{template "B"}}{{end}}{{define "B"}}{{template "A"}}{{end}}{{template "A"}}"#.to_string(),
        r#"{{define "R"}}{{range 3}}{{template "R" .}}{{end}}{{end}}{{template "R"}}"#.to_string(),
        format!(
            "{{{{define \"R\"}}}}{deep_ifs}{{{{end}}}}{{{{template \"R\" {parens}}}}}"
        ),
    ] {
        let e = render_small_stack(&src, Limits::default()).expect_err(&src);
        assert!(e.message.contains("nested deeper than 100"), "{src}: {e}");
    }
    // What parsing accepts, rendering does not refuse: a chain of 99 `else
    // if`s and 100 nested blocks are within the same bound.
    for src in [
        format!(
            "{{{{if 0}}}}{}{{{{else}}}}x{{{{end}}}}",
            "{{else if 0}}".repeat(99)
        ),
        format!("{}x{}", "{{if 1}}".repeat(100), "{{end}}".repeat(100)),
        format!(
            "{}x{}",
            "{{with 1}}{{range 1}}".repeat(50),
            "{{end}}".repeat(100)
        ),
    ] {
        assert_eq!(
            render_small_stack(&src, Limits::default()).expect(&src),
            "x"
        );
    }
    // The bound is the caller's: three calls deep fits a depth of 4, not 2.
    let three = r#"{{define "A"}}a{{template "B"}}{{end}}{{define "B"}}b{{template "C"}}{{end}}{{define "C"}}c{{end}}{{template "A"}}"#;
    let limits = |max_depth| Limits {
        max_depth,
        ..Limits::default()
    };
    assert_eq!(
        render_small_stack(three, limits(4)).expect("depth 3"),
        "abc"
    );
    let e = render_small_stack(three, limits(2)).expect_err("depth 3 of 2");
    assert!(
        e.message.contains("template calls nested deeper than 2"),
        "{e}"
    );
    // A finite recursion renders: a tree walked by one template.
    let tree = Value::from_json(&serde_json::json!({
        "Name": "r", "Kids": [{"Name": "a", "Kids": [{"Name": "b", "Kids": []}]}]
    }));
    let t = Template::parse(
        r#"{{define "W"}}{{.Name}}[{{range .Kids}}{{template "W" .}}{{end}}]{{end}}{{template "W" .}}"#,
    )
    .expect("parse");
    assert_eq!(
        t.render(&tree, &Funcs::builtin()).expect("render"),
        "r[a[b[]]]"
    );
}

#[test]
fn defined_templates_are_checked_for_functions() {
    let t =
        Template::parse("{{define \"T\"}}\n{{ nosuch }}{{end}}{{template \"T\"}}").expect("parse");
    let e = t
        .check_functions(Funcs::builtin().names())
        .expect_err("nosuch inside a define");
    assert_eq!((e.line, e.column), (2, 4), "{e}");
}

#[test]
fn and_or_stop_at_the_deciding_operand() {
    // A caller's function that counts its calls shows what ran.
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut funcs = Funcs::builtin();
    let seen = calls.clone();
    funcs.insert("tick", move |_| {
        seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(Value::Bool(true))
    });
    let t = Template::parse("{{ or 1 tick }}{{ and 0 tick }}{{ and 1 tick }}").expect("parse");
    assert_eq!(t.render(&Value::Nil, &funcs).expect("render"), "10true");
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1);
}
