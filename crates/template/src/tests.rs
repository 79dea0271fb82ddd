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
