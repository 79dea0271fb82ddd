//! Go text/template semantics, case by case: the table in `go_semantics/cases.rs` rendered with the built-in functions.

use autopilot_template::{Funcs, Template, Value};

include!("go_semantics/cases.rs");

fn render(src: &str, data: &Value) -> Result<String, String> {
    let t = Template::parse(src).map_err(|e| e.to_string())?;
    t.render(data, &Funcs::builtin()).map_err(|e| e.to_string())
}

#[test]
fn go_text_template_cases() {
    let json: serde_json::Value = serde_json::from_str(DATA).expect("case data is JSON");
    let data = Value::from_json(&json);
    assert!(CASES.len() >= 80, "{} cases", CASES.len());
    let mut failures = Vec::new();
    for (src, want) in CASES {
        let got = render(src, &data);
        let ok = match (want, &got) {
            (Ok(w), Ok(g)) => w == g,
            (Err(w), Err(g)) => g.contains(w),
            _ => false,
        };
        if !ok {
            failures.push(format!("{src:?}\n   want {want:?}\n    got {got:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases differ from Go:\n{}",
        failures.len(),
        CASES.len(),
        failures.join("\n")
    );
}
