//! Post-conditions: the sources and topics a case must leave behind.
//!
//! Sources are compared by type, schema (ksqlDB's column list, normalized: unquoted names
//! upper-cased, `INTEGER`/`VARCHAR` spelled `INT`/`STRING`, `PRIMARY KEY` = `KEY`), key and value
//! format names, the `UNWRAP_SINGLES` value feature and `isSource`. Expected sources are a subset:
//! others may exist. Topics: the listed ones must exist with the listed format names; none may
//! match the blacklist. The key format's `windowType` is compared, and its `windowSize` when
//! the source's statement states it. Not compared: schema-registry schemas, partition counts
//! (upstream's stub gives every sink 4, whatever the statement says) and ksqlDB's internal
//! `_confluent...` topics (Rill has none).

use rill_sql::catalog::{Column, SourceDef};
use rill_sql::KsqlEngine;

use super::load::{format_name, PostNode, PostSource, PostTopics};

/// Checks `post` against the engine's catalog and topics.
pub async fn check(post: &PostNode, engine: &KsqlEngine) -> Result<(), String> {
    let sources = engine.sources().await;
    for expected in &post.sources {
        let actual = sources
            .iter()
            .find(|s| s.name == expected.name)
            .or_else(|| sources.iter().find(|s| s.name == expected.name.to_uppercase()))
            .ok_or_else(|| format!("post: source {} does not exist", expected.name))?;
        check_source(expected, actual).map_err(|e| format!("post: source {}: {e}", expected.name))?;
    }
    if let Some(topics) = &post.topics {
        check_topics(topics, engine, &sources)?;
    }
    Ok(())
}

fn check_source(expected: &PostSource, actual: &SourceDef) -> Result<(), String> {
    if let Some(kind) = &expected.kind {
        if !kind.eq_ignore_ascii_case(actual.kind.name()) {
            return Err(format!("expected a {}, got a {}", kind.to_lowercase(), actual.kind.name().to_lowercase()));
        }
    }
    if let Some(schema) = &expected.schema {
        let ours = render_columns(&actual.columns);
        let want = normalize_schema(schema).map_err(|e| format!("cannot read the expected schema `{schema}`: {e}"))?;
        let got = normalize_schema(&ours).map_err(|e| format!("cannot read Rill's schema `{ours}`: {e}"))?;
        if want != got {
            return Err(format!("schema: expected `{schema}`, got `{ours}`"));
        }
    }
    for (what, expected, actual) in [
        ("key format", &expected.key_format, actual.key_format.kind.name()),
        ("value format", &expected.value_format, actual.value_format.kind.name()),
    ] {
        if let Some(want) = expected.as_ref().and_then(format_name) {
            if want != actual {
                return Err(format!("{what}: expected {want}, got {actual}"));
            }
        }
    }
    let key_format = expected.key_format.as_ref();
    if let Some(want) = key_format.and_then(|f| f.get("windowType")).and_then(|w| w.as_str()) {
        let got = actual.window_type().unwrap_or("none");
        if !want.eq_ignore_ascii_case(got) {
            return Err(format!("key window type: expected {want}, got {got}"));
        }
    }
    if let Some(want) = key_format.and_then(|f| f.get("windowSize")).and_then(|w| w.as_i64()) {
        if let Some(got) = super::run::window_size(actual) {
            if want != got {
                return Err(format!("key window size: expected {want} ms, got {got} ms"));
            }
        }
    }
    if let Some(features) = &expected.value_features {
        let unwrap = features.iter().any(|f| f.eq_ignore_ascii_case("UNWRAP_SINGLES"));
        if unwrap == actual.value_format.wrap_single_value {
            return Err(format!(
                "value features: expected {features:?}, got wrap_single_value={}",
                actual.value_format.wrap_single_value
            ));
        }
    }
    if let Some(is_source) = expected.is_source {
        if is_source != actual.read_only {
            return Err(format!("isSource: expected {is_source}, got {}", actual.read_only));
        }
    }
    Ok(())
}

fn check_topics(topics: &PostTopics, engine: &KsqlEngine, sources: &[SourceDef]) -> Result<(), String> {
    let names = engine.store().topic_names();
    if let Some(pattern) = &topics.blacklist {
        if let Some(bad) = names.iter().find(|n| full_match(pattern, n)) {
            return Err(format!("post: topic {bad} matches the blacklist {pattern}"));
        }
    }
    for t in &topics.topics {
        if t.name.starts_with("_confluent") {
            continue;
        }
        if !names.contains(&t.name) {
            return Err(format!("post: topic {} does not exist", t.name));
        }
        let source = sources.iter().find(|s| s.topic == t.name);
        for (what, expected) in [("key", &t.key_format), ("value", &t.value_format)] {
            let Some(want) = expected.as_ref().and_then(format_name) else { continue };
            let got = source.map(|s| if what == "key" { s.key_format.kind.name() } else { s.value_format.kind.name() });
            if got != Some(want.as_str()) {
                return Err(format!(
                    "post: topic {} {what} format: expected {want}, got {}",
                    t.name,
                    got.unwrap_or("none")
                ));
            }
        }
    }
    Ok(())
}

/// Rill's columns in ksqlDB's notation.
pub fn render_columns(columns: &[Column]) -> String {
    columns
        .iter()
        .map(|c| format!("`{}` {}{}", c.name.replace('`', "``"), c.sql_type, if c.key { " KEY" } else { "" }))
        .collect::<Vec<_>>()
        .join(", ")
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Quoted(String),
    Word(String),
    Punct(char),
}

fn tokenize(s: &str) -> Result<Vec<Tok>, String> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_whitespace() {
            continue;
        }
        if c == '`' {
            let mut name = String::new();
            loop {
                match chars.next() {
                    Some('`') if chars.peek() == Some(&'`') => {
                        chars.next();
                        name.push('`');
                    }
                    Some('`') => break,
                    Some(ch) => name.push(ch),
                    None => return Err("unterminated `".into()),
                }
            }
            out.push(Tok::Quoted(name));
        } else if c.is_alphanumeric() || c == '_' {
            let mut word = c.to_string();
            while let Some(&n) = chars.peek() {
                if n.is_alphanumeric() || n == '_' {
                    word.push(n);
                    chars.next();
                } else {
                    break;
                }
            }
            out.push(Tok::Word(word.to_uppercase()));
        } else if c == '\'' {
            // HEADER('key'): keep the literal as is.
            let mut lit = String::from("'");
            for ch in chars.by_ref() {
                lit.push(ch);
                if ch == '\'' {
                    break;
                }
            }
            out.push(Tok::Quoted(lit));
        } else {
            out.push(Tok::Punct(c));
        }
    }
    Ok(out)
}

fn canonical(t: &Tok) -> String {
    match t {
        Tok::Quoted(s) => s.clone(),
        Tok::Word(w) => match w.as_str() {
            "INTEGER" => "INT".into(),
            "VARCHAR" => "STRING".into(),
            other => other.to_string(),
        },
        Tok::Punct(c) => c.to_string(),
    }
}

/// A column list as (name, type, key), normalized so that equal schemas compare equal.
pub fn normalize_schema(s: &str) -> Result<Vec<(String, String, bool)>, String> {
    let tokens = tokenize(s)?;
    let mut columns: Vec<Vec<Tok>> = vec![vec![]];
    let mut depth = 0i32;
    for t in tokens {
        match t {
            Tok::Punct('<') | Tok::Punct('(') => depth += 1,
            Tok::Punct('>') | Tok::Punct(')') => depth -= 1,
            Tok::Punct(',') if depth == 0 => {
                columns.push(vec![]);
                continue;
            }
            _ => {}
        }
        if let Some(last) = columns.last_mut() {
            last.push(t);
        }
    }
    if columns.len() == 1 && columns[0].is_empty() {
        return Ok(vec![]);
    }
    columns
        .into_iter()
        .map(|mut col| {
            if col.len() < 2 {
                return Err(format!("a column needs a name and a type: {col:?}"));
            }
            let name = match col.remove(0) {
                Tok::Quoted(q) => q,
                Tok::Word(w) => w,
                Tok::Punct(p) => return Err(format!("unexpected `{p}`")),
            };
            let mut key = false;
            if col.last() == Some(&Tok::Word("KEY".into())) {
                key = true;
                col.pop();
                if col.last() == Some(&Tok::Word("PRIMARY".into())) {
                    col.pop();
                }
            }
            let ty = col.iter().map(canonical).collect::<Vec<_>>().join(" ");
            Ok((name, ty, key))
        })
        .collect()
}

/// Whether `text` matches all of `pattern`, a regular expression limited to literals, `.`, `*`
/// and `\` escapes (what the test files use: `.*-repartition`).
pub fn full_match(pattern: &str, text: &str) -> bool {
    #[derive(Clone, Copy)]
    enum Atom {
        Any,
        Char(char),
    }
    let mut atoms: Vec<(Atom, bool)> = Vec::new();
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        let atom = match c {
            '.' => Atom::Any,
            '\\' => Atom::Char(chars.next().unwrap_or('\\')),
            '*' => {
                if let Some(last) = atoms.last_mut() {
                    last.1 = true;
                }
                continue;
            }
            other => Atom::Char(other),
        };
        atoms.push((atom, false));
    }
    fn go(atoms: &[(Atom, bool)], text: &[char]) -> bool {
        let Some(((atom, star), rest)) = atoms.split_first() else { return text.is_empty() };
        let fits = |c: &char| match atom {
            Atom::Any => true,
            Atom::Char(x) => x == c,
        };
        if *star {
            let mut i = 0;
            loop {
                if go(rest, &text[i..]) {
                    return true;
                }
                if i < text.len() && fits(&text[i]) {
                    i += 1;
                } else {
                    return false;
                }
            }
        }
        match text.split_first() {
            Some((c, tail)) if fits(c) => go(rest, tail),
            _ => false,
        }
    }
    let text: Vec<char> = text.chars().collect();
    go(&atoms, &text)
}

#[cfg(test)]
mod tests {
    use rill_sql::types::SqlType;

    use super::*;

    #[test]
    fn schemas_normalize() {
        let a = normalize_schema("ID STRING KEY, S STRUCT<F1 INTEGER>, `lower` VARCHAR").unwrap();
        let b = normalize_schema("`ID` STRING PRIMARY KEY, `S` STRUCT<`F1` INT>, `lower` STRING").unwrap();
        assert_eq!(a, b);
        assert_eq!(a[0], ("ID".to_string(), "STRING".to_string(), true));
        assert_ne!(a, normalize_schema("ID STRING KEY, S STRUCT<F1 INTEGER>, LOWER STRING").unwrap());
        assert_eq!(
            normalize_schema("D DECIMAL(6, 4), M MAP<STRING, ARRAY<INT>>").unwrap(),
            normalize_schema("`D` DECIMAL(6,4), `M` MAP<VARCHAR,ARRAY<INTEGER>>").unwrap()
        );
    }

    #[test]
    fn rill_columns_render_like_ksqldb() {
        let cols = vec![
            Column { name: "K".into(), sql_type: SqlType::String, key: true, header: None },
            Column {
                name: "S".into(),
                sql_type: SqlType::Struct(vec![("A".into(), SqlType::Int)]),
                key: false,
                header: None,
            },
        ];
        let ours = render_columns(&cols);
        assert_eq!(normalize_schema(&ours).unwrap(), normalize_schema("K STRING KEY, S STRUCT<A INT>").unwrap());
    }

    #[test]
    fn blacklist_patterns() {
        assert!(full_match(".*-repartition", "_confluent-ksql-x-Join-repartition"));
        assert!(!full_match(".*-repartition", "OUTPUT"));
        assert!(!full_match(".*-repartition", "a-repartition-changelog"));
        assert!(full_match("a\\.b", "a.b"));
        assert!(!full_match("a\\.b", "axb"));
    }
}
