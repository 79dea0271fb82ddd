// The case table of `go_semantics.rs`: (template, data as JSON, Ok(output)
// or Err(a substring of the error)). Each group states the Go
// text/template rule it follows; the expected outputs are what Go's
// text/template prints for the same template and JSON-decoded data. Kept
// free of crate types so other engines can be measured against it.
//
// One deliberate difference: a missing value printed at the top level
// renders as "" where Go prints "<no value>" (an unset environment variable
// must render empty), so no case prints one.

/// The data every case sees.
pub const DATA: &str = r#"{
  "A": "x", "N": 3, "F": 1.5, "T": true, "E": "", "Z": 0,
  "L": [1, 2, 3], "S": ["a", "b", "c"],
  "M": {"k": "v", "n": {"deep": [10, 20]}},
  "U": 18446744073709551615,
  "Tree": {"Name": "root", "Kids": [
    {"Name": "a", "Kids": [{"Name": "a1", "Kids": []}]},
    {"Name": "b", "Kids": []}
  ]}
}"#;

pub const CASES: &[(&str, Result<&str, &str>)] = &[
    // define/template/block: `define` names a template at the top level only
    // and prints nothing; `template "n" p` runs it with dot and `$` set to
    // p's value (nil without p) and none of the caller's variables; `block`
    // is define plus template; a name has one non-empty body; an undefined
    // name fails when executed.
    (r#"{{define "T"}}hi {{.}}{{end}}{{template "T" "bob"}}"#, Ok("hi bob")),
    (r#"a{{define "T"}}X{{end}}b"#, Ok("ab")),
    (r#"{{template "T"}}{{define "T"}}[{{if .}}y{{else}}n{{end}}]{{end}}"#, Ok("[n]")),
    (r#"{{define "T"}}{{$}}{{end}}{{template "T" .A}}"#, Ok("x")),
    (r#"{{$x := 1}}{{define "T"}}{{$x}}{{end}}"#, Err("undefined variable")),
    (r#"{{block "B" .A}}<{{.}}>{{end}}"#, Ok("<x>")),
    (r#"{{define "B"}}new{{end}}{{block "B" .}}old{{end}}"#, Err("multiple definition of template")),
    (r#"{{define "T"}}   {{end}}{{define "T"}}x{{end}}{{template "T"}}"#, Ok("x")),
    (r#"{{template "nope"}}"#, Err(r#"template "nope" not defined"#)),
    (r#"{{define "W"}}{{.Name}}({{range .Kids}}{{template "W" .}}{{end}}){{end}}{{template "W" .Tree}}"#, Ok("root(a(a1())b())")),
    (r#"{{define "R"}}x{{template "R" .}}{{end}}{{template "R" .}}"#, Err("nested deeper than")),
    (r#"{{block "R" .}}{{template "R" .}}{{end}}"#, Err("nested deeper than")),
    (r#"{{if 1}}{{define "T"}}{{end}}{{end}}"#, Err("unexpected")),
    (r#"{{template .A}}"#, Err("clause")),
    (r#"{{define "T"}}{{.}}{{end}}{{template "T" 1 | printf "%03d"}}"#, Ok("001")),
    // break/continue (Go 1.18): they act on the innermost range and are a
    // parse error outside one (a template body is outside any range).
    (r#"{{range .L}}{{if eq . 2}}{{break}}{{end}}{{.}}{{end}}"#, Ok("1")),
    (r#"{{range .L}}{{if eq . 2}}{{continue}}{{end}}{{.}}{{end}}"#, Ok("13")),
    (r#"{{range $i, $e := .S}}{{range $.L}}{{if eq . 2}}{{break}}{{end}}{{$e}}{{end}}{{end}}"#, Ok("abc")),
    (r#"{{range .L}}{{with .}}{{continue}}{{end}}x{{end}}"#, Ok("")),
    (r#"{{break}}"#, Err("{{break}} outside {{range}}")),
    (r#"{{range .L}}{{define "T"}}{{continue}}{{end}}{{end}}"#, Err("unexpected")),
    (r#"{{define "T"}}{{continue}}{{end}}"#, Err("outside {{range}}")),
    // and/or (Go 1.18): evaluate operands left to right, stop at the first
    // that decides, and return that operand (or the last); a piped value is
    // the last operand.
    (r#"{{and 1 0 "x"}}"#, Ok("0")),
    (r#"{{and 1 "x"}}"#, Ok("x")),
    (r#"{{or 0 "" "y" "z"}}"#, Ok("y")),
    (r#"{{or 0 ""}}"#, Ok("")),
    (r#"{{or .A (index .L 99)}}"#, Ok("x")),
    (r#"{{and .Z (index .L 99)}}"#, Ok("0")),
    (r#"{{and .A (index .L 99)}}"#, Err("out of range")),
    (r#"{{and}}"#, Err("wrong number of args for and")),
    (r#"{{if and .T (not .E)}}y{{end}}"#, Ok("y")),
    (r#"{{0 | or "p"}}"#, Ok("p")),
    (r#"{{"" | and 1}}"#, Ok("")),
    // Comparisons: eq/ne on basic kinds of the same kind (int with uint is
    // by value); eq with several operands is true if any equals the first;
    // lt/le/gt/ge on ints, floats and strings only; mixing kinds is an error.
    (r#"{{eq 1 "1"}}"#, Err("incompatible types for comparison")),
    (r#"{{eq .N 1 2 3}}"#, Ok("true")),
    (r#"{{eq .N 1 2}}"#, Ok("false")),
    (r#"{{eq "x" .A}} {{ne 1 2}}"#, Ok("true true")),
    (r#"{{lt 1 2}} {{lt 1.5 2.5}} {{lt "a" "b"}} {{le 2 2}} {{ge 1 2}}"#, Ok("true true true true false")),
    (r#"{{gt 1 1.5}}"#, Err("incompatible types for comparison")),
    (r#"{{lt true false}}"#, Err("invalid type for comparison")),
    (r#"{{lt -1 .U}} {{gt .U 5}} {{eq .U .U}}"#, Ok("true true true")),
    (r#"{{eq .L .L}}"#, Err("non-comparable")),
    (r#"{{eq 1}}"#, Err("missing argument for comparison")),
    // slice: `slice x i j k` is x[i:j:k]; strings slice by bytes and take at
    // most two indexes; indexes must be in range and ordered.
    (r#"{{slice "abcdef" 1 3}}"#, Ok("bc")),
    (r#"{{slice .L 1}}"#, Ok("[2 3]")),
    (r#"{{slice .L}}"#, Ok("[1 2 3]")),
    (r#"{{slice .S 0 2 3}}"#, Ok("[a b]")),
    (r#"{{slice "abc" 0 1 2}}"#, Err("cannot 3-index slice a string")),
    (r#"{{slice .L 2 1}}"#, Err("invalid slice index: 2 > 1")),
    (r#"{{slice .L 0 9}}"#, Err("index out of range: 9")),
    // html, js, urlquery: Go's HTMLEscapeString, JSEscapeString and
    // url.QueryEscape of one string, or of the operands printed as by print.
    (r#"{{html "<a href=\"x\">'&'</a>"}}"#, Ok("&lt;a href=&#34;x&#34;&gt;&#39;&amp;&#39;&lt;/a&gt;")),
    (r#"{{js "it's \"q\" <b> & a=b\\"}}"#, Ok(r#"it\'s \"q\" \u003Cb\u003E \u0026 a\u003Db\\"#)),
    (r#"{{js "\n"}}"#, Ok(r#"\u000A"#)),
    (r#"{{urlquery "a b&c=d/é~"}}"#, Ok("a+b%26c%3Dd%2F%C3%A9~")),
    (r#"{{html 1 2}} {{"<x>" | html}}"#, Ok("1 2 &lt;x&gt;")),
    // printf: Go's fmt verbs, flags, `*` widths, and its in-band errors.
    (r#"{{printf "%e" 1234.5678}}"#, Ok("1.234568e+03")),
    (r#"{{printf "%E" 0.000123}}"#, Ok("1.230000E-04")),
    (r#"{{printf "%g|%g|%g" 1234.5678 0.00001 1e21}}"#, Ok("1234.5678|1e-05|1e+21")),
    (r#"{{printf "%.3g|%.3g|%.1g" 3.14159 1.0 123456.0}}"#, Ok("3.14|1|1e+05")),
    (r#"{{printf "%o %O %b %#b" 8 8 5 5}}"#, Ok("10 0o10 101 0b101")),
    (r#"{{printf "%c%c" 72 'i'}}"#, Ok("Hi")),
    (r#"{{printf "%T %T %T %T %T %T" 1 1.5 "s" true .L .M}}"#, Ok("int float64 string bool []interface {} map[string]interface {}")),
    (r#"{{printf "%+d %+d % d" 5 -5 5}}"#, Ok("+5 -5  5")),
    (r#"{{printf "%*d|%-*d|" 5 42 4 7}}"#, Ok("   42|7   |")),
    (r#"{{printf "%x %X %x %x" -255 255 "hi" 0}}"#, Ok("-ff FF 6869 0")),
    (r#"{{printf "%#x %#o %#X" 255 8 -255}}"#, Ok("0xff 010 -0XFF")),
    (r#"{{printf "%q" "a\"b\n"}}"#, Ok(r#""a\"b\n""#)),
    (r#"{{printf "%q %q" 'x' "\x01é"}}"#, Ok(r#"'x' "\x01é""#)),
    (r#"{{printf "%v|%v" .M .L}}"#, Ok("map[k:v n:map[deep:[10 20]]]|[1 2 3]")),
    (r#"{{printf "%d|%d %d" "x" 1}}"#, Ok("%!d(string=x)|1 %!d(MISSING)")),
    (r#"{{printf "%d" 1 2 "a"}}"#, Ok("1%!(EXTRA int=2, string=a)")),
    (r#"{{printf "%05.1f|%8.3f|%-8.2f|" 3.14159 2.5 1.0}}"#, Ok("003.1|   2.500|1.00    |")),
    (r#"{{printf "%6.2e|%08.3f" 12345.678 -3.14159}}"#, Ok("1.23e+04|-003.142")),
    (r#"{{printf "%s|%5s|%-5s|%.2s" .S "ab" "cd" "xyz"}}"#, Ok("[a b c]|   ab|cd   |xy")),
    (r#"{{printf "%t %v %v" true nil 1}}"#, Ok("true <nil> 1")),
    (r#"{{printf "%U %#U" 0x1F600 65}}"#, Ok("U+1F600 U+0041 'A'")),
    (r#"{{printf "%6d|%-6d|%06d|%.3d" 12 12 -12 7}}"#, Ok("    12|12    |-00012|007")),
    (r#"{{printf "%3c|%6t|%f" 65 false 1}}"#, Ok("  A| false|%!f(int=1)")),
    (r#"{{printf "%5.1f%%" 99.44}}"#, Ok(" 99.4%")),
    (r#"{{printf "%[2]s %[1]s" "a" "b"}}"#, Ok("b a")),
    (r#"{{printf "%[1]d %[1]x %d" 255}}"#, Ok("255 ff %!d(MISSING)")),
    (r#"{{printf "%[3]d|%[1]*d" 3 5}}"#, Ok("%!d(BADINDEX)|  5")),
    // Printing floats: Go's %v is strconv's 'g' with the shortest digits
    // that read back, in exponent form when the exponent is below -4 or at
    // least 6 (so 1e+21 and 1e+06, but 100000).
    (r#"{{1.5}} {{.F}} {{-2.50}} {{print 3.0}}"#, Ok("1.5 1.5 -2.5 3")),
    (r#"{{1e21}} {{1e20}} {{1e6}}"#, Ok("1e+21 1e+20 1e+06")),
    (r#"{{100000.0}} {{123456.0}} {{1234567.0}}"#, Ok("100000 123456 1.234567e+06")),
    (r#"{{0.0001}} {{0.000001}} {{.5}}"#, Ok("0.0001 1e-06 0.5")),
    // Number literals: Go syntax: 0x/0o/0b prefixes, a leading 0 is octal,
    // `_` between digits, character constants are ints, a fraction or an
    // exponent makes a float; integers must fit an int.
    (r#"{{0o17}} {{0x1F}} {{0b101}} {{1_000}} {{017}} {{-0x10}}"#, Ok("15 31 5 1000 15 -16")),
    (r#"{{'a'}} {{'\n'}} {{'\x41'}} {{'é'}}"#, Ok("97 10 65 233")),
    (r#"{{1e3}} {{printf "%T %T %T" 1e3 'a' 0x10}}"#, Ok("1000 float64 int int")),
    (r#"{{1__0}}"#, Err("bad number syntax")),
    (r#"{{0x}}"#, Err("bad number syntax")),
    (r#"{{9223372036854775808}}"#, Err("overflows int")),
    (r#"{{-9223372036854775808}}"#, Ok("-9223372036854775808")),
    (r#"{{1e-2}} {{1E+2}}"#, Ok("0.01 100")),
    // with/else with: the body runs with dot set to a non-empty value;
    // `else with` (Go 1.23) tests the next pipeline; a declared variable is
    // scoped to the whole with.
    (r#"{{with .A}}<{{.}}>{{end}}"#, Ok("<x>")),
    (r#"{{with .E}}y{{else}}n{{end}}"#, Ok("n")),
    (r#"{{with .E}}a{{else with .A}}b{{.}}{{end}}"#, Ok("bx")),
    (r#"{{with $v := .N}}{{$v}}{{.}}{{end}}"#, Ok("33")),
    (r#"{{with .Missing}}a{{else with .Z}}b{{else}}c{{end}}"#, Ok("c")),
    // Only if/else-if and with/else-with chain; any other `else if` or
    // `else with` opens a block of its own, with its own end.
    (r#"{{if .E}}a{{else with .A}}{{.}}{{end}}|{{end}}"#, Ok("x|")),
    (r#"{{range .Missing}}{{else if .A}}y{{end}}{{end}}"#, Ok("y")),
    (r#"{{range .Missing}}{{else if .A}}y{{end}}"#, Err("unexpected EOF")),
    // range: lists in order, maps in key order, an int n (Go 1.22) as
    // 0..n-1 with one variable only; empty runs the else branch.
    (r#"{{range 3}}{{.}}{{end}}|{{range $i := 3}}{{$i}}{{end}}"#, Ok("012|012")),
    (r#"{{range $i, $e := 3}}{{end}}"#, Err("can't use 3 to iterate over more than one variable")),
    (r#"{{range 0}}x{{else}}none{{end}}|{{range -2}}x{{else}}e{{end}}"#, Ok("none|e")),
    (r#"{{range $k, $v := .M}}{{$k}}={{$v}};{{end}}"#, Ok("k=v;n=map[deep:[10 20]];")),
    (r#"{{range $i, $e := .S}}{{$i}}{{$e}}{{end}}"#, Ok("0a1b2c")),
    (r#"{{range "abc"}}{{end}}"#, Err("range can't iterate over")),
    // Variables: `$` is the data; `:=` declares for the rest of the block,
    // `=` assigns an existing one (also from inside a range); using an
    // undeclared one is a parse error.
    (r#"{{range .S}}{{$.A}}{{end}}"#, Ok("xxx")),
    (r#"{{$x := 1}}{{range .L}}{{$x = .}}{{end}}{{$x}}"#, Ok("3")),
    (r#"{{$x = 1}}"#, Err("undefined variable")),
    (r#"{{if 1}}{{$y := 2}}{{end}}{{$y}}"#, Err("undefined variable")),
    (r#"{{$x := "a"}}{{with $x := "b"}}{{$x}}{{end}}{{$x}}"#, Ok("ba")),
    (r#"{{if false}}{{$nope}}{{end}}"#, Err("undefined variable")),
    // Trimming and comments: `{{- ` and ` -}}` trim ASCII white space on
    // their side; a comment starts and ends at the delimiters.
    ("a  {{- 1 -}}  b", Ok("a1b")),
    ("a {{- /* c */ -}} b", Ok("ab")),
    ("{{/* multi\nline */}}x", Ok("x")),
    ("{{-3}}", Ok("-3")),
    ("a\n\t {{- \"b\"}}", Ok("ab")),
    ("{{ /* c */ }}", Err("in action")),
    // len, index, not, print, println, call: Go's built-ins.
    (r#"{{len .L}} {{len .A}} {{len .M}}"#, Ok("3 1 2")),
    (r#"{{len 3}}"#, Err("len of type int")),
    (r#"{{index .M "n" "deep" 1}} {{index "abc" 1}} {{index .L}}"#, Ok("20 98 [1 2 3]")),
    (r#"{{index .L 5}}"#, Err("out of range")),
    (r#"{{if index .M "none"}}y{{else}}n{{end}}"#, Ok("n")),
    (r#"{{index .L "a"}}"#, Err("cannot index slice/array with type string")),
    (r#"{{not 0}} {{not "x"}}"#, Ok("true false")),
    (r#"{{print 1 2 "a" "b" 3}}"#, Ok("1 2ab3")),
    (r#"{{println 1 "a"}}"#, Ok("1 a\n")),
    (r#"{{print .L .M}} {{print nil}}"#, Ok("[1 2 3] map[k:v n:map[deep:[10 20]]] <nil>")),
    (r#"{{call .A}}"#, Err("function values")),
    // Commands: nil is no command, a non-function takes no arguments, a
    // field needs a map.
    (r#"{{nil}}"#, Err("nil is not a command")),
    (r#"{{.A.B}}"#, Err("can't evaluate field B")),
    (r#"{{3 4}}"#, Err("can't give argument to non-function")),
    (r#"{{.M.n.deep}}"#, Ok("[10 20]")),
];
