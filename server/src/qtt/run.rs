//! One run: a fresh engine over a fresh embedded log, the statements, the inputs one at a time,
//! then the comparison.
//!
//! Like upstream's runner, topics are created before the statements run: those of the `topics`
//! section (with their partition counts), those named by `CREATE STREAM/TABLE` statements with
//! columns (their `PARTITIONS`), and every input and output topic, with 1 partition by default (4 for
//! the REST runner, see [`Partitions`]).
//! Time is deterministic: records carry the case's timestamps (default 0), are appended one per
//! append in file order, and the runner waits until every query is idle before the next one, so
//! event time only moves with the inputs. Outputs are collected after every input; records of a
//! topic are ordered by the input that caused them, then partition, then offset.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use base64::Engine as _;
use bytes::Bytes;
use rill_connectors::registry::subject;
use rill_connectors::store::{Durability, Record, TopicConfig};
use rill_connectors::{EmbeddedStore, SchemaRegistry, TopicStore};
use rill_sql::ast::{Statement, WindowSpec};
use rill_sql::catalog::SourceDef;
use rill_sql::engine::Properties;
use rill_sql::KsqlEngine;

use super::codec::{self, Layout};
use super::compare::{self, Actual, ActualWindow};
use super::load::{ExpectedException, RecordNode, Run, TopicNode};

/// Runs one case in `dir`. `Err` is the first difference (or why the case could not run).
pub async fn run_case(run: &Run, dir: &Path) -> Result<(), String> {
    let store = EmbeddedStore::open(dir).map_err(|e| format!("runner: opening the log: {e}"))?;
    let store: Arc<dyn TopicStore> = Arc::new(store);
    let engine = KsqlEngine::open(store.clone(), dir.to_path_buf())
        .await
        .map_err(|e| format!("runner: opening the engine: {e}"))?;
    create_topics(
        &run.case.topics,
        &run.statements,
        run.case.inputs.iter().chain(&run.case.outputs),
        store.as_ref(),
        Partitions::Driver,
    )?;
    register_schemas(&run.case.topics, store.as_ref())?;

    let case = &run.case;
    let props: Properties = super::case_properties(&run.properties);
    // One script, a statement per line, as upstream's runner parses them: positions in messages
    // ("Line: 3, Col: 84") count lines of the whole script.
    if let Err((done, e)) = engine.execute(&run.statements.join("\n"), &props).await {
        return refused(case.expected_exception.as_ref(), done.len(), &e.error.to_string());
    }
    // ksqlDB stops a query on a record it cannot process; Rill sends the record to the
    // dead-letter topic and goes on: such a case passes when the outputs before it match and a
    // dead letter gives ksqlDB's reason.
    let dead_letter = case.expected_exception.as_ref().and_then(ExpectedException::at_run_time);
    if let (Some(ee), None) = (&case.expected_exception, dead_letter) {
        return Err(format!("expected an error{}, but every statement succeeded", expected_text(ee)));
    }

    let mut outputs = Collector::new(&case.outputs);
    engine.wait_until_idle().await;
    outputs.collect(store.as_ref(), 0)?;
    let sources = engine.sources().await;
    for (i, input) in case.inputs.iter().enumerate() {
        append_input(store.as_ref(), &sources, i, input).await?;
        engine.wait_until_idle().await;
        outputs.collect(store.as_ref(), i + 1)?;
    }

    let sources = engine.sources().await;
    let ran_with_inserts = case.inputs.is_empty();
    for topic in outputs.topics.clone() {
        let expected: Vec<RecordNode> = case.outputs.iter().filter(|r| r.topic == topic).cloned().collect();
        let actual = outputs.decode(&topic, &expected, &sources, store.schema_registry().as_ref())?;
        compare::compare_topic(&topic, &expected, &actual, ran_with_inserts)?;
    }
    if let Some(post) = &case.post {
        super::post::check(post, &engine).await?;
    }
    if let Some(reason) = dead_letter {
        let errors = dead_letter_errors(store.as_ref())?;
        if !errors.iter().any(|e| e.contains(reason)) {
            return Err(format!("expected a dead letter saying \"{reason}\", got {errors:?}"));
        }
    }
    Ok(())
}

/// The reasons of every record in the dead-letter topic.
fn dead_letter_errors(store: &dyn TopicStore) -> Result<Vec<String>, String> {
    let topic = rill_engine::runtime::DEAD_LETTER_TOPIC;
    let mut errors = Vec::new();
    let Ok(config) = store.topic_config(topic) else { return Ok(errors) };
    for p in 0..config.partitions {
        read_partition(store, topic, p, 0, |r| {
            let value: serde_json::Value = r.value.and_then(|v| serde_json::from_slice(v).ok()).unwrap_or_default();
            errors.push(value["error"].as_str().unwrap_or_default().to_string());
        })?;
    }
    Ok(errors)
}

/// Hands each record of partition `p` of `topic` from offset `from` to its end to `each`;
/// returns the offset after them.
fn read_partition(
    store: &dyn TopicStore,
    topic: &str,
    p: u32,
    from: u64,
    mut each: impl FnMut(rill_log::RecordRef<'_>),
) -> Result<u64, String> {
    let failed = |e| format!("runner: reading '{topic}': {e}");
    let end = store.end_offset(topic, p).map_err(failed)?;
    let mut pos = from;
    while pos < end {
        let fetch = store.read(topic, p, pos, 1 << 20).map_err(failed)?;
        fetch.records().filter(|r| r.offset >= pos).for_each(&mut each);
        if fetch.next_offset() <= pos {
            break;
        }
        pos = fetch.next_offset();
    }
    Ok(pos)
}

fn expected_text(ee: &ExpectedException) -> String {
    match &ee.message {
        Some(m) => format!(" containing \"{m}\""),
        None => String::new(),
    }
}

/// A statement was refused: a pass when the case expects it (and the message fits).
fn refused(expected: Option<&ExpectedException>, index: usize, message: &str) -> Result<(), String> {
    match expected {
        Some(ee) if ee.message.as_ref().is_none_or(|m| message.contains(m.as_str())) => Ok(()),
        Some(ee) => Err(format!("expected an error{}, got: {message}", expected_text(ee))),
        None => Err(format!("statement {index} failed: {message}")),
    }
}

/// How many partitions [`create_topics`] gives the topics a case does not declare itself.
#[derive(Clone, Copy)]
pub(super) enum Partitions {
    /// ksqlDB's topology test driver: one partition, or a `CREATE`'s `PARTITIONS`.
    Driver,
    /// ksqlDB's REST test harness creates the topics it infers with 4 partitions (its legacy
    /// default sink partition count) unless a `CREATE` says `PARTITIONS`; scan orders follow.
    Rest,
}

/// Creates the topics a case needs before its statements run (see the module docs).
pub(super) fn create_topics<'a>(
    topics: &[TopicNode],
    statements: &[String],
    records: impl Iterator<Item = &'a RecordNode>,
    store: &dyn TopicStore,
    mode: Partitions,
) -> Result<(), String> {
    let inferred = match mode {
        Partitions::Driver => 1,
        Partitions::Rest => 4,
    };
    let mut wanted: Vec<(String, u32)> = Vec::new();
    let mut add = |name: &str, partitions: u32| {
        if !wanted.iter().any(|(n, _)| n == name) {
            wanted.push((name.to_string(), partitions.max(1)));
        }
    };
    for t in topics {
        add(&t.name, t.partitions.unwrap_or(1));
    }
    for sql in statements {
        // Statements that do not parse fail later, when they run.
        let Ok(parsed) = rill_sql::parser::parse(sql) else { continue };
        for p in parsed {
            if let Statement::CreateSource { columns, props, query: None, .. } = &p.statement {
                let (Some(topic), false) = (props.get("KAFKA_TOPIC"), columns.is_empty()) else { continue };
                let declared = props.get("PARTITIONS").and_then(|v| v.as_text().parse().ok());
                add(&topic.as_text(), declared.unwrap_or(inferred));
            }
        }
    }
    for r in records {
        add(&r.topic, inferred);
    }
    for (name, partitions) in wanted {
        let config = TopicConfig { partitions, durability: Durability::None, ..TopicConfig::default() };
        store.create_topic(&name, config).map_err(|e| format!("runner: creating topic '{name}': {e}"))?;
    }
    Ok(())
}

/// The source whose layout reads (`writer == false`) or writes (`writer == true`) a topic:
/// sources fed by a query are preferred as writers, the others as readers.
fn source_for<'a>(sources: &'a [SourceDef], topic: &str, writer: bool) -> Option<&'a SourceDef> {
    let on_topic = || sources.iter().filter(move |s| s.topic == topic);
    on_topic().find(|s| s.written_by.is_empty() != writer).or_else(|| on_topic().next())
}

fn layouts(source: Option<&SourceDef>) -> (Option<Layout>, Option<Layout>) {
    match source {
        None => (None, None),
        Some(s) => (
            Some(Layout {
                format: s.key_format.clone(),
                types: s.key_columns().map(|c| c.sql_type.clone()).collect(),
                names: s.key_columns().map(|c| c.name.clone()).collect(),
                subject: subject(&s.topic, true),
            }),
            Some(Layout {
                format: s.value_format.clone(),
                types: s.value_columns().map(|c| c.sql_type.clone()).collect(),
                names: s.value_columns().map(|c| c.name.clone()).collect(),
                subject: subject(&s.topic, false),
            }),
        ),
    }
}

/// Registers the schemas a case gives its topics (`valueSchema`, `keySchema`; `schema` is the
/// older spelling of the value's) before its statements run, as upstream's runner does.
pub(super) fn register_schemas(topics: &[TopicNode], store: &dyn TopicStore) -> Result<(), String> {
    let registry = store.schema_registry();
    for t in topics {
        for (key, schema) in [(true, t.key_schema.as_ref()), (false, t.value_schema.as_ref().or(t.schema.as_ref()))]
            .into_iter()
            .map(|(k, s)| (k, s.filter(|v| !v.is_null())))
        {
            let Some(schema) = schema else { continue };
            // A `.proto` schema is text; Avro and JSON Schema are JSON (a string is a JSON name).
            let text = match schema {
                serde_json::Value::String(s) if s.contains("message ") => s.clone(),
                other => other.to_string(),
            };
            registry
                .register(&subject(&t.name, key), &text)
                .map_err(|e| format!("runner: registering the schema of '{}': {e}", t.name))?;
        }
        // The schemas they reference, under their import names (Confluent's subjects for them),
        // after them (upstream's ids: the topic's schema is id 1).
        for r in t.value_schema_references.iter().chain(&t.key_schema_references) {
            registry
                .register(&r.name, &r.schema)
                .map_err(|e| format!("runner: registering the schema '{}' of '{}': {e}", r.name, t.name))?;
        }
    }
    Ok(())
}

/// Serializes input `i` with the formats of the source on its topic and appends it alone.
pub(super) async fn append_input(
    store: &dyn TopicStore,
    sources: &[SourceDef],
    i: usize,
    input: &RecordNode,
) -> Result<(), String> {
    let (record, partition_key) = input_record(input, sources, store.schema_registry().as_ref())
        .map_err(|e| format!("input {i} (topic '{}'): {e}", input.topic))?;
    let partition = store
        .partition_for_key(&input.topic, partition_key.as_deref())
        .map_err(|e| format!("input {i}: topic '{}': {e}", input.topic))?;
    store
        .append(&input.topic, partition, &[record])
        .await
        .map_err(|e| format!("input {i}: appending to '{}': {e}", input.topic))?;
    Ok(())
}

/// The record to append, and the key to partition it by (a windowed key without its window,
/// as Rill's sink does, so that all windows of a key share a partition).
fn input_record(
    input: &RecordNode,
    sources: &[SourceDef],
    registry: &dyn SchemaRegistry,
) -> Result<(Record, Option<Vec<u8>>), String> {
    let (key_layout, value_layout) = layouts(source_for(sources, &input.topic, false));
    let partition_key = codec::encode(key_layout.as_ref(), &input.key, registry).map_err(|e| format!("key: {e}"))?;
    let key = match &input.window {
        Some(w) => Some(codec::append_window(partition_key.clone(), w)),
        None => partition_key.clone(),
    };
    let value = codec::encode(value_layout.as_ref(), &input.value, registry).map_err(|e| format!("value: {e}"))?;
    let mut headers = Vec::new();
    for h in input.headers.iter().flatten() {
        let value = match &h.value {
            Some(b64) => Some(Bytes::from(
                base64::engine::general_purpose::STANDARD.decode(b64).map_err(|e| format!("header {}: {e}", h.key))?,
            )),
            None => None,
        };
        headers.push((h.key.clone(), value));
    }
    let record = Record {
        timestamp: input.timestamp.unwrap_or(0),
        key: key.map(Bytes::from),
        value: value.map(Bytes::from),
        headers,
    };
    Ok((record, partition_key))
}

/// One output record as read: the input step that produced it and where it is.
struct Raw {
    step: usize,
    partition: u32,
    offset: u64,
    timestamp: i64,
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    headers: Vec<(String, Option<Vec<u8>>)>,
}

/// Reads the expected output topics as the inputs go in.
pub(super) struct Collector {
    /// Expected topics, in order of first appearance.
    pub(super) topics: Vec<String>,
    positions: HashMap<(String, u32), u64>,
    records: HashMap<String, Vec<Raw>>,
}

impl Collector {
    pub(super) fn new(outputs: &[RecordNode]) -> Self {
        let mut topics: Vec<String> = Vec::new();
        for r in outputs {
            if !topics.contains(&r.topic) {
                topics.push(r.topic.clone());
            }
        }
        Self { topics, positions: HashMap::new(), records: HashMap::new() }
    }

    pub(super) fn collect(&mut self, store: &dyn TopicStore, step: usize) -> Result<(), String> {
        for topic in &self.topics {
            // A topic that does not exist (any more) has nothing to read.
            let Ok(config) = store.topic_config(topic) else { continue };
            for p in 0..config.partitions {
                let pos = self.positions.entry((topic.clone(), p)).or_insert(0);
                let records = self.records.entry(topic.clone()).or_default();
                *pos = read_partition(store, topic, p, *pos, |r| {
                    records.push(Raw {
                        step,
                        partition: p,
                        offset: r.offset,
                        timestamp: r.timestamp,
                        key: r.key.map(<[u8]>::to_vec),
                        value: r.value.map(<[u8]>::to_vec),
                        headers: r.headers().map(|(k, v)| (k.to_string(), v.map(<[u8]>::to_vec))).collect(),
                    })
                })?;
            }
        }
        Ok(())
    }

    /// Decodes a topic's records with the formats of the source written to it.
    pub(super) fn decode(
        &mut self,
        topic: &str,
        expected: &[RecordNode],
        sources: &[SourceDef],
        registry: &dyn SchemaRegistry,
    ) -> Result<Vec<Actual>, String> {
        let mut raws = self.records.remove(topic).unwrap_or_default();
        raws.sort_by_key(|r| (r.step, r.partition, r.offset));
        let source = source_for(sources, topic, true);
        let (key_layout, value_layout) = layouts(source);
        // Windowed keys: the sink's window type says so, else the expected records do.
        let window = match (source.and_then(|s| s.window_type()), expected.iter().find_map(|r| r.window.as_ref())) {
            (Some(t), _) => Some(codec::is_session(t)),
            (None, Some(w)) => Some(codec::is_session(&w.kind)),
            (None, None) => None,
        };
        let session = window == Some(true);
        let size = if window == Some(false) { source.and_then(window_size) } else { None };
        let mut out = Vec::with_capacity(raws.len());
        for (i, raw) in raws.iter().enumerate() {
            let at = |e: String| format!("topic '{topic}' record {i}: {e}");
            let (key_bytes, window) = match (window, raw.key.as_deref()) {
                (Some(_), Some(k)) => {
                    let split = codec::split_window(k, session, size).map_err(at)?;
                    (Some(split.inner), Some(ActualWindow { start: split.start, end: split.end, session }))
                }
                (_, k) => (k, None),
            };
            let key = codec::decode(key_layout.as_ref(), key_bytes, registry)
                .map_err(|e| at(format!("cannot read the key: {e}")))?;
            let value = codec::decode(value_layout.as_ref(), raw.value.as_deref(), registry)
                .map_err(|e| at(format!("cannot read the value: {e}")))?;
            use base64::Engine as _;
            let headers = raw
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), v.as_ref().map(|v| base64::engine::general_purpose::STANDARD.encode(v))))
                .collect();
            out.push(Actual { key, value, timestamp: raw.timestamp, window, headers });
        }
        Ok(out)
    }
}

/// The size of a tumbling or hopping window, from the statement that created the source.
pub fn window_size(source: &SourceDef) -> Option<i64> {
    let parsed = rill_sql::parser::parse(&source.statement).ok()?;
    parsed.into_iter().find_map(|p| match p.statement {
        Statement::CreateSource { query: Some(select), .. } => match select.window {
            Some(WindowSpec::Tumbling { size, .. }) | Some(WindowSpec::Hopping { size, .. }) => Some(size.millis),
            _ => None,
        },
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expected_errors_match_by_substring() {
        let ee = ExpectedException { message: Some("does not exist".into()), ..Default::default() };
        assert!(refused(Some(&ee), 1, "Source FOO does not exist.").is_ok());
        let msg = refused(Some(&ee), 1, "something else").unwrap_err();
        assert_eq!(msg, "expected an error containing \"does not exist\", got: something else");
        assert!(refused(Some(&ExpectedException::default()), 0, "any").is_ok());
        assert_eq!(refused(None, 2, "boom").unwrap_err(), "statement 2 failed: boom");
    }

    /// A Kafka Streams failure is a query stopping on a record: its cause is what the record's
    /// dead letter must say; other errors are statements refused.
    #[test]
    fn streams_exceptions_are_expected_at_run_time() {
        let kind = |k: &str| Some(k.to_string());
        let ee = ExpectedException {
            message: Some("Exception caught in process".into()),
            kind: kind("org.apache.kafka.streams.errors.StreamsException"),
            cause_message: Some("Numeric field overflow".into()),
        };
        assert_eq!(ee.at_run_time(), Some("Numeric field overflow"));
        let ee = ExpectedException { cause_message: None, ..ee };
        assert_eq!(ee.at_run_time(), Some("Exception caught in process"));
        let ee = ExpectedException { kind: kind("io.confluent.ksql.util.KsqlStatementException"), ..ee };
        assert_eq!(ee.at_run_time(), None);
    }
}
