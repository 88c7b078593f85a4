//! Which runs are skipped, and why: those in formats Rill does not have yet (PROTOBUF,
//! PROTOBUF_NOSR; AVRO and JSON_SR runs go, with the schemas a case registers for its topics) and
//! those that call the functions ksqlDB registers only in its own tests.

use super::load::{format_name, PostNode, Run, TopicNode};

/// Schema-registry formats Rill does not have yet.
const REGISTRY_FORMATS: [&str; 2] = ["PROTOBUF", "PROTOBUF_NOSR"];

/// Functions from ksqlDB's test sources (`ksqldb-engine/src/test/.../function/udf|udaf` and the
/// `udf-example` jar), not part of ksqlDB itself.
const TEST_ONLY_FUNCTIONS: [&str; 18] = [
    "TEST_UDF",
    "TEST_UDAF",
    "TEST_UDTF",
    "THROWING_UDTF",
    "BAD_UDF",
    "BAD_TEST_UDF",
    "BAD_TEST_UDAF",
    "BAD_TEST_UDTF",
    "WHENCONDITION",
    "WHENRESULT",
    "TOSTRUCT",
    "MULTI_ARG",
    "FOUR_ARG",
    "FIVE_ARG",
    "VAR_ARG",
    "MID_VAR_ARG",
    "GENERIC_VAR_ARG",
    "OBJ_COL_ARG",
];

fn registry_format(name: &str) -> Option<&'static str> {
    let upper = name.trim().to_uppercase();
    REGISTRY_FORMATS.iter().find(|f| **f == upper).copied()
}

fn needs_registry(f: &str) -> String {
    format!("format {f} needs a schema registry")
}

/// Why `run` is skipped, or `None` to run it.
pub fn reason(run: &Run) -> Option<String> {
    let case = &run.case;
    reason_for(run.format.as_deref(), &run.statements, run.properties.values(), &case.topics, case.post.as_ref())
}

/// Why a run with these parts is skipped, or `None` to run it.
pub fn reason_for<'a>(
    format: Option<&str>,
    statements: &[String],
    mut properties: impl Iterator<Item = &'a String>,
    topics: &[TopicNode],
    post: Option<&PostNode>,
) -> Option<String> {
    if let Some(f) = format.and_then(registry_format) {
        return Some(needs_registry(f));
    }
    for sql in statements {
        if let Some(f) = string_literals(sql).iter().find_map(|l| registry_format(l)) {
            return Some(needs_registry(f));
        }
    }
    if let Some(f) = properties.find_map(|v| registry_format(v)) {
        return Some(needs_registry(f));
    }
    for t in topics {
        let formats = [&t.format, &t.key_format, &t.value_format];
        if let Some(f) =
            formats.iter().filter_map(|v| v.as_ref().and_then(format_name)).find_map(|n| registry_format(&n))
        {
            return Some(needs_registry(f));
        }
        if t.uses_schema_registry() {
            let avro =
                formats.iter().filter_map(|v| v.as_ref().and_then(format_name)).all(|n| n.eq_ignore_ascii_case("AVRO"));
            if !avro || t.value_schema_id.is_some() || t.key_schema_id.is_some() {
                return Some(format!("topic {} has registered schemas of another format, or by id", t.name));
            }
        }
    }
    if let Some(post) = post {
        let formats = post
            .sources
            .iter()
            .flat_map(|s| [&s.key_format, &s.value_format])
            .chain(post.topics.iter().flat_map(|t| t.topics.iter().flat_map(|t| [&t.key_format, &t.value_format])));
        if let Some(f) = formats.filter_map(|v| v.as_ref().and_then(format_name)).find_map(|n| registry_format(&n)) {
            return Some(needs_registry(f));
        }
    }
    for sql in statements {
        if let Some(f) = function_calls(sql).into_iter().find(|f| TEST_ONLY_FUNCTIONS.contains(&f.as_str())) {
            return Some(format!("calls {f}, a function of ksqlDB's tests"));
        }
    }
    None
}

/// The contents of the `'...'` literals in `sql` (`''` is a quote).
fn string_literals(sql: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\'' {
            continue;
        }
        let mut lit = String::new();
        while let Some(ch) = chars.next() {
            if ch == '\'' {
                if chars.peek() == Some(&'\'') {
                    chars.next();
                    lit.push('\'');
                } else {
                    break;
                }
            } else {
                lit.push(ch);
            }
        }
        out.push(lit);
    }
    out
}

/// Upper-cased names directly followed by `(`, outside string literals and quoted names.
fn function_calls(sql: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    let mut quote: Option<char> = None;
    let mut last_word: Option<String> = None;
    for c in sql.chars() {
        if let Some(q) = quote {
            if c == q {
                quote = None;
            }
            continue;
        }
        if c.is_alphanumeric() || c == '_' {
            word.push(c);
            continue;
        }
        if !word.is_empty() {
            last_word = Some(std::mem::take(&mut word).to_uppercase());
        }
        match c {
            '\'' | '`' | '"' => {
                quote = Some(c);
                last_word = None;
            }
            '(' => {
                if let Some(w) = last_word.take() {
                    out.push(w);
                }
            }
            c if c.is_whitespace() => {}
            _ => last_word = None,
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::qtt::load;

    fn runs(json: &str) -> Vec<Run> {
        load::expand("f", serde_json::from_str(json).unwrap()).unwrap()
    }

    #[test]
    fn finds_literals_and_calls() {
        assert_eq!(string_literals("a 'b''c' d 'e'"), ["b'c", "e"]);
        let calls = function_calls("SELECT test_udf (a, 'x(y') AS `q(`, CAST(b AS INT) FROM s WHERE c IN (1);");
        assert_eq!(calls, ["TEST_UDF", "CAST", "IN"]);
    }

    #[test]
    fn skips_registry_formats_and_test_functions() {
        let r = runs(
            r#"{"name": "n", "format": ["AVRO", "JSON"], "statements": ["CREATE STREAM S (A INT) WITH (kafka_topic='t', value_format='{FORMAT}');"]}"#,
        );
        assert_eq!(reason(&r[0]), None);
        assert_eq!(reason(&r[1]), None);
        let r = runs(
            r#"{"name": "n", "format": ["PROTOBUF"], "statements": ["CREATE STREAM S (A INT) WITH (kafka_topic='t', value_format='{FORMAT}');"]}"#,
        );
        assert_eq!(reason(&r[0]).unwrap(), "format PROTOBUF needs a schema registry");
        let r = runs(
            r#"{"name": "n", "statements": ["CREATE STREAM S WITH (kafka_topic='t', value_format='Protobuf_Nosr');"]}"#,
        );
        assert!(reason(&r[0]).is_some());
        let r = runs(r#"{"name": "n", "statements": ["CREATE STREAM O AS SELECT Test_Udf(A) FROM S;"]}"#);
        assert_eq!(reason(&r[0]).unwrap(), "calls TEST_UDF, a function of ksqlDB's tests");
        let r = runs(
            r#"{"name": "n", "statements": [], "topics": [{"name": "t", "valueSchema": {"type": "int"}, "valueFormat": "JSON"}]}"#,
        );
        assert!(reason(&r[0]).unwrap().contains("registered schemas"));
        let r = runs(r#"{"name": "n", "statements": [], "topics": [{"name": "t", "valueSchema": {"type": "int"}}]}"#);
        assert_eq!(reason(&r[0]), None);
    }
}
