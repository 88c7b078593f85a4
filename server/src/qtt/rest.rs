//! `rill qtt --rest`: ksqlDB's REST query-validation tests (`rest-query-validation-tests/`),
//! run against Rill's REST API served on loopback, one fresh server per run.
//!
//! Upstream's rules (`RestTestExecutor`): the statements before the first `SELECT ` go to
//! `POST /ksql` in one request; the inputs are then produced (after the first query's header
//! instead, when `inputConditions` asks for it) and the persistent queries caught up; each query
//! goes to `POST /query`. Expected responses are matched in order against the admin entities,
//! then one response per query: only the fields the test names are compared (a key `k|starts_with`
//! compares a prefix, `{STATEMENT}` stands for the statement of that index), and a query's rows
//! must match in number; their `columns` are compared in order only when the case sets
//! `outputConditions.verifyOrder`, otherwise as a multiset (upstream's rule: pull-query scans
//! and push queries over several partitions have no defined order). `expectedError` matches the error's HTTP status, message (substring)
//! and type (`KsqlStatementErrorMessage` = a `statement_error` naming the last statement). Unlike
//! upstream, an expected error that never comes is a failure even when no query follows.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rill_connectors::{EmbeddedStore, TopicStore};
use rill_sql::KsqlEngine;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use super::compare;
use super::load::{self, BadCase, RecordNode, TopicNode};

/// How long a query response may stay silent before the runner stops reading it.
const QUERY_IDLE: Duration = Duration::from_secs(2);

/// One REST test case as the file states it.
#[derive(Debug, Deserialize)]
pub struct RestCaseNode {
    /// Name.
    pub name: String,
    /// Statements: admin statements first, then queries (`SELECT ...`).
    #[serde(default)]
    pub statements: Vec<String>,
    /// Records produced before the queries.
    #[serde(default)]
    pub inputs: Vec<RecordNode>,
    /// Records expected on topics.
    #[serde(default)]
    pub outputs: Vec<RecordNode>,
    /// Topics to create first.
    #[serde(default)]
    pub topics: Vec<TopicNode>,
    /// One run per format.
    #[serde(default)]
    pub format: Vec<String>,
    /// Request properties (`streamsProperties`).
    #[serde(default)]
    pub properties: serde_json::Map<String, Value>,
    /// The error the last request must fail with.
    #[serde(default, rename = "expectedError")]
    pub expected_error: Option<ExpectedError>,
    /// Expected responses: `{"admin": {...}}` or `{"query": [...]}`.
    #[serde(default)]
    pub responses: Vec<Value>,
    /// `{"waitForQueryHeader": true}` / `{"waitForActivePushQuery": true}`: produce the inputs
    /// once the first query is running.
    #[serde(default, rename = "inputConditions")]
    pub input_conditions: Option<Value>,
    /// `{"verifyOrder": true}`: a query's rows must come in the order given; without it, upstream
    /// compares each query's row columns as a multiset.
    #[serde(default, rename = "outputConditions")]
    pub output_conditions: Option<Value>,
    /// Pull queries answered in protobuf.
    #[serde(default, rename = "testPullWithProtoFormat")]
    pub proto: bool,
    /// `false`: not a run.
    #[serde(default = "yes")]
    pub enabled: bool,
}

fn yes() -> bool {
    true
}

/// `expectedError`.
#[derive(Debug, Deserialize)]
pub struct ExpectedError {
    /// `io.confluent.ksql.rest.entity.KsqlStatementErrorMessage` or `...KsqlErrorMessage`.
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    /// Text the error message must contain.
    #[serde(default)]
    pub message: Option<String>,
    /// HTTP status.
    #[serde(default)]
    pub status: Option<u16>,
}

/// One run of a REST case.
#[derive(Debug, Clone)]
pub struct RestRun {
    /// Full name.
    pub name: String,
    /// File stem.
    pub stem: String,
    /// The case.
    pub case: Arc<RestCaseNode>,
    /// Statements with `{FORMAT}` substituted.
    pub statements: Vec<String>,
    /// Properties as text.
    pub properties: BTreeMap<String, String>,
}

/// Loads the REST runs from `paths` (a folder holding `rest-query-validation-tests/` means that).
pub fn load(paths: &[std::path::PathBuf]) -> anyhow::Result<(Vec<RestRun>, Vec<BadCase>)> {
    let paths: Vec<std::path::PathBuf> = paths
        .iter()
        .map(|p| {
            let sub = p.join("rest-query-validation-tests");
            if p.is_dir() && sub.is_dir() {
                sub
            } else {
                p.clone()
            }
        })
        .collect();
    let mut runs = Vec::new();
    let mut bad = Vec::new();
    for file in load::test_files(&paths)? {
        let stem = load::stem(&file);
        let text = std::fs::read_to_string(&file)?;
        let doc: Value = match serde_json::from_str(&load::strip_comments(&text)) {
            Ok(d) => d,
            Err(e) => {
                bad.push(BadCase { name: stem.clone(), stem, error: format!("invalid test file: {e}") });
                continue;
            }
        };
        for (i, t) in doc.get("tests").and_then(Value::as_array).into_iter().flatten().enumerate() {
            let name = t.get("name").and_then(Value::as_str).map(str::to_string).unwrap_or_else(|| format!("#{i}"));
            if t.get("enabled") == Some(&Value::Bool(false)) {
                continue;
            }
            match RestCaseNode::deserialize(t) {
                Ok(case) => runs.extend(expand(&stem, case)),
                Err(e) => bad.push(BadCase {
                    name: load::run_name(&stem, &name, None, None),
                    stem: stem.clone(),
                    error: format!("invalid test case: {e}"),
                }),
            }
        }
    }
    Ok((runs, bad))
}

fn expand(stem: &str, case: RestCaseNode) -> Vec<RestRun> {
    if !case.enabled {
        return vec![];
    }
    let case = Arc::new(case);
    let formats: Vec<Option<String>> =
        if case.format.is_empty() { vec![None] } else { case.format.iter().cloned().map(Some).collect() };
    formats
        .into_iter()
        .map(|format| RestRun {
            name: load::run_name(stem, &case.name, format.as_deref(), None),
            stem: stem.to_string(),
            statements: case
                .statements
                .iter()
                .map(|s| match &format {
                    Some(f) => s.replace("{FORMAT}", f),
                    None => s.clone(),
                })
                .collect(),
            properties: case
                .properties
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string())))
                .collect(),
            case: case.clone(),
        })
        .collect()
}

/// Why a REST run is skipped, or `None` to run it.
pub fn skip_reason(run: &RestRun) -> Option<String> {
    if run.case.proto || run.case.responses.iter().any(|r| r.get("queryProto").is_some()) {
        return Some("query responses in protobuf (schema registry)".into());
    }
    super::skip::reason_for(&run.statements, &run.case.topics)
}

/// Runs one REST case in `dir`: a fresh log, engine and server on loopback.
pub async fn run_case(run: &RestRun, dir: &Path) -> Result<(), String> {
    let case = &run.case;
    if run.statements.len() < case.responses.len() {
        return Err("invalid test case: more expected responses than statements".into());
    }
    let store = EmbeddedStore::open(dir).map_err(|e| format!("runner: opening the log: {e}"))?;
    let store: Arc<dyn TopicStore> = Arc::new(store);
    let engine = KsqlEngine::open(store.clone(), dir.to_path_buf())
        .await
        .map_err(|e| format!("runner: opening the engine: {e}"))?;
    super::run::create_topics(
        &case.topics,
        &run.statements,
        case.inputs.iter().chain(&case.outputs),
        store.as_ref(),
        super::run::Partitions::Rest,
    )?;
    super::run::register_schemas(&case.topics, store.as_ref())?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(|e| format!("runner: binding: {e}"))?;
    let addr = listener.local_addr().map_err(|e| format!("runner: {e}"))?;
    let app = crate::rest::router(crate::rest::AppState::new(engine.clone()));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });

    // ksqlDB's REST harness runs its server with scalable push queries enabled.
    let mut props = super::case_properties(&run.properties);
    props.entry("ksql.query.push.v2.enabled".to_string()).or_insert_with(|| "true".to_string());
    let first_query = run.statements.iter().position(|s| s.starts_with("SELECT ")).unwrap_or(run.statements.len());
    let (admin, queries) = run.statements.split_at(first_query);
    if queries.iter().any(|q| !q.starts_with("SELECT ")) {
        return Err("invalid test case: a statement follows the queries".into());
    }
    let last = run.statements.last().map(String::as_str).unwrap_or("");
    let expected_error = case.expected_error.as_ref();

    let mut responses: Vec<(&'static str, Value)> = Vec::new();
    if !admin.is_empty() {
        let body = json!({"ksql": admin.join("\n"), "streamsProperties": props});
        let mut resp = post(addr, "/ksql", &body).await?;
        let text = resp.read_to_end().await?;
        let value: Value =
            serde_json::from_slice(&text).map_err(|e| format!("/ksql answered non-JSON ({e}): {}", lossy(&text)))?;
        if resp.status != 200 {
            return check_error(expected_error, resp.status, &value, last);
        }
        let entities = value.as_array().cloned().ok_or_else(|| format!("/ksql answered {}", compare::short(&value)))?;
        responses.extend(entities.into_iter().map(|e| ("admin", e)));
    }

    let wait_for_header = case.input_conditions.as_ref().is_some_and(|c| {
        ["waitForQueryHeader", "waitForActivePushQuery"].iter().any(|k| c.get(*k) == Some(&Value::Bool(true)))
    });
    if !wait_for_header {
        produce(&engine, store.as_ref(), &case.inputs).await?;
    }
    let mut inputs_pending = wait_for_header;
    let mut failed_query = None;
    for q in queries {
        let body = json!({"ksql": q, "streamsProperties": props});
        let mut resp = post(addr, "/query", &body).await?;
        if resp.status != 200 {
            let text = resp.read_to_end().await?;
            let value: Value = serde_json::from_slice(&text).unwrap_or_else(|_| Value::String(lossy(&text)));
            failed_query = Some((resp.status, value));
            break;
        }
        let rows = if inputs_pending {
            inputs_pending = false;
            read_rows(&mut resp, Some((&engine, store.as_ref(), &case.inputs))).await?
        } else {
            read_rows(&mut resp, None).await?
        };
        responses.push(("query", Value::Array(rows)));
    }
    if let Some((status, value)) = failed_query {
        return check_error(expected_error, status, &value, last);
    }
    if let Some(ee) = expected_error {
        return Err(format!("expected an error{}, but every request succeeded", describe(ee)));
    }
    if inputs_pending {
        produce(&engine, store.as_ref(), &case.inputs).await?;
    }

    // Outputs: at least the expected records, the first ones compared.
    let mut outputs = super::run::Collector::new(&case.outputs);
    engine.wait_until_idle().await;
    outputs.collect(store.as_ref(), 0)?;
    let sources = engine.sources().await;
    for topic in outputs.topics.clone() {
        let expected: Vec<RecordNode> = case.outputs.iter().filter(|r| r.topic == topic).cloned().collect();
        let actual = outputs.decode(&topic, &expected, &sources, store.schema_registry().as_ref())?;
        if actual.len() < expected.len() {
            return Err(format!("topic '{topic}': expected {} records, got {}", expected.len(), actual.len()));
        }
        compare::compare_topic(&topic, &expected, &actual[..expected.len()], false)?;
    }

    if responses.len() < case.responses.len() {
        return Err(format!("expected {} responses, got {}", case.responses.len(), responses.len()));
    }
    for (i, expected) in case.responses.iter().enumerate() {
        let statement = run.statements.get(i).map(String::as_str).unwrap_or("");
        let (kind, actual) = &responses[i];
        let Some((want_kind, want)) = expected.as_object().and_then(|o| o.iter().next()) else {
            return Err(format!("invalid test case: response {i} is not an object"));
        };
        if want_kind != kind {
            return Err(format!("response {i}: expected a {want_kind} response, got a {kind} response"));
        }
        let path = format!("response {i} ({kind})");
        match (want, actual) {
            (Value::Array(want_rows), Value::Array(rows)) => {
                if want_rows.len() != rows.len() {
                    let got: Vec<String> = rows.iter().map(compare::short).collect();
                    return Err(format!(
                        "{path}: expected {} rows, got {}: [{}]",
                        want_rows.len(),
                        rows.len(),
                        got.join(", ")
                    ));
                }
                let verify_order = case
                    .output_conditions
                    .as_ref()
                    .and_then(|c| c.get("verifyOrder"))
                    .and_then(Value::as_bool)
                    .unwrap_or(false);
                if verify_order {
                    for (j, (w, a)) in want_rows.iter().zip(rows).enumerate() {
                        match_fields(a, w, statement, &format!("{path} row {j}"))?;
                    }
                } else {
                    match_rows_any_order(rows, want_rows, statement, &path)?;
                }
            }
            _ => match_fields(actual, want, statement, &path)?,
        }
    }
    Ok(())
}

/// Produces the inputs in file order, one at a time, letting every query catch up after each
/// (so that rows of different partitions reach the queries in file order, as Kafka Streams
/// orders them by time).
async fn produce(engine: &KsqlEngine, store: &dyn TopicStore, inputs: &[RecordNode]) -> Result<(), String> {
    let sources = engine.sources().await;
    for (i, input) in inputs.iter().enumerate() {
        super::run::append_input(store, &sources, i, input).await?;
        engine.wait_until_idle().await;
    }
    Ok(())
}

fn describe(ee: &ExpectedError) -> String {
    let mut parts = Vec::new();
    if let Some(s) = ee.status {
        parts.push(format!("status {s}"));
    }
    if let Some(m) = &ee.message {
        parts.push(format!("containing \"{m}\""));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!(" ({})", parts.join(", "))
    }
}

/// A request failed: a pass when the case expects this error.
fn check_error(expected: Option<&ExpectedError>, status: u16, body: &Value, last: &str) -> Result<(), String> {
    let message =
        body.get("message").and_then(Value::as_str).map(str::to_string).unwrap_or_else(|| compare::short(body));
    let Some(ee) = expected else {
        return Err(format!("request failed with HTTP {status}: {message}"));
    };
    let mismatch = |what: String| Err(format!("expected an error{}, {what}", describe(ee)));
    if ee.status.is_some_and(|s| s != status) {
        return mismatch(format!("got HTTP {status}: {message}"));
    }
    if ee.message.as_ref().is_some_and(|m| !message.contains(m.as_str())) {
        return mismatch(format!("got: {message}"));
    }
    if ee.kind.as_deref().is_some_and(|k| k.ends_with("KsqlStatementErrorMessage")) {
        let statement = body.get("statementText").and_then(Value::as_str).unwrap_or("");
        if body.get("@type").and_then(Value::as_str) != Some("statement_error") || !statement.contains(last.trim()) {
            return mismatch(format!(
                "got a {} naming `{statement}`",
                body.get("@type").map(compare::short).unwrap_or_default()
            ));
        }
    }
    Ok(())
}

/// Compares only the fields `expected` names (recursively in objects).
fn match_fields(actual: &Value, expected: &Value, statement: &str, path: &str) -> Result<(), String> {
    let Value::Object(want) = expected else {
        return match compare::difference(expected, actual, "") {
            Some(d) => Err(format!("{path}: {d}")),
            None => Ok(()),
        };
    };
    let Value::Object(got) = actual else {
        return Err(format!("{path}: expected an object, got {}", compare::short(actual)));
    };
    for (key, value) in want {
        // Upstream's operators: `k|starts_with` (any case), `k|equals`.
        let (name, starts_with) = match key.split_once('|') {
            Some((n, op)) if op.eq_ignore_ascii_case("starts_with") || op.eq_ignore_ascii_case("startsWith") => {
                (n, true)
            }
            Some((n, op)) if op.eq_ignore_ascii_case("equals") => (n, false),
            _ => (key.as_str(), false),
        };
        let here = format!("{path}.{name}");
        let Some(a) = got.get(name) else { return Err(format!("{here}: missing")) };
        let value = match value {
            Value::String(s) => Value::String(s.replace("{STATEMENT}", statement)),
            other => other.clone(),
        };
        if starts_with {
            match (a.as_str(), value.as_str()) {
                (Some(a), Some(w)) if a.starts_with(w) => {}
                _ => {
                    return Err(format!(
                        "{here}: expected text starting with {}, got {}",
                        compare::short(&value),
                        compare::short(a)
                    ))
                }
            }
        } else if value.is_object() {
            match_fields(a, &value, statement, &here)?;
        } else if let Some(d) = compare::difference(&value, a, "") {
            return Err(format!("{here}: {d}"));
        }
    }
    Ok(())
}

/// Upstream's comparison of a query's rows without `outputConditions.verifyOrder`: each row's
/// fields are matched in order, except the `row.columns`, which must be the same multiset.
fn match_rows_any_order(rows: &[Value], want_rows: &[Value], statement: &str, path: &str) -> Result<(), String> {
    // Takes `row.columns` out of a row (when the expected row names them).
    fn split(row: &Value) -> (Value, Option<Value>) {
        let mut row = row.clone();
        let columns = row.get_mut("row").and_then(Value::as_object_mut).and_then(|r| r.remove("columns"));
        (row, columns)
    }
    let mut wanted = Vec::new();
    let mut got = Vec::new();
    for (j, (w, a)) in want_rows.iter().zip(rows).enumerate() {
        let (w, w_columns) = split(w);
        let Some(w_columns) = w_columns else {
            match_fields(a, &w, statement, &format!("{path} row {j}"))?;
            continue;
        };
        let (a, a_columns) = split(a);
        match_fields(&a, &w, statement, &format!("{path} row {j}"))?;
        let Some(a_columns) = a_columns else { return Err(format!("{path} row {j}.row.columns: missing")) };
        wanted.push(w_columns);
        got.push(a_columns);
    }
    for a in &got {
        match wanted.iter().position(|w| compare::difference(w, a, "").is_none()) {
            Some(i) => {
                wanted.swap_remove(i);
            }
            None => {
                let left: Vec<String> = wanted.iter().map(compare::short).collect();
                return Err(format!(
                    "{path}: row {} is not expected (rows in any order); expected rows not yet matched: [{}]",
                    compare::short(a),
                    left.join(", ")
                ));
            }
        }
    }
    Ok(())
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// An HTTP/1.1 response being read: the status, then the body a piece at a time.
struct Response {
    status: u16,
    reader: BufReader<TcpStream>,
    chunked: bool,
    remaining: Option<usize>,
    done: bool,
}

/// `POST path` with a JSON body, on a new connection (`Connection: close`).
async fn post(addr: SocketAddr, path: &str, body: &Value) -> Result<Response, String> {
    let err = |e: std::io::Error| format!("runner: HTTP {path}: {e}");
    let mut stream = TcpStream::connect(addr).await.map_err(err)?;
    let body = body.to_string();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/vnd.ksql.v1+json\r\nAccept: application/vnd.ksql.v1+json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.map_err(err)?;
    stream.write_all(body.as_bytes()).await.map_err(err)?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).await.map_err(err)?;
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("runner: HTTP {path}: bad status line {line:?}"))?;
    let (mut chunked, mut remaining) = (false, None);
    loop {
        line.clear();
        if reader.read_line(&mut line).await.map_err(err)? == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            let value = value.trim();
            if name.eq_ignore_ascii_case("transfer-encoding") && value.eq_ignore_ascii_case("chunked") {
                chunked = true;
            } else if name.eq_ignore_ascii_case("content-length") {
                remaining = value.parse().ok();
            }
        }
    }
    Ok(Response { status, reader, chunked, remaining, done: false })
}

impl Response {
    /// The next piece of the body; `None` at its end.
    async fn next(&mut self) -> Result<Option<Vec<u8>>, String> {
        let err = |e: std::io::Error| format!("runner: reading a response: {e}");
        if self.done {
            return Ok(None);
        }
        if self.chunked {
            let mut line = String::new();
            self.reader.read_line(&mut line).await.map_err(err)?;
            let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or("0"), 16).unwrap_or(0);
            if size == 0 {
                self.done = true;
                return Ok(None);
            }
            let mut buf = vec![0; size];
            self.reader.read_exact(&mut buf).await.map_err(err)?;
            line.clear();
            self.reader.read_line(&mut line).await.map_err(err)?;
            return Ok(Some(buf));
        }
        let want = self.remaining.unwrap_or(8192).min(8192);
        if want == 0 {
            self.done = true;
            return Ok(None);
        }
        let mut buf = vec![0; want];
        let n = self.reader.read(&mut buf).await.map_err(err)?;
        if n == 0 {
            self.done = true;
            return Ok(None);
        }
        buf.truncate(n);
        if let Some(r) = self.remaining.as_mut() {
            *r -= n;
        }
        Ok(Some(buf))
    }

    async fn read_to_end(&mut self) -> Result<Vec<u8>, String> {
        let mut all = Vec::new();
        while let Some(piece) = tokio::time::timeout(Duration::from_secs(5), self.next())
            .await
            .map_err(|_| "runner: the response did not end".to_string())??
        {
            all.extend(piece);
        }
        Ok(all)
    }
}

/// Reads a `/query` response into its rows (header, rows, final message), until it ends or stays
/// silent for a while. `produce`: inputs to produce once the header has arrived.
async fn read_rows(
    resp: &mut Response,
    mut produce_after_header: Option<(&KsqlEngine, &dyn TopicStore, &[RecordNode])>,
) -> Result<Vec<Value>, String> {
    let mut text = String::new();
    let mut rows = Vec::new();
    loop {
        let piece = match tokio::time::timeout(QUERY_IDLE, resp.next()).await {
            Ok(p) => p?,
            Err(_) => None,
        };
        let end = piece.is_none();
        if let Some(p) = piece {
            text.push_str(&String::from_utf8_lossy(&p));
        }
        // Whole lines are whole rows: `[{"header":...},` / `{"row":...},` / `{"finalMessage":...}]`.
        while let Some(nl) = text.find('\n') {
            let line: String = text.drain(..=nl).collect();
            push_row(&line, &mut rows)?;
        }
        if end {
            push_row(&std::mem::take(&mut text), &mut rows)?;
        }
        if let Some((engine, store, inputs)) = produce_after_header {
            if rows.iter().any(|r| r.get("header").is_some()) {
                produce(engine, store, inputs).await?;
                produce_after_header = None;
            }
        }
        if end || rows.last().is_some_and(|r| r.get("finalMessage").is_some() || r.get("errorMessage").is_some()) {
            return Ok(rows);
        }
    }
}

fn push_row(line: &str, rows: &mut Vec<Value>) -> Result<(), String> {
    let t = line.trim().trim_start_matches('[').trim_end_matches(']').trim().trim_end_matches(',').trim();
    if t.is_empty() {
        return Ok(());
    }
    let v = serde_json::from_str(t).map_err(|e| format!("/query answered a row that is not JSON ({e}): {t}"))?;
    rows.push(v);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_match_partially_with_prefixes_and_statements() {
        let actual = json!({"@type": "currentStatus", "statementText": "CREATE STREAM X;", "commandStatus": {"status": "SUCCESS", "message": "Stream created"}});
        assert!(match_fields(&actual, &json!({"@type": "currentStatus"}), "", "r").is_ok());
        assert!(match_fields(&actual, &json!({"statementText": "{STATEMENT}"}), "CREATE STREAM X;", "r").is_ok());
        assert!(match_fields(&actual, &json!({"commandStatus": {"message|STARTS_WITH": "Stream"}}), "", "r").is_ok());
        let e = match_fields(&actual, &json!({"commandStatus": {"status": "ERROR"}}), "", "r").unwrap_err();
        assert_eq!(e, r#"r.commandStatus.status: expected "ERROR", got "SUCCESS""#);
        assert!(match_fields(&actual, &json!({"nope": 1}), "", "r").unwrap_err().ends_with("missing"));
    }

    #[test]
    fn query_rows_match_as_a_multiset_of_columns() {
        let header = json!({"header": {"schema": "`K` STRING KEY, `V` INTEGER"}});
        let row = |k: &str, v: i64| json!({"row": {"columns": [k, v]}});
        let want = [header.clone(), row("10", 1), row("11", 2)];
        let swapped = [header.clone(), row("11", 2), row("10", 1)];
        assert!(match_rows_any_order(&swapped, &want, "", "r").is_ok());
        // Each expected row is used once; the other fields still match in order.
        let twice = [header.clone(), row("10", 1), row("10", 1)];
        let e = match_rows_any_order(&twice, &want, "", "r").unwrap_err();
        assert!(e.starts_with(r#"r: row ["10",1] is not expected"#), "{e}");
        let other_schema = [json!({"header": {"schema": "`K` STRING KEY"}}), row("10", 1), row("11", 2)];
        assert!(match_rows_any_order(&other_schema, &want, "", "r").unwrap_err().contains("schema"));
    }

    #[test]
    fn query_rows_parse_line_by_line() {
        let mut rows = Vec::new();
        for line in [
            "[{\"header\":{\"schema\":\"`K` STRING\"}},\n",
            "{\"row\":{\"columns\":[\"a\"]}},\n",
            "{\"finalMessage\":\"Limit Reached\"}]",
        ] {
            push_row(line, &mut rows).unwrap();
        }
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[1], json!({"row": {"columns": ["a"]}}));
    }

    #[test]
    fn errors_match_status_message_and_type() {
        let body = json!({"@type": "statement_error", "message": "Failed: bad thing", "statementText": "SELECT 1;"});
        let ee = ExpectedError {
            kind: Some("io.confluent.ksql.rest.entity.KsqlStatementErrorMessage".into()),
            message: Some("bad thing".into()),
            status: Some(400),
        };
        assert!(check_error(Some(&ee), 400, &body, "SELECT 1;").is_ok());
        assert!(check_error(Some(&ee), 500, &body, "SELECT 1;").unwrap_err().contains("got HTTP 500"));
        assert!(check_error(None, 400, &body, "").unwrap_err().contains("bad thing"));
    }
}
