//! Reading ksqlDB's query-validation test files: `//` comments, the case model, and the
//! expansion of one case into runs (one per `format` × `config` value), with upstream's names.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use serde::Deserialize;
use serde_json::Value;

/// Removes `//` comments (to the end of the line) outside JSON strings.
pub fn strip_comments(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    let mut in_string = false;
    while let Some(c) = chars.next() {
        if in_string {
            out.push(c);
            match c {
                '\\' => {
                    if let Some(escaped) = chars.next() {
                        out.push(escaped);
                    }
                }
                '"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => {
                in_string = true;
                out.push(c);
            }
            '/' if chars.peek() == Some(&'/') => {
                // Drop the comment, keep the newline so line numbers in parse errors stay right.
                for next in chars.by_ref() {
                    if next == '\n' {
                        out.push('\n');
                        break;
                    }
                }
            }
            _ => out.push(c),
        }
    }
    out
}

/// One test case as the file states it.
#[derive(Debug, Deserialize)]
pub struct CaseNode {
    /// Name, unique in its file.
    pub name: String,
    /// Statements, run in order (`{FORMAT}` substituted per run).
    #[serde(default)]
    pub statements: Vec<String>,
    /// Records written after the statements, one at a time, in order.
    #[serde(default)]
    pub inputs: Vec<RecordNode>,
    /// Records expected on the output topics.
    #[serde(default)]
    pub outputs: Vec<RecordNode>,
    /// One run per format.
    #[serde(default)]
    pub format: Vec<String>,
    /// One run per value of the property whose value is `{CONFIG}`.
    #[serde(default)]
    pub config: Vec<String>,
    /// Session properties.
    #[serde(default)]
    pub properties: serde_json::Map<String, Value>,
    /// Topics to create before the statements run.
    #[serde(default)]
    pub topics: Vec<TopicNode>,
    /// The statements must be refused with this.
    #[serde(default, rename = "expectedException")]
    pub expected_exception: Option<ExpectedException>,
    /// Checks on the catalog and topics after the run.
    #[serde(default)]
    pub post: Option<PostNode>,
    /// `false`: not a run at all.
    #[serde(default = "enabled_default")]
    pub enabled: bool,
}

fn enabled_default() -> bool {
    true
}

/// An input or expected output record.
#[derive(Debug, Clone, Deserialize)]
pub struct RecordNode {
    /// Topic.
    pub topic: String,
    /// Key (absent = null).
    #[serde(default)]
    pub key: Value,
    /// Value (null = tombstone).
    #[serde(default)]
    pub value: Value,
    /// Record timestamp; inputs default to 0, outputs compare it only when given.
    #[serde(default)]
    pub timestamp: Option<i64>,
    /// Window of a windowed key.
    #[serde(default)]
    pub window: Option<WindowNode>,
    /// Headers (`VALUE` in base64).
    #[serde(default)]
    pub headers: Option<Vec<HeaderNode>>,
}

/// The window of a windowed key.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct WindowNode {
    /// Start (ms).
    pub start: i64,
    /// End (ms).
    pub end: i64,
    /// `time` or `session`.
    #[serde(rename = "type")]
    pub kind: String,
}

/// A record header.
#[derive(Debug, Clone, Deserialize)]
pub struct HeaderNode {
    /// Key.
    #[serde(rename = "KEY")]
    pub key: String,
    /// Value, base64; null for a null value.
    #[serde(rename = "VALUE", default)]
    pub value: Option<String>,
}

/// A topic in the `topics` section.
#[derive(Debug, Deserialize)]
pub struct TopicNode {
    /// Name.
    pub name: String,
    /// Partitions (default 1, like upstream's `TopicNode`).
    #[serde(default)]
    pub partitions: Option<u32>,
    /// Legacy format field.
    #[serde(default)]
    pub format: Option<Value>,
    /// Key format.
    #[serde(default, rename = "keyFormat")]
    pub key_format: Option<Value>,
    /// Value format.
    #[serde(default, rename = "valueFormat")]
    pub value_format: Option<Value>,
    /// Registered schemas (schema registry).
    #[serde(default)]
    pub schema: Option<Value>,
    /// Registered value schema.
    #[serde(default, rename = "valueSchema")]
    pub value_schema: Option<Value>,
    /// Registered key schema.
    #[serde(default, rename = "keySchema")]
    pub key_schema: Option<Value>,
    /// Registered value schema id.
    #[serde(default, rename = "valueSchemaId")]
    pub value_schema_id: Option<Value>,
    /// Registered key schema id.
    #[serde(default, rename = "keySchemaId")]
    pub key_schema_id: Option<Value>,
    /// Schemas the value schema references (imports), registered first.
    #[serde(default, rename = "valueSchemaReferences")]
    pub value_schema_references: Vec<SchemaReference>,
    /// Schemas the key schema references.
    #[serde(default, rename = "keySchemaReferences")]
    pub key_schema_references: Vec<SchemaReference>,
}

/// A schema another one references, by the name it is imported as.
#[derive(Debug, Clone, Deserialize)]
pub struct SchemaReference {
    /// The import name (and its subject).
    pub name: String,
    /// The schema text.
    pub schema: String,
}

impl TopicNode {
    /// Whether the topic needs a schema registry.
    pub fn uses_schema_registry(&self) -> bool {
        [&self.schema, &self.value_schema, &self.key_schema, &self.value_schema_id, &self.key_schema_id]
            .iter()
            .any(|s| s.as_ref().is_some_and(|v| !v.is_null()))
    }
}

/// `expectedException`. Its `type`, a Java class name, is not compared; it tells a statement
/// refused from a query failing on a record (see [`ExpectedException::at_run_time`]).
#[derive(Debug, Default, Deserialize)]
pub struct ExpectedException {
    /// Text the error message must contain.
    #[serde(default)]
    pub message: Option<String>,
    /// The Java class of the error.
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    /// The message of the error's cause (a query failing on a record: what went wrong).
    #[serde(default, rename = "causeMessage")]
    pub cause_message: Option<String>,
}

impl ExpectedException {
    /// The error stops a running query on a record (Kafka Streams' `StreamsException`) rather
    /// than refusing a statement: what the record's dead letter must say, if so.
    pub fn at_run_time(&self) -> Option<&str> {
        self.kind.as_deref().filter(|k| k.ends_with(".StreamsException"))?;
        self.cause_message.as_deref().or(self.message.as_deref())
    }
}

/// `post`.
#[derive(Debug, Default, Deserialize)]
pub struct PostNode {
    /// Sources that must exist, with their schemas and formats.
    #[serde(default)]
    pub sources: Vec<PostSource>,
    /// Topics that must exist, and a pattern no topic may match.
    #[serde(default)]
    pub topics: Option<PostTopics>,
}

/// One expected source.
#[derive(Debug, Deserialize)]
pub struct PostSource {
    /// Name.
    pub name: String,
    /// `stream` or `table`.
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    /// Columns, as ksqlDB writes them: `K STRING KEY, V INT`.
    #[serde(default)]
    pub schema: Option<String>,
    /// `{"format": ...}`.
    #[serde(default, rename = "keyFormat")]
    pub key_format: Option<Value>,
    /// `{"format": ...}`.
    #[serde(default, rename = "valueFormat")]
    pub value_format: Option<Value>,
    /// Value serde features (`UNWRAP_SINGLES`, `WRAP_SINGLES`).
    #[serde(default, rename = "valueFeatures")]
    pub value_features: Option<Vec<String>>,
    /// Created with `CREATE SOURCE`.
    #[serde(default, rename = "isSource")]
    pub is_source: Option<bool>,
}

/// `post.topics`.
#[derive(Debug, Default, Deserialize)]
pub struct PostTopics {
    /// Topics that must exist.
    #[serde(default)]
    pub topics: Vec<PostTopic>,
    /// A pattern no topic may match.
    #[serde(default)]
    pub blacklist: Option<String>,
}

/// One expected topic.
#[derive(Debug, Deserialize)]
pub struct PostTopic {
    /// Name.
    pub name: String,
    /// `{"format": ...}`.
    #[serde(default, rename = "keyFormat")]
    pub key_format: Option<Value>,
    /// `{"format": ...}`.
    #[serde(default, rename = "valueFormat")]
    pub value_format: Option<Value>,
}

/// The format name in a `keyFormat`/`valueFormat` field: `"JSON"` or `{"format": "JSON", ...}`.
pub fn format_name(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.to_uppercase()),
        Value::Object(o) => o.get("format").and_then(Value::as_str).map(str::to_uppercase),
        _ => None,
    }
}

/// One run of a case: a format and a config value chosen, statements substituted.
#[derive(Debug, Clone)]
pub struct Run {
    /// `<file stem> - <name>[ - <format>][ - <property>=<config>]`.
    pub name: String,
    /// The file stem (the category).
    pub stem: String,
    /// The case.
    pub case: Arc<CaseNode>,
    /// Statements with `{FORMAT}` substituted.
    pub statements: Vec<String>,
    /// Properties with `{CONFIG}` substituted, as text.
    pub properties: BTreeMap<String, String>,
}

/// A case that could not be read: reported as a failed run.
#[derive(Debug, Clone)]
pub struct BadCase {
    /// The name, as far as it could be made.
    pub name: String,
    /// The file stem.
    pub stem: String,
    /// Why.
    pub error: String,
}

/// What loading yields: runs, and cases that could not be read.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Runs, in file order.
    pub runs: Vec<Run>,
    /// Cases that could not be read.
    pub bad: Vec<BadCase>,
}

/// The full run name, upstream's way.
pub fn run_name(stem: &str, case: &str, format: Option<&str>, config: Option<(&str, &str)>) -> String {
    let mut name = format!("{stem} - {case}");
    if let Some(f) = format {
        name.push_str(" - ");
        name.push_str(f);
    }
    if let Some((k, v)) = config {
        name.push_str(&format!(" - {k}={v}"));
    }
    name
}

fn property_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Expands a case into its runs (none when disabled).
pub fn expand(stem: &str, case: CaseNode) -> Result<Vec<Run>, String> {
    if !case.enabled {
        return Ok(vec![]);
    }
    let case = Arc::new(case);
    let formats: Vec<Option<String>> =
        if case.format.is_empty() { vec![None] } else { case.format.iter().cloned().map(Some).collect() };
    let config_key = if case.config.is_empty() {
        None
    } else {
        let keys: Vec<&String> = case
            .properties
            .iter()
            .filter(|(_, v)| v.as_str().is_some_and(|s| s.eq_ignore_ascii_case("{CONFIG}")))
            .map(|(k, _)| k)
            .collect();
        match keys.as_slice() {
            [k] => Some((*k).clone()),
            _ => return Err(format!("`config` needs exactly one property set to {{CONFIG}}, found {}", keys.len())),
        }
    };
    let configs: Vec<Option<String>> =
        if case.config.is_empty() { vec![None] } else { case.config.iter().cloned().map(Some).collect() };
    let mut runs = Vec::new();
    for format in &formats {
        for config in &configs {
            let mut properties: BTreeMap<String, String> =
                case.properties.iter().map(|(k, v)| (k.clone(), property_text(v))).collect();
            let cfg = match (&config_key, config) {
                (Some(k), Some(v)) => {
                    properties.insert(k.clone(), v.clone());
                    Some((k.as_str(), v.as_str()))
                }
                _ => None,
            };
            let statements = case
                .statements
                .iter()
                .map(|s| match format {
                    Some(f) => s.replace("{FORMAT}", f),
                    None => s.clone(),
                })
                .collect();
            runs.push(Run {
                name: run_name(stem, &case.name, format.as_deref(), cfg),
                stem: stem.to_string(),
                case: case.clone(),
                statements,
                properties,
            });
        }
    }
    Ok(runs)
}

/// Parses one test file's text into runs.
pub fn parse_file(stem: &str, text: &str) -> Result<Loaded, String> {
    let doc: Value = serde_json::from_str(&strip_comments(text)).map_err(|e| format!("not valid JSON: {e}"))?;
    let tests = doc.get("tests").and_then(Value::as_array).ok_or("no `tests` array")?;
    let mut loaded = Loaded::default();
    for (i, t) in tests.iter().enumerate() {
        let name = t.get("name").and_then(Value::as_str).map(str::to_string).unwrap_or_else(|| format!("#{i}"));
        // A disabled case is not a run, even if it would not parse.
        if t.get("enabled") == Some(&Value::Bool(false)) {
            continue;
        }
        let result = CaseNode::deserialize(t).map_err(|e| e.to_string()).and_then(|c| expand(stem, c));
        match result {
            Ok(runs) => loaded.runs.extend(runs),
            Err(error) => loaded.bad.push(BadCase {
                name: run_name(stem, &name, None, None),
                stem: stem.to_string(),
                error: format!("invalid test case: {error}"),
            }),
        }
    }
    Ok(loaded)
}

/// The `.json` files named by `paths`: files as given, folders' `.json` files (not recursive), sorted.
pub fn test_files(paths: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut in_dir: Vec<PathBuf> = std::fs::read_dir(p)
                .with_context(|| format!("reading {}", p.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| f.is_file() && f.extension().is_some_and(|x| x == "json"))
                .collect();
            in_dir.sort();
            files.extend(in_dir);
        } else if p.is_file() {
            files.push(p.clone());
        } else {
            anyhow::bail!("{}: no such file or folder", p.display());
        }
    }
    Ok(files)
}

/// The file stem: the category of its runs.
pub fn stem(path: &Path) -> String {
    path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default()
}

/// Loads every run from `paths`.
pub fn load(paths: &[PathBuf]) -> anyhow::Result<Loaded> {
    let mut all = Loaded::default();
    for file in test_files(paths)? {
        let stem = stem(&file);
        let text = std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
        match parse_file(&stem, &text) {
            Ok(l) => {
                all.runs.extend(l.runs);
                all.bad.extend(l.bad);
            }
            Err(error) => {
                all.bad.push(BadCase { name: stem.clone(), stem, error: format!("invalid test file: {error}") })
            }
        }
    }
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_comments_but_not_inside_strings() {
        let text = "{\n  // a comment\n  \"url\": \"http://x//y\", // trailing\n  \"q\": \"a \\\" // b\"\n}";
        let v: Value = serde_json::from_str(&strip_comments(text)).unwrap();
        assert_eq!(v["url"], "http://x//y");
        assert_eq!(v["q"], "a \" // b");
    }

    #[test]
    fn keeps_line_numbers() {
        let text = "// one\n// two\n{}";
        assert_eq!(strip_comments(text), "\n\n{}");
    }

    fn case(json: &str) -> CaseNode {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn expands_formats_and_configs_with_upstream_names() {
        let c = case(
            r#"{"name": "n", "format": ["JSON", "AVRO"], "config": ["true", "false"],
                "properties": {"p.q": "{CONFIG}", "other": 5},
                "statements": ["CREATE STREAM S (A INT) WITH (kafka_topic='t', value_format='{FORMAT}');"]}"#,
        );
        let runs = expand("file", c).unwrap();
        let names: Vec<&str> = runs.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "file - n - JSON - p.q=true",
                "file - n - JSON - p.q=false",
                "file - n - AVRO - p.q=true",
                "file - n - AVRO - p.q=false"
            ]
        );
        assert!(runs[2].statements[0].contains("value_format='AVRO'"));
        assert_eq!(runs[1].properties["p.q"], "false");
        assert_eq!(runs[1].properties["other"], "5");
    }

    #[test]
    fn plain_case_is_one_run_and_disabled_is_none() {
        let runs = expand("f", case(r#"{"name": "plain", "statements": ["X {FORMAT}"]}"#)).unwrap();
        assert_eq!(runs.len(), 1);
        assert_eq!(runs[0].name, "f - plain");
        assert_eq!(runs[0].statements[0], "X {FORMAT}");
        assert!(expand("f", case(r#"{"name": "off", "enabled": false}"#)).unwrap().is_empty());
    }

    #[test]
    fn bad_cases_do_not_hide_good_ones() {
        let text = r#"{"tests": [{"name": "good"}, {"statements": 3}, {"name": "off", "enabled": false, "x": }]}"#;
        assert!(parse_file("f", text).is_err(), "not JSON at all");
        let text =
            r#"{"tests": [{"name": "good"}, {"name": "bad", "statements": 3}, {"name": "off", "enabled": false}]}"#;
        let loaded = parse_file("f", text).unwrap();
        assert_eq!(loaded.runs.len(), 1);
        assert_eq!(loaded.bad.len(), 1);
        assert_eq!(loaded.bad[0].name, "f - bad");
    }

    #[test]
    fn config_needs_its_property() {
        let c = case(r#"{"name": "n", "config": ["a"], "properties": {}}"#);
        assert!(expand("f", c).is_err());
    }
}
