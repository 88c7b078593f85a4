//! The REST API, compatible with ksqlDB's so that its clients work unchanged.
//!
//! `POST /ksql` runs statements; `POST /query` and `POST /query-stream` stream push-query rows;
//! `POST /inserts-stream` inserts rows; `POST /close-query` stops a push query; `GET /info`,
//! `GET /healthcheck` describe the server. One listener serves HTTP/1.1 and cleartext HTTP/2.

mod entities;
mod render;

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::sync::Arc;

use arrow::array::AsArray;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use futures::StreamExt;
use parking_lot::Mutex;
use rill_engine::runtime::RunningQuery;
use rill_sql::engine::Properties;
use rill_sql::results::{PushQuery, StatementResult};
use rill_sql::{KsqlEngine, SqlError};
use serde_json::{json, Value};
use tokio::sync::mpsc;

/// Shared server state.
#[derive(Clone)]
pub struct AppState {
    engine: Arc<KsqlEngine>,
    push: Arc<Mutex<HashMap<String, Arc<RunningQuery>>>>,
}

impl AppState {
    /// State over an engine.
    pub fn new(engine: Arc<KsqlEngine>) -> Self {
        Self { engine, push: Arc::new(Mutex::new(HashMap::new())) }
    }
}

/// The router with every endpoint.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/ksql", post(ksql))
        .route("/query", post(query))
        .route("/query-stream", post(query_stream))
        .route("/inserts-stream", post(inserts_stream))
        .route("/close-query", post(close_query))
        .route("/info", get(info))
        .route("/healthcheck", get(healthcheck))
        .with_state(state)
}

/// A ksqlDB error response.
pub struct ApiError {
    status: StatusCode,
    body: Value,
}

impl ApiError {
    fn generic(status: StatusCode, message: impl Into<String>) -> Self {
        let code = status.as_u16() as u64 * 100;
        Self { status, body: json!({"@type": "generic_error", "error_code": code, "message": message.into()}) }
    }

    fn statement(error: &SqlError, statement: &str, entities: Vec<Value>) -> Self {
        let (status, code) = match error {
            SqlError::Internal(_) | SqlError::Engine(_) | SqlError::Connector(_) => {
                (StatusCode::INTERNAL_SERVER_ERROR, 50000)
            }
            _ => (StatusCode::BAD_REQUEST, 40001),
        };
        Self {
            status,
            body: json!({
                "@type": "statement_error",
                "error_code": code,
                "message": error.to_string(),
                "statementText": statement,
                "entities": entities,
            }),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, [(header::CONTENT_TYPE, "application/json")], self.body.to_string()).into_response()
    }
}

fn parse_body(body: &Bytes) -> Result<Value, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::generic(StatusCode::BAD_REQUEST, format!("Invalid JSON in request: {e}")))
}

fn properties(v: Option<&Value>) -> Properties {
    let mut out = BTreeMap::new();
    if let Some(Value::Object(m)) = v {
        for (k, v) in m {
            let s = match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            out.insert(k.clone(), s);
        }
    }
    out
}

#[tracing::instrument(skip_all)]
async fn ksql(State(state): State<AppState>, body: Bytes) -> Result<Response, ApiError> {
    let req = parse_body(&body)?;
    let Some(sql) = req.get("ksql").and_then(Value::as_str).filter(|s| !s.trim().is_empty()) else {
        return Err(ApiError::generic(StatusCode::BAD_REQUEST, "\"ksql\" field must be populated"));
    };
    let props = properties(req.get("streamsProperties"));
    let results = match state.engine.execute(sql, &props).await {
        Ok(r) => r,
        Err((done, e)) => {
            let entities = done.into_iter().filter_map(|r| entities::entity(r, &state.engine)).collect();
            return Err(ApiError::statement(&e.error, &e.statement, entities));
        }
    };
    let mut entities = Vec::new();
    for r in results {
        match r {
            StatementResult::Push(p) => {
                p.handle.stop().await;
                return Err(ApiError {
                    status: StatusCode::BAD_REQUEST,
                    body: json!({
                        "@type": "statement_error",
                        "error_code": 40002,
                        "message": "The following statement types should be issued to the websocket endpoint '/query':\n\t* PRINT\n\t* SELECT",
                        "statementText": sql,
                        "entities": entities,
                    }),
                });
            }
            StatementResult::Print { .. } | StatementResult::Pull { .. } => {
                return Err(ApiError {
                    status: StatusCode::BAD_REQUEST,
                    body: json!({
                        "@type": "statement_error",
                        "error_code": 40002,
                        "message": "The following statement types should be issued to the websocket endpoint '/query':\n\t* PRINT\n\t* SELECT",
                        "statementText": sql,
                        "entities": entities,
                    }),
                });
            }
            other => {
                if let Some(e) = entities::entity(other, &state.engine) {
                    entities.push(e);
                }
            }
        }
    }
    Ok(([(header::CONTENT_TYPE, "application/json")], Value::Array(entities).to_string()).into_response())
}

/// Runs the single SELECT or PRINT of a /query or /query-stream request.
async fn start_query(state: &AppState, sql: &str, props: &Properties) -> Result<StatementResult, ApiError> {
    let mut results = match state.engine.execute(sql, props).await {
        Ok(r) => r,
        Err((_, e)) => {
            let mut err = ApiError::statement(&e.error, sql, vec![]);
            if let Some(m) = err.body.get_mut("message") {
                *m = Value::String(format!("{}\nStatement: {sql}", e.error));
            }
            return Err(err);
        }
    };
    match results.pop() {
        Some(r @ (StatementResult::Push(_) | StatementResult::Print { .. } | StatementResult::Pull { .. }))
            if results.is_empty() =>
        {
            Ok(r)
        }
        _ => Err(ApiError::generic(
            StatusCode::BAD_REQUEST,
            "The request must contain exactly one SELECT or PRINT statement",
        )),
    }
}

fn streaming(content_type: &'static str, rx: mpsc::Receiver<Bytes>) -> Response {
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx).map(Ok::<_, Infallible>);
    ([(header::CONTENT_TYPE, content_type)], Body::from_stream(stream)).into_response()
}

/// Forwards a push query's rows as `line(row)` until LIMIT, then `end(limit_reached)`.
fn pump(
    state: &AppState,
    mut p: PushQuery,
    tx: mpsc::Sender<Bytes>,
    row_line: impl Fn(&str, bool) -> Option<String> + Send + 'static,
    end: impl FnOnce(bool) -> Option<String> + Send + 'static,
) {
    let ncols = p.columns.len();
    let delete_column = p.delete_column;
    state.push.lock().insert(p.id.clone(), p.handle.clone());
    let push = state.push.clone();
    tokio::spawn(async move {
        let mut sent = 0u64;
        let mut limit_reached = p.limit == Some(0);
        'outer: while !limit_reached {
            tokio::select! {
                batch = p.rows.recv() => {
                    let Some(batch) = batch else { break };
                    let rows = match render::json_rows(&batch, ncols) {
                        Ok(r) => r,
                        Err(e) => { tracing::error!("rendering rows failed: {e}"); break }
                    };
                    let deletes = delete_column.map(|c| batch.column(c).as_boolean().clone());
                    for (i, r) in rows.into_iter().enumerate() {
                        let tombstone = deletes.as_ref().is_some_and(|d| d.value(i));
                        let Some(line) = row_line(&r, tombstone) else { continue };
                        if tx.send(Bytes::from(line)).await.is_err() {
                            break 'outer;
                        }
                        sent += 1;
                        if p.limit.is_some_and(|l| sent >= l) {
                            limit_reached = true;
                            break;
                        }
                    }
                }
                _ = tx.closed() => break,
            }
        }
        if let Some(last) = end(limit_reached) {
            let _ = tx.send(Bytes::from(last)).await;
        }
        p.handle.stop().await;
        push.lock().remove(&p.id);
    });
}

#[tracing::instrument(skip_all)]
async fn query(State(state): State<AppState>, body: Bytes) -> Result<Response, ApiError> {
    let req = parse_body(&body)?;
    let Some(sql) = req.get("ksql").and_then(Value::as_str) else {
        return Err(ApiError::generic(StatusCode::BAD_REQUEST, "\"ksql\" field must be populated"));
    };
    let props = properties(req.get("streamsProperties"));
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    match start_query(&state, sql, &props).await? {
        StatementResult::Push(p) => {
            let header = json!({"header": {"queryId": p.id, "schema": render::schema_string(&p.columns)}});
            let _ = tx.send(Bytes::from(format!("[{header},\n"))).await;
            pump(
                &state,
                p,
                tx,
                |row, tombstone| {
                    Some(if tombstone {
                        format!("{{\"row\":{{\"columns\":{row},\"tombstone\":true}}}},\n")
                    } else {
                        format!("{{\"row\":{{\"columns\":{row}}}}},\n")
                    })
                },
                |limit| limit.then(|| "{\"finalMessage\":\"Limit Reached\"}]".to_string()),
            );
        }
        StatementResult::Pull { id, columns, rows, is_table, limit_reached } => {
            // Table pull queries mark key columns and end without a final message; stream
            // pull queries end with "Query Completed" (or "Limit Reached"), as ksqlDB's do.
            let schema = columns
                .iter()
                .map(|c| format!("`{}` {}{}", c.name, c.sql_type, if is_table && c.key { " KEY" } else { "" }))
                .collect::<Vec<_>>()
                .join(", ");
            let mut elements = vec![json!({"header": {"queryId": id, "schema": schema}}).to_string()];
            for batch in &rows {
                let rendered = render::json_rows(batch, columns.len())
                    .map_err(|e| ApiError::generic(StatusCode::INTERNAL_SERVER_ERROR, e))?;
                elements.extend(rendered.into_iter().map(|r| format!("{{\"row\":{{\"columns\":{r}}}}}")));
            }
            if !is_table {
                let message = if limit_reached { "Limit Reached" } else { "Query Completed" };
                elements.push(format!("{{\"finalMessage\":\"{message}\"}}"));
            }
            let body = format!("[{}]", elements.join(",\n"));
            return Ok(([(header::CONTENT_TYPE, "application/vnd.ksql.v1+json")], body).into_response());
        }
        StatementResult::Print { mut rows, .. } => {
            tokio::spawn(async move {
                while let Some(line) = rows.recv().await {
                    if tx.send(Bytes::from(format!("{line}\n"))).await.is_err() {
                        break;
                    }
                }
            });
        }
        _ => unreachable_query(),
    }
    Ok(streaming("application/vnd.ksql.v1+json", rx))
}

fn unreachable_query() {
    tracing::error!("start_query returned a non-query result");
}

#[tracing::instrument(skip_all)]
async fn query_stream(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Result<Response, ApiError> {
    let req = parse_body(&body)?;
    let Some(sql) = req.get("sql").and_then(Value::as_str) else {
        return Err(ApiError::generic(StatusCode::BAD_REQUEST, "No sql in arguments"));
    };
    let props = properties(req.get("properties"));
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or("");
    let json_array = accept.contains("application/json");
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    let p = match start_query(&state, sql, &props).await? {
        StatementResult::Push(p) => p,
        StatementResult::Pull { id, columns, rows, .. } => {
            let meta = json!({
                "queryId": id,
                "columnNames": columns.iter().map(|c| c.name.clone()).collect::<Vec<_>>(),
                "columnTypes": columns.iter().map(|c| c.sql_type.to_string()).collect::<Vec<_>>(),
            });
            let mut lines = Vec::new();
            for batch in &rows {
                lines.extend(
                    render::json_rows(batch, columns.len())
                        .map_err(|e| ApiError::generic(StatusCode::INTERNAL_SERVER_ERROR, e))?,
                );
            }
            return Ok(if json_array {
                let mut all = vec![meta.to_string()];
                all.extend(lines);
                ([(header::CONTENT_TYPE, "application/json")], format!("[{}]", all.join(","))).into_response()
            } else {
                let mut body = format!("{meta}\n");
                for l in lines {
                    body.push_str(&l);
                    body.push('\n');
                }
                ([(header::CONTENT_TYPE, "application/vnd.ksqlapi.delimited.v1")], body).into_response()
            });
        }
        _ => return Err(ApiError::generic(StatusCode::BAD_REQUEST, "PRINT is only supported on /query")),
    };
    let meta = json!({
        "queryId": p.id,
        "columnNames": p.columns.iter().map(|c| c.name.clone()).collect::<Vec<_>>(),
        "columnTypes": p.columns.iter().map(|c| c.sql_type.to_string()).collect::<Vec<_>>(),
    });
    if json_array {
        let _ = tx.send(Bytes::from(format!("[{meta}"))).await;
        pump(&state, p, tx, |row, tombstone| (!tombstone).then(|| format!(",{row}")), |_| Some("]".to_string()));
        Ok(streaming("application/json", rx))
    } else {
        let _ = tx.send(Bytes::from(format!("{meta}\n"))).await;
        pump(&state, p, tx, |row, tombstone| (!tombstone).then(|| format!("{row}\n")), |_| None);
        Ok(streaming("application/vnd.ksqlapi.delimited.v1", rx))
    }
}

#[tracing::instrument(skip_all)]
async fn inserts_stream(State(state): State<AppState>, body: Body) -> Result<Response, ApiError> {
    // Lines: the target first, then one JSON object per row.
    let mut stream = body.into_data_stream();
    let mut buf: Vec<u8> = Vec::new();
    let mut target: Option<String> = None;
    let mut rows: Vec<Vec<u8>> = Vec::new();
    loop {
        let chunk = stream.next().await;
        let done = chunk.is_none();
        if let Some(c) = chunk {
            let c = c.map_err(|e| ApiError::generic(StatusCode::BAD_REQUEST, e.to_string()))?;
            buf.extend_from_slice(&c);
        }
        while let Some(i) =
            buf.iter().position(|b| *b == b'\n').or(if done && !buf.is_empty() { Some(buf.len()) } else { None })
        {
            let line: Vec<u8> = buf.drain(..i.min(buf.len())).collect();
            if !buf.is_empty() {
                buf.remove(0);
            }
            if line.iter().all(|b| b.is_ascii_whitespace()) {
                continue;
            }
            if target.is_none() {
                let v: Value = serde_json::from_slice(&line)
                    .map_err(|e| ApiError::generic(StatusCode::BAD_REQUEST, format!("Invalid JSON in request: {e}")))?;
                let t = v.get("target").and_then(Value::as_str).unwrap_or_default().to_uppercase();
                target = Some(t);
            } else {
                rows.push(line);
            }
        }
        if done {
            break;
        }
    }
    let target = target.ok_or_else(|| ApiError::generic(StatusCode::BAD_REQUEST, "No target in inserts stream"))?;
    let values: Vec<&[u8]> = rows.iter().map(|r| r.as_slice()).collect();
    let results = state
        .engine
        .insert_json(&target, &values)
        .await
        .map_err(|e| ApiError::statement(&e, &format!("INSERT INTO {target}"), vec![]))?;
    let mut out = String::new();
    for (seq, r) in results.into_iter().enumerate() {
        match r {
            Ok(()) => out.push_str(&json!({"status": "ok", "seq": seq}).to_string()),
            Err(e) => {
                out.push_str(&json!({"@type": "generic_error", "error_code": 40000, "message": e, "status": "error", "seq": seq}).to_string());
                out.push('\n');
                break;
            }
        }
        out.push('\n');
    }
    Ok(([(header::CONTENT_TYPE, "application/vnd.ksqlapi.delimited.v1")], out).into_response())
}

#[tracing::instrument(skip_all)]
async fn close_query(State(state): State<AppState>, body: Bytes) -> Result<Response, ApiError> {
    let req = parse_body(&body)?;
    let id = req.get("queryId").and_then(Value::as_str).unwrap_or_default().to_string();
    let handle = state.push.lock().remove(&id);
    match handle {
        Some(h) => {
            h.stop().await;
            Ok(StatusCode::OK.into_response())
        }
        None => Err(ApiError::generic(StatusCode::BAD_REQUEST, format!("No query with id {id}"))),
    }
}

async fn info() -> Response {
    let body = json!({"KsqlServerInfo": {
        "version": env!("CARGO_PKG_VERSION"),
        "kafkaClusterId": "rill-embedded",
        "ksqlServiceId": "rill_",
        "serverStatus": "RUNNING",
    }});
    ([(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

async fn healthcheck() -> Response {
    let body = json!({"isHealthy": true, "details": {
        "metastore": {"isHealthy": true},
        "kafka": {"isHealthy": true},
        "commandRunner": {"isHealthy": true},
    }});
    ([(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}
