//! Which runs are skipped, and why: those whose topics name registered schemas by id (or register
//! schemas of a format without a registry), and those that call the functions ksqlDB registers
//! only in its own tests. Every format runs.

use super::load::{format_name, Run, TopicNode};

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

/// Formats whose schemas live in the schema registry.
const REGISTRY_FORMATS: [&str; 3] = ["AVRO", "JSON_SR", "PROTOBUF"];

/// Why `run` is skipped, or `None` to run it.
pub fn reason(run: &Run) -> Option<String> {
    reason_for(&run.statements, &run.case.topics)
}

/// Why a run with these statements and topics is skipped, or `None` to run it.
pub fn reason_for(statements: &[String], topics: &[TopicNode]) -> Option<String> {
    for t in topics.iter().filter(|t| t.uses_schema_registry()) {
        if t.value_schema_id.is_some() || t.key_schema_id.is_some() {
            return Some(format!("topic {} names its registered schemas by id", t.name));
        }
        let formats = [&t.format, &t.key_format, &t.value_format];
        let other = formats
            .iter()
            .filter_map(|v| v.as_ref().and_then(format_name))
            .find(|n| !REGISTRY_FORMATS.iter().any(|f| n.eq_ignore_ascii_case(f)));
        if let Some(f) = other {
            return Some(format!("topic {} registers schemas for {f}, a format without a registry", t.name));
        }
    }
    for sql in statements {
        if let Some(f) = function_calls(sql).into_iter().find(|f| TEST_ONLY_FUNCTIONS.contains(&f.as_str())) {
            return Some(format!("calls {f}, a function of ksqlDB's tests"));
        }
    }
    None
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
    fn finds_calls() {
        let calls = function_calls("SELECT test_udf (a, 'x(y') AS `q(`, CAST(b AS INT) FROM s WHERE c IN (1);");
        assert_eq!(calls, ["TEST_UDF", "CAST", "IN"]);
    }

    #[test]
    fn every_format_runs_but_schema_ids_and_test_functions_skip() {
        let r = runs(
            r#"{"name": "n", "format": ["AVRO", "PROTOBUF"], "statements": ["CREATE STREAM S (A INT) WITH (kafka_topic='t', value_format='{FORMAT}');"]}"#,
        );
        assert_eq!(reason(&r[0]), None);
        assert_eq!(reason(&r[1]), None);
        let r = runs(r#"{"name": "n", "statements": ["CREATE STREAM O AS SELECT Test_Udf(A) FROM S;"]}"#);
        assert_eq!(reason(&r[0]).unwrap(), "calls TEST_UDF, a function of ksqlDB's tests");
        let r = runs(
            r#"{"name": "n", "statements": [], "topics": [{"name": "t", "valueSchema": {"type": "int"}, "valueFormat": "JSON"}]}"#,
        );
        assert!(reason(&r[0]).unwrap().contains("a format without a registry"));
        let r = runs(r#"{"name": "n", "statements": [], "topics": [{"name": "t", "valueSchemaId": 1}]}"#);
        assert!(reason(&r[0]).unwrap().contains("by id"));
        let r = runs(r#"{"name": "n", "statements": [], "topics": [{"name": "t", "valueSchema": {"type": "int"}}]}"#);
        assert_eq!(reason(&r[0]), None);
    }
}
