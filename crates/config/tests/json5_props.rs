//! Property tests of the JSON5 parser: it never panics, and reads back whatever serde_json prints.

use autopilot_config::json5::{Kind, Node, parse};
use proptest::prelude::*;
use serde_json::Value;

fn json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        (-(1i64 << 53)..(1i64 << 53)).prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        any::<String>().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            prop::collection::btree_map(any::<String>(), inner, 0..8)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Whether the parsed tree is the value serde_json printed.
fn same(node: &Node, v: &Value) -> bool {
    match (&node.kind, v) {
        (Kind::Null, Value::Null) => true,
        (Kind::Bool(a), Value::Bool(b)) => a == b,
        (Kind::Number(a), Value::Number(b)) => b.as_f64() == Some(*a),
        (Kind::Str(a), Value::String(b)) => a == b,
        (Kind::Array(a), Value::Array(b)) => {
            a.len() == b.len() && a.iter().zip(b).all(|(x, y)| same(x, y))
        }
        (Kind::Object(a), Value::Object(b)) => {
            a.len() == b.len()
                && a.iter()
                    .all(|(k, _, x)| b.get(k).is_some_and(|y| same(x, y)))
        }
        _ => false,
    }
}

/// Characters that steer a parser into its interesting corners.
const SYNTAX: &[char] = &[
    '{', '}', '[', ']', ':', ',', '\'', '"', '\\', '/', '*', '0', '1', '9', 'a', 'e', 'E', 'x',
    'u', 'n', '.', '+', '-', ' ', '\n', '\r', '\0', 'I', 'N', '\u{2028}', '\u{feff}', 'é',
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn reads_back_what_serde_json_prints(v in json()) {
        for text in [serde_json::to_string(&v).expect("print"), serde_json::to_string_pretty(&v).expect("print")] {
            let node = parse(&text).map_err(|e| TestCaseError::fail(format!("{text}: {e:?}")))?;
            prop_assert!(same(&node, &v), "{text} parsed as {node:?}");
        }
    }

    #[test]
    fn never_panics_on_arbitrary_text(s in any::<String>()) {
        let _ = parse(&s);
    }

    #[test]
    fn never_panics_on_syntax_soup(chars in prop::collection::vec(prop::sample::select(SYNTAX), 0..300)) {
        let s: String = chars.into_iter().collect();
        if let Err(e) = parse(&s) {
            prop_assert!(e.pos <= s.len(), "{s:?}: {e:?}");
        }
    }
}
