//! Executing statements.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use arrow::array::{ArrayRef, AsArray, Int64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema};
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion::sql::parser::Statement as DfStatement;
use rill_connectors::format::{self, Format, FormatKind, ProtobufNullable};
use rill_connectors::store::{CleanupPolicy, Record, TopicConfig, TopicStore};
use rill_engine::commit::CheckpointSpec;
use rill_engine::operators::WindowKind;
use rill_engine::runtime::{self, Output, QuerySpec, RunningQuery, StartFrom};
use rill_engine::sink::{Sink, SinkSpec, WindowKey};
use sqlparser::ast as sp;
use tokio::sync::{mpsc, Mutex};

use crate::ast::*;
use crate::catalog::{Catalog, Column, QueryDef, SourceDef};
use crate::error::{Result, SqlError};
use crate::parser;
use crate::planner::{self, QueryPlan};
use crate::results::*;
use crate::types::SqlType;

/// The internal topic holding every accepted statement, replayed at start.
pub const COMMAND_TOPIC: &str = "_rill_commands";

/// Session properties (`SET`, REST `streamsProperties`).
pub type Properties = BTreeMap<String, String>;

#[derive(serde::Serialize, serde::Deserialize)]
struct Command {
    statement: String,
    #[serde(default)]
    properties: Properties,
}

/// A failed statement: which one, and why.
#[derive(Debug)]
pub struct StatementError {
    /// The statement's text (the whole request when it did not parse).
    pub statement: String,
    /// Why.
    pub error: SqlError,
}

/// Executes statements against a topic store.
pub struct KsqlEngine {
    store: Arc<dyn TopicStore>,
    /// Where persistent queries keep their checkpoints (`<dir>/checkpoints/<query id>`).
    state_dir: PathBuf,
    /// Queries created while replaying the command topic: started once the replay is over, so
    /// that a query replaced or terminated later in the log never runs.
    pending: parking_lot::Mutex<Vec<QuerySpec>>,
    /// Materialised views of tables for pull queries, by table name.
    views: parking_lot::Mutex<std::collections::HashMap<String, crate::view::TableView>>,
    /// Push queries still running (held by their clients; dropped ones are pruned).
    push: parking_lot::Mutex<Vec<std::sync::Weak<RunningQuery>>>,
    ctx: SessionContext,
    catalog: Mutex<Catalog>,
}

impl KsqlEngine {
    /// Opens an engine over `store`, keeping query checkpoints under `state_dir`, and replays
    /// the command topic (queries recover from their checkpoints).
    pub async fn open(store: Arc<dyn TopicStore>, state_dir: PathBuf) -> Result<Arc<Self>> {
        let config = SessionConfig::new().set_bool("datafusion.sql_parser.enable_ident_normalization", false);
        let ctx = SessionContext::new_with_config(config);
        crate::functions::register(&ctx)?;
        store.create_topic(COMMAND_TOPIC, TopicConfig { partitions: 1, ..TopicConfig::default() })?;
        let engine = Arc::new(Self {
            store,
            state_dir,
            pending: parking_lot::Mutex::new(Vec::new()),
            views: parking_lot::Mutex::new(std::collections::HashMap::new()),
            push: parking_lot::Mutex::new(Vec::new()),
            ctx,
            catalog: Mutex::new(Catalog::default()),
        });
        engine.replay().await?;
        Ok(engine)
    }

    /// The topic store.
    pub fn store(&self) -> &Arc<dyn TopicStore> {
        &self.store
    }

    async fn replay(&self) -> Result<()> {
        let mut offset = self.store.start_offset(COMMAND_TOPIC, 0)?;
        let end = self.store.end_offset(COMMAND_TOPIC, 0)?;
        let mut commands = Vec::new();
        while offset < end {
            let fetch = self.store.read(COMMAND_TOPIC, 0, offset, 1 << 20)?;
            for r in fetch.records() {
                let cmd: Command = match r.value.map(serde_json::from_slice) {
                    Some(Ok(c)) => c,
                    _ => {
                        tracing::warn!(offset = r.offset, "skipping unreadable command");
                        continue;
                    }
                };
                commands.push((r.offset, cmd));
            }
            if fetch.next_offset() <= offset {
                break;
            }
            offset = fetch.next_offset();
        }
        let mut catalog = self.catalog.lock().await;
        for (seq, cmd) in commands {
            let parsed = match parser::parse(&cmd.statement) {
                Ok(p) => p,
                Err(e) => {
                    tracing::error!(seq, "command no longer parses: {e}");
                    continue;
                }
            };
            for p in parsed {
                if let Err(e) = self.execute_one(&mut catalog, p, &mut cmd.properties.clone(), Some(seq)).await {
                    tracing::error!(seq, statement = %cmd.statement, "replaying command failed: {e}");
                }
            }
        }
        // Start the queries that survived the replay; each recovers from its checkpoint.
        let pending = std::mem::take(&mut *self.pending.lock());
        for spec in pending {
            let Some(q) = catalog.queries.get_mut(&spec.id) else { continue };
            let id = spec.id.clone();
            match runtime::start(self.store.clone(), spec) {
                Ok(running) => {
                    q.running = Arc::new(running);
                    self.pin_positions(&id, &q.running)?;
                }
                Err(e) => tracing::error!(query = %id, "restarting the query failed: {e}"),
            }
        }
        Ok(())
    }

    /// Commits a query's start positions so that a restart resumes exactly there even if
    /// nothing was read yet.
    fn pin_positions(&self, id: &str, running: &RunningQuery) -> Result<()> {
        let positions = running.stats.positions.lock().clone();
        let offsets: Vec<(String, u32, u64)> = positions
            .iter()
            .zip(&running.topics)
            .flat_map(|(parts, topic)| parts.iter().enumerate().map(move |(p, o)| (topic.clone(), p as u32, *o)))
            .collect();
        self.store.commit_offsets(&format!("rill-query-{id}"), &offsets)?;
        Ok(())
    }

    /// Executes `sql` (one or more statements). Stops at the first failing statement.
    pub async fn execute(
        &self,
        sql: &str,
        properties: &Properties,
    ) -> std::result::Result<Vec<StatementResult>, (Vec<StatementResult>, StatementError)> {
        let parsed = parser::parse(sql)
            .map_err(|error| (vec![], StatementError { statement: sql.trim().to_string(), error }))?;
        let mut props = properties.clone();
        let mut results = Vec::new();
        for p in parsed {
            let text = p.text.clone();
            let mut catalog = self.catalog.lock().await;
            match self.execute_one(&mut catalog, p, &mut props, None).await {
                Ok(r) => results.push(r),
                Err(error) => return Err((results, StatementError { statement: text, error })),
            }
        }
        Ok(results)
    }

    /// Stops every query (graceful shutdown: offsets are committed).
    pub async fn shutdown(&self) {
        let catalog = self.catalog.lock().await;
        for q in catalog.queries.values() {
            q.running.stop().await;
        }
    }

    /// Every running query: persistent ones, then push queries.
    async fn running(&self) -> Vec<Arc<RunningQuery>> {
        let mut queries: Vec<Arc<RunningQuery>> =
            self.catalog.lock().await.queries.values().map(|q| q.running.clone()).collect();
        let mut push = self.push.lock();
        push.retain(|q| q.strong_count() > 0);
        queries.extend(push.iter().filter_map(std::sync::Weak::upgrade));
        queries
    }

    /// Waits until every query, persistent or push, has read its sources to the end (or failed).
    pub async fn wait_until_idle(&self) {
        loop {
            let queries = self.running().await;
            if queries.iter().all(|q| q.caught_up(self.store.as_ref())) {
                // A query's output may be another's input: check again after all settled.
                let again = self.running().await;
                if again.iter().all(|q| q.caught_up(self.store.as_ref())) {
                    return;
                }
            }
            let notified: Vec<_> = queries.iter().map(|q| q.stats.clone()).collect();
            let waits = notified.iter().map(|s| Box::pin(s.progress.notified()));
            let any = futures::future::select_all(waits);
            // The timeout only guards against a missed wake-up between the check and the wait.
            let _ = tokio::time::timeout(std::time::Duration::from_millis(5), any).await;
        }
    }

    /// Approximate bytes of operator state over every persistent query.
    pub async fn state_bytes(&self) -> u64 {
        self.catalog.lock().await.queries.values().map(|q| q.running.stats.state_bytes.load(Ordering::Relaxed)).sum()
    }

    /// A source definition by name.
    pub async fn source(&self, name: &str) -> Option<SourceDef> {
        self.catalog.lock().await.sources.get(name).cloned()
    }

    /// All sources.
    pub async fn sources(&self) -> Vec<SourceDef> {
        self.catalog.lock().await.sources.values().cloned().collect()
    }

    async fn execute_one(
        &self,
        catalog: &mut Catalog,
        p: ParsedStatement,
        props: &mut Properties,
        replay: Option<u64>,
    ) -> Result<StatementResult> {
        // Custom type names resolve as the statement runs: an earlier statement of the same
        // request (or command topic) may have registered them.
        let p = match p.custom_types {
            true => parser::parse_with_types(&p.text, &catalog.types)?.into_iter().next().unwrap_or(p),
            false => p,
        };
        let text = p.text.clone();
        let mut statement = p.statement;
        if let Statement::CreateSource { query: Some(q), .. }
        | Statement::InsertSelect { query: q, .. }
        | Statement::Select(q) = &mut statement
        {
            crate::udafs::collection_limits(&mut q.query, props);
        }
        match statement {
            Statement::CreateSource {
                or_replace,
                kind,
                read_only,
                if_not_exists,
                name,
                columns,
                props: with,
                query,
            } => {
                if or_replace && (read_only || catalog.sources.get(&name).is_some_and(|e| e.read_only)) {
                    return Err(SqlError::plan(format!(
                        "Cannot add {} '{name}': CREATE OR REPLACE is not supported on source {}s.",
                        kind.name().to_lowercase(),
                        kind.name().to_lowercase()
                    )));
                }
                if let Some(existing) = catalog.sources.get(&name) {
                    if if_not_exists {
                        return Ok(self.status(
                            &text,
                            format!(
                                "Cannot add {} '{}': A {} with the same name already exists",
                                kind.name().to_lowercase(),
                                name,
                                existing.kind.name().to_lowercase()
                            ),
                            None,
                        ));
                    }
                    if !or_replace {
                        return Err(SqlError::AlreadyExists(format!(
                            "Cannot add {} '{}': A {} with the same name already exists",
                            kind.name().to_lowercase(),
                            name,
                            existing.kind.name().to_lowercase()
                        )));
                    }
                }
                match query {
                    None => {
                        let def = self.define_source(kind, read_only, &name, columns, &with, &text, props)?;
                        let sequence = self.record(&text, props, replay)?;
                        catalog.sources.insert(name, def);
                        Ok(StatementResult::CommandStatus {
                            statement: text,
                            message: format!("{} created", if kind == SourceKind::Stream { "Stream" } else { "Table" }),
                            query_id: None,
                            sequence,
                        })
                    }
                    Some(select) => {
                        self.create_as_select(catalog, kind, &name, &with, *select, &text, props, replay, or_replace)
                            .await
                    }
                }
            }
            Statement::InsertSelect { target, target_at, query } => {
                let Some(sink) = catalog.sources.get(&target).cloned() else {
                    let place = target_at.prefix();
                    return Err(SqlError::NotFound(format!("{place}Source `{target}` does not exist.")));
                };
                if sink.kind == SourceKind::Table {
                    return Err(SqlError::plan(format!(
                        "INSERT INTO can only be used to insert into a stream. {target} is a table."
                    )));
                }
                if sink.read_only {
                    return Err(SqlError::plan(format!("Cannot insert into read-only stream: {target}")));
                }
                if sink.has_header_columns() {
                    return Err(SqlError::plan(format!("Cannot insert into {target} because it has header columns")));
                }
                let query = literals_as_sink_decimals(*query, &sink);
                let plan = planner::plan_select(&self.ctx, catalog, &query).await?;
                check_insert_schema(&plan, &sink)?;
                let sequence = self.peek_sequence(replay)?;
                let id = format!("INSERTQUERY_{sequence}");
                self.start_persistent(catalog, &id, plan, &sink, &text, props, replay)?;
                self.record(&text, props, replay)?;
                Ok(StatementResult::CommandStatus {
                    statement: text,
                    message: format!("Created query with ID {id}"),
                    query_id: Some(id),
                    sequence,
                })
            }
            Statement::InsertValues { target, columns, values } => {
                let Some(sink) = catalog.sources.get(&target).cloned() else {
                    return Err(unknown_insert_target(catalog, &target));
                };
                self.insert_values(&sink, columns, values).await?;
                Ok(StatementResult::Nothing)
            }
            Statement::Select(select) => {
                if select.emit.is_none() {
                    return self.pull(catalog, &select, props).await;
                }
                let plan = planner::plan_push(&self.ctx, catalog, &select).await?;
                let start = start_from(props, StartFrom::Latest);
                let (tx, rx) = mpsc::channel(16);
                let id = if is_scalable_push(&plan, props) {
                    format!("SCALABLE_PUSH_QUERY_{}", rand_suffix())
                } else {
                    format!("transient_{}_{}", plan.source.name, rand_suffix())
                };
                let columns = plan.columns.clone();
                let delete_column = plan.delete_column;
                let spec = QuerySpec {
                    id: id.clone(),
                    source: reader_spec(&plan),
                    chain: plan.chain.clone(),
                    stage: plan.stage.clone(),
                    shard_keys: plan.shard_keys.clone(),
                    parallelism: parallelism(props)?,
                    side_inputs: side_inputs(&plan),
                    output: Output::Channel(tx),
                    start,
                    commit_group: None,
                    checkpoint: None,
                };
                let handle = Arc::new(runtime::start(self.store.clone(), spec)?);
                self.push.lock().push(Arc::downgrade(&handle));
                Ok(StatementResult::Push(PushQuery {
                    id,
                    columns,
                    rows: rx,
                    limit: select.limit,
                    handle,
                    delete_column,
                }))
            }
            Statement::Show { what, .. } => Ok(match what {
                ShowWhat::Streams | ShowWhat::Tables => {
                    let kind = if what == ShowWhat::Streams { SourceKind::Stream } else { SourceKind::Table };
                    let sources =
                        catalog.sources.values().filter(|s| s.kind == kind).map(|s| self.info(catalog, s)).collect();
                    StatementResult::Sources { statement: text, kind: kind.name(), sources }
                }
                ShowWhat::Topics => StatementResult::Topics {
                    statement: text,
                    topics: self
                        .store
                        .topic_names()
                        .into_iter()
                        .filter(|t| !t.starts_with('_'))
                        .map(|t| TopicInfo {
                            partitions: self.store.topic_config(&t).map(|c| c.partitions).unwrap_or(0),
                            name: t,
                        })
                        .collect(),
                },
                ShowWhat::Queries => StatementResult::Queries {
                    statement: text,
                    queries: catalog.queries.values().map(query_info).collect(),
                },
                ShowWhat::Properties => StatementResult::Properties {
                    statement: text,
                    properties: props.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
                },
                ShowWhat::Types => StatementResult::Types {
                    statement: text,
                    types: catalog.types.iter().map(|(n, t)| (n.clone(), t.clone())).collect(),
                },
            }),
            Statement::CreateType { if_not_exists, name, sql_type } => {
                if let Some(existing) = catalog.types.get(&name) {
                    let message = format!(
                        "Cannot register custom type '{name}' since it is already registered with type: {existing}"
                    );
                    return match if_not_exists {
                        true => Ok(self.status(&text, message, None)),
                        false => Err(SqlError::AlreadyExists(message)),
                    };
                }
                let sequence = self.record(&text, props, replay)?;
                let message = format!("Registered custom type with name '{name}' and SQL type {sql_type}");
                catalog.types.insert(name, sql_type);
                Ok(StatementResult::CommandStatus { statement: text, message, query_id: None, sequence })
            }
            Statement::DropType { if_exists, name } => {
                if !catalog.types.contains_key(&name) {
                    let message = format!("Type {name} does not exist.");
                    return match if_exists {
                        true => Ok(self.status(&text, message, None)),
                        false => Err(SqlError::NotFound(message)),
                    };
                }
                let sequence = self.record(&text, props, replay)?;
                catalog.types.remove(&name);
                let message = format!("Dropped type '{name}'");
                Ok(StatementResult::CommandStatus { statement: text, message, query_id: None, sequence })
            }
            Statement::Describe { name, extended } => {
                let Some(s) = catalog.sources.get(&name) else {
                    return Err(SqlError::NotFound(format!("Could not find STREAM/TABLE '{name}' in the Metastore")));
                };
                Ok(StatementResult::Description { statement: text, source: Box::new(self.info(catalog, s)), extended })
            }
            Statement::DescribeAll { kind, .. } => {
                let sources =
                    catalog.sources.values().filter(|s| s.kind == kind).map(|s| self.info(catalog, s)).collect();
                Ok(StatementResult::Sources { statement: text, kind: kind.name(), sources })
            }
            Statement::Drop { kind, if_exists, name, delete_topic } => {
                let Some(source) = catalog.sources.get(&name).cloned() else {
                    if if_exists {
                        return Ok(self.status(&text, format!("Source `{name}` does not exist."), None));
                    }
                    let kind = match kind {
                        SourceKind::Stream => "Stream",
                        SourceKind::Table => "Table",
                    };
                    return Err(SqlError::NotFound(format!("{kind} {name} does not exist.")));
                };
                if delete_topic && source.read_only {
                    return Err(SqlError::plan(format!("Cannot delete topic for read-only source: {name}")));
                }
                if source.kind != kind {
                    return Err(SqlError::plan(format!(
                        "Incompatible data source type is {}, but statement was DROP {}",
                        source.kind.name(),
                        kind.name()
                    )));
                }
                let readers: Vec<String> =
                    catalog.queries.values().filter(|q| q.sources.contains(&name)).map(|q| q.id.clone()).collect();
                let writers: Vec<String> =
                    catalog.queries.values().filter(|q| q.sink == name).map(|q| q.id.clone()).collect();
                if !readers.is_empty() || !writers.is_empty() {
                    return Err(SqlError::plan(format!(
                        "Cannot drop {name}.\nThe following queries read from this source: [{}].\nThe following queries write into this source: [{}].\nYou need to terminate them before dropping {name}.",
                        readers.join(", "),
                        writers.join(", ")
                    )));
                }
                let sequence = self.record(&text, props, replay)?;
                catalog.sources.remove(&name);
                if delete_topic {
                    let _ = self.store.delete_topic(&source.topic);
                }
                Ok(StatementResult::CommandStatus {
                    statement: text,
                    message: format!("Source `{name}` (topic: {}) was dropped.", source.topic),
                    query_id: None,
                    sequence,
                })
            }
            Statement::Alter { kind, name, columns } => {
                let Some(source) = catalog.sources.get(&name).cloned() else {
                    return Err(SqlError::NotFound(format!("Source {name} does not exist.")));
                };
                let what = source.kind.name().to_lowercase();
                if source.read_only {
                    return Err(SqlError::plan(format!(
                        "Cannot alter {what} '{name}': ALTER operations are not supported on source {what}s."
                    )));
                }
                if source.kind != kind {
                    return Err(SqlError::plan(format!(
                        "Incompatible data source type is {}, but statement was ALTER {}",
                        source.kind.name(),
                        kind.name()
                    )));
                }
                let created_by_query = crate::parser::parse(&source.statement)
                    .ok()
                    .and_then(|s| s.into_iter().next())
                    .is_some_and(|s| matches!(s.statement, Statement::CreateSource { query: Some(_), .. }));
                if created_by_query {
                    return Err(SqlError::plan("ALTER command is not supported for CREATE ... AS statements."));
                }
                let mut altered = source;
                for (column, sql_type) in columns {
                    if altered.columns.iter().any(|c| c.name == column) {
                        return Err(SqlError::plan(format!(
                            "Cannot add column `{column}` to schema. A column with the same name already exists."
                        )));
                    }
                    // Value columns come before header columns.
                    let at = altered.columns.iter().position(|c| c.header.is_some()).unwrap_or(altered.columns.len());
                    altered.columns.insert(at, Column { name: column, sql_type, key: false, header: None });
                }
                let sequence = self.record(&text, props, replay)?;
                catalog.sources.insert(name.clone(), altered);
                Ok(StatementResult::CommandStatus {
                    statement: text,
                    message: format!("{} {name} altered.", if kind == SourceKind::Stream { "Stream" } else { "Table" }),
                    query_id: None,
                    sequence,
                })
            }
            Statement::Terminate { id } => {
                let ids: Vec<String> = match &id {
                    Some(id) => {
                        if !catalog.queries.contains_key(id) {
                            return Err(SqlError::NotFound(format!("Unknown queryId: {id}")));
                        }
                        vec![id.clone()]
                    }
                    None => catalog.queries.keys().cloned().collect(),
                };
                let sequence = self.record(&text, props, replay)?;
                for id in &ids {
                    if let Some(q) = catalog.queries.remove(id) {
                        q.running.stop().await;
                        self.pending.lock().retain(|spec| &spec.id != id);
                        runtime::remove_checkpoints(&self.checkpoint_dir(id))?;
                        let internal = rill_engine::repartition::internal_prefix(id);
                        for topic in self.store.topic_names().into_iter().filter(|t| t.starts_with(&internal)) {
                            self.store.delete_topic(&topic)?;
                        }
                        if let Some(s) = catalog.sources.get_mut(&q.sink) {
                            s.written_by.retain(|w| w != id);
                        }
                    }
                }
                Ok(StatementResult::CommandStatus {
                    statement: text,
                    message: "Query terminated.".into(),
                    query_id: None,
                    sequence,
                })
            }
            Statement::Print { topic, from_beginning, limit } => self.print(&topic, from_beginning, limit),
            Statement::Set { name, value } => {
                props.insert(name, value);
                Ok(StatementResult::Nothing)
            }
            Statement::Unset { name } => {
                props.remove(&name);
                Ok(StatementResult::Nothing)
            }
            Statement::Explain { target } => match target {
                ExplainTarget::Query(id) => {
                    let q = catalog.queries.get(&id).ok_or_else(|| SqlError::NotFound(format!("Query with id:{id} does not exist, use SHOW QUERIES to view the full set of running queries.")))?;
                    Ok(StatementResult::QueryDescription {
                        statement: text,
                        id: Some(q.id.clone()),
                        query_text: q.statement.clone(),
                        plan: q.plan.clone(),
                        sources: q.sources.clone(),
                        sinks: vec![q.sink.clone()],
                        state: if q.running.failed() { "ERROR" } else { "RUNNING" },
                    })
                }
                ExplainTarget::Statement(statement) => {
                    let (select, sink) = match *statement {
                        Statement::CreateSource { query: Some(q), name, .. } => (q, Some(name)),
                        Statement::InsertSelect { query, target, .. } => (query, Some(target)),
                        Statement::Select(q) => (q, None),
                        _ => return Err(SqlError::plan("EXPLAIN works on queries: CREATE ... AS SELECT, INSERT INTO ... SELECT, SELECT, or a query id")),
                    };
                    let plan = planner::plan_select(&self.ctx, catalog, &select).await?;
                    Ok(StatementResult::QueryDescription {
                        statement: text.clone(),
                        id: None,
                        query_text: text.trim_start_matches(|c: char| c.is_alphabetic() && c != ' ').trim().to_string(),
                        plan: explain(&plan, sink.as_deref(), None)?,
                        sources: vec![plan.source.name.clone()],
                        sinks: sink.into_iter().collect(),
                        state: "NOT RUNNING",
                    })
                }
            },
        }
    }

    /// A pull query: the current rows of a table (latest value per key) or of a stream (every
    /// record), queried with DataFusion.
    async fn pull(&self, catalog: &Catalog, select: &Select, props: &Properties) -> Result<StatementResult> {
        let sp::SetExpr::Select(body) = select.query.body.as_ref() else {
            return Err(SqlError::Unsupported("Only simple SELECT statements are supported".into()));
        };
        let name = match body.from.first().map(|f| &f.relation) {
            Some(sp::TableFactor::Table { name, .. }) => {
                name.0.last().and_then(|p| p.as_ident()).map(|i| i.value.clone()).unwrap_or_default()
            }
            _ => return Err(SqlError::plan("A pull query reads FROM one table")),
        };
        let source =
            catalog.sources.get(&name).cloned().ok_or_else(|| SqlError::NotFound(format!("{name} does not exist.")))?;
        // ksqlDB checks the result's schema first (a table that is not queryable comes after).
        if let Some(e) = planner::duplicate_column_error(&self.ctx, catalog, select, false).await {
            return Err(e);
        }
        crate::pull::check(body, select.limit, &source, props)?;
        let rows = match source.kind {
            SourceKind::Table => self.view_rows(&source, body.selection.as_ref())?,
            SourceKind::Stream => self.stream_rows(&source)?,
        };
        let (columns, batches) = planner::run_pull(&self.ctx, &source, select, rows).await?;
        let returned: usize = batches.iter().map(|b| b.num_rows()).sum();
        Ok(StatementResult::Pull {
            id: format!("query_{}", now_ms()),
            columns,
            rows: batches,
            is_table: source.kind == SourceKind::Table,
            limit_reached: select.limit.is_some_and(|l| returned as u64 >= l),
        })
    }

    /// The current rows of a table from its materialised view (brought up to date first): only
    /// the keys a WHERE clause pins to literals, or every row.
    fn view_rows(&self, source: &SourceDef, selection: Option<&sp::Expr>) -> Result<RecordBatch> {
        let mut views = self.views.lock();
        let fresh = |s: &SourceDef| crate::view::TableView::try_new(s, self.store.as_ref());
        let mut view = match views.remove(&source.name) {
            Some(v) if v.describes(source) => v,
            _ => fresh(source)?,
        };
        if view.catch_up(self.store.as_ref()).is_err() {
            view = fresh(source)?;
            view.catch_up(self.store.as_ref())?;
        }
        let key = source.key_columns().next().map(|c| c.name.clone()).unwrap_or_default();
        let keys = view.key_literals(selection, &key);
        let rows = view.rows(keys.as_deref());
        views.insert(source.name.clone(), view);
        rows
    }

    /// Every row of a stream now (tombstones left out). Tables are served by their view.
    fn stream_rows(&self, source: &SourceDef) -> Result<RecordBatch> {
        let spec = source.source_spec();
        let schema = spec.row_schema();
        let mut batches = Vec::new();
        for p in 0..self.store.topic_config(&source.topic)?.partitions {
            let mut reader = rill_engine::source::SourceReader::try_new(spec.clone(), p, self.store.schema_registry())?;
            let mut offset = self.store.start_offset(&source.topic, p)?;
            let end = self.store.end_offset(&source.topic, p)?;
            while offset < end {
                let fetch = self.store.read(&source.topic, p, offset, 4 << 20)?;
                if fetch.next_offset() <= offset {
                    break;
                }
                let read = reader.read(&fetch)?;
                offset = read.next_offset;
                batches.extend(read.batch);
            }
        }
        let all = arrow::compute::concat_batches(&schema, &batches)?;
        let delete = schema.index_of(rill_engine::source::DELETE).map_err(|e| SqlError::Internal(e.to_string()))?;
        let live = arrow::compute::not(all.column(delete).as_boolean())?;
        Ok(arrow::compute::filter_record_batch(&all, &live)?)
    }

    fn status(&self, text: &str, message: String, query_id: Option<String>) -> StatementResult {
        let sequence = self.store.end_offset(COMMAND_TOPIC, 0).unwrap_or(0);
        StatementResult::CommandStatus { statement: text.to_string(), message, query_id, sequence }
    }

    /// The sequence number the next recorded command will get.
    fn peek_sequence(&self, replay: Option<u64>) -> Result<u64> {
        match replay {
            Some(s) => Ok(s),
            None => Ok(self.store.end_offset(COMMAND_TOPIC, 0)?),
        }
    }

    /// Appends an accepted statement to the command topic (unless replaying it).
    fn record(&self, text: &str, props: &Properties, replay: Option<u64>) -> Result<u64> {
        if let Some(seq) = replay {
            return Ok(seq);
        }
        let cmd = Command { statement: text.to_string(), properties: props.clone() };
        let value = serde_json::to_vec(&cmd).map_err(|e| SqlError::Internal(e.to_string()))?;
        let record = Record { timestamp: now_ms(), key: None, value: Some(value.into()), headers: vec![] };
        let store = self.store.clone();
        // Appends are async; the catalog lock is held by the caller, so block in place.
        let info = tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(store.append(COMMAND_TOPIC, 0, &[record]))
        })?;
        Ok(info.base_offset)
    }

    #[allow(clippy::too_many_arguments)]
    fn define_source(
        &self,
        kind: SourceKind,
        read_only: bool,
        name: &str,
        columns: Vec<ColumnDef>,
        with: &Props,
        text: &str,
        props: &Properties,
    ) -> Result<SourceDef> {
        let topic = with.get("KAFKA_TOPIC").map(|v| v.as_text()).ok_or_else(|| {
            SqlError::plan(format!("Missing required property \"KAFKA_TOPIC\" for \"CREATE {}\"", kind.name()))
        })?;
        let (key_format, mut value_format) = formats(with, None, props)?;
        let mut columns = columns;
        for (prop, format, key) in [("KEY_SCHEMA_ID", &key_format, true), ("VALUE_SCHEMA_ID", &value_format, false)] {
            if !with.contains_key(prop) {
                continue;
            }
            let side = if key { "KEY" } else { "VALUE" };
            if !format.kind.uses_registry() {
                return Err(SqlError::plan(format!(
                    "{side}_FORMAT should support schema inference when {prop} is provided. Current format is {}.",
                    format.kind.name()
                )));
            }
            if columns.iter().any(|c| c.key == key && c.header.is_none()) {
                return Err(SqlError::plan(format!(
                    "Table elements and {prop} cannot both exist for create statement."
                )));
            }
        }
        // AVRO sources declared without value (or key) columns take them from the latest schema
        // registered for the topic, as ksqlDB does.
        if value_format.kind.uses_registry() && !columns.iter().any(|c| !c.key && c.header.is_none()) {
            let whole = matches!(with.get("WRAP_SINGLE_VALUE"), Some(PropValue::Bool(false)));
            let id = schema_id(with, "VALUE_SCHEMA_ID")?;
            let (inferred, single) = self.inferred_columns(&topic, false, whole, id, &value_format)?;
            if single {
                value_format.wrap_single_value = false;
            }
            columns.extend(inferred);
        }
        if key_format.kind.uses_registry() && !columns.iter().any(|c| c.key) {
            let subject = rill_connectors::registry::subject(&topic, true);
            let id = schema_id(with, "KEY_SCHEMA_ID")?;
            if id.is_some() || self.store.schema_registry().latest(&subject)?.is_some() {
                // A key is one column (ROWKEY), a record key a STRUCT: keys are unwrapped.
                let (mut inferred, _) = self.inferred_columns(&topic, true, true, id, &key_format)?;
                for c in &mut inferred {
                    c.primary_key = kind == SourceKind::Table;
                }
                columns.splice(0..0, inferred);
            }
        }
        if columns.is_empty() {
            return Err(SqlError::plan("No columns supplied."));
        }
        let mut seen = std::collections::HashSet::new();
        let headers_type = SqlType::Array(Box::new(SqlType::Struct(vec![
            ("KEY".into(), SqlType::String),
            ("VALUE".into(), SqlType::Bytes),
        ])));
        for c in &columns {
            if !seen.insert(c.name.clone()) {
                return Err(SqlError::plan(format!("Duplicate column names: {}", c.name)));
            }
            if ["ROWPARTITION", "ROWOFFSET"].contains(&c.name.as_str()) {
                return Err(SqlError::plan(format!(
                    "'{}' is a reserved column name. You cannot use it as a name for a column.",
                    c.name
                )));
            }
            if kind == SourceKind::Stream && c.primary_key {
                return Err(SqlError::plan(format!(
                    "Line: {}, Col: {}: Column `{}` is a 'PRIMARY KEY' column: please use 'KEY' for streams.\nTables have PRIMARY KEYs, which are unique and NON NULL.\nStreams have KEYs, which have no uniqueness or NULL constraints.",
                    c.position.line, c.position.column, c.name
                )));
            }
            if kind == SourceKind::Table && c.key && !c.primary_key {
                return Err(SqlError::plan(format!(
                    "Line: {}, Col: {}: Column `{}` is a 'KEY' column: please use 'PRIMARY KEY' for tables.\nTables have PRIMARY KEYs, which are unique and NON NULL.\nStreams have KEYs, which have no uniqueness or NULL constraints.",
                    c.position.line, c.position.column, c.name
                )));
            }
            match &c.header {
                Some(None) if c.sql_type != headers_type => {
                    return Err(SqlError::plan(format!(
                        "Invalid type for HEADERS column: expected {headers_type}, got {}",
                        c.sql_type
                    )));
                }
                Some(Some(key)) if c.sql_type != SqlType::Bytes => {
                    return Err(SqlError::plan(format!(
                        "Invalid type for HEADER('{key}') column: expected BYTES, got {}",
                        c.sql_type
                    )));
                }
                Some(_) if c.key => {
                    return Err(SqlError::plan(format!("Header column {} cannot be a key column", c.name)));
                }
                _ => {}
            }
        }
        if kind == SourceKind::Table && !columns.iter().any(|c| c.key) {
            return Err(SqlError::plan("Tables require a PRIMARY KEY. Please define the PRIMARY KEY."));
        }
        let cols: Vec<Column> = columns
            .iter()
            .filter(|c| c.key)
            .chain(columns.iter().filter(|c| !c.key && c.header.is_none()))
            .chain(columns.iter().filter(|c| c.header.is_some()))
            .map(|c| Column {
                name: c.name.clone(),
                sql_type: c.sql_type.clone(),
                key: c.key,
                header: c.header.clone(),
            })
            .collect();
        check_columns(&cols, with, &value_format)?;
        let timestamp = check_timestamp(&cols, with)?;
        let window = declared_window(with)?;
        if window.is_some() && !cols.iter().any(|c| c.key) {
            return Err(SqlError::plan("Windowed sources require a key column."));
        }
        let mut def = SourceDef {
            name: name.to_string(),
            kind,
            read_only,
            columns: cols,
            topic: topic.clone(),
            key_format,
            value_format,
            timestamp,
            timestamp_format: with.get("TIMESTAMP_FORMAT").map(|v| v.as_text()),
            partitions: 1,
            statement: text.to_string(),
            written_by: vec![],
            window,
        };
        wrap_config(&mut def, with, props);
        check_formats(&def)?;
        let partitions = self.ensure_topic(&topic, with.get("PARTITIONS"), kind == SourceKind::Table)?;
        self.register_schemas(&def)?;
        Ok(SourceDef { partitions, ..def })
    }

    /// The columns of the latest schema registered for a topic's values (`key == false`) or keys,
    /// upper-cased as ksqlDB infers them; or of the schema the statement names by `id`
    /// (`*_SCHEMA_ID`), named as it names them; `whole`: the schema is one column even if it is a
    /// record.
    /// Returns whether the columns are one unwrapped value.
    fn inferred_columns(
        &self,
        topic: &str,
        key: bool,
        whole: bool,
        id: Option<u32>,
        format: &Format,
    ) -> Result<(Vec<ColumnDef>, bool)> {
        let subject = rill_connectors::registry::subject(topic, key);
        let text = match id {
            Some(id) => self.schema_by_id(id)?,
            None => match self.store.schema_registry().latest(&subject)? {
                Some((_, text)) => text,
                None => {
                    return Err(SqlError::plan(format!(
                        "Schema for message {} on topic '{topic}' does not exist in the Schema Registry.\nSubject: {subject}",
                        if key { "keys" } else { "values" }
                    )))
                }
            },
        };
        self.schema_columns(&text, &subject, key, (whole, id.is_some()), format)
    }

    /// The columns of registered schema `text` (see [`Self::inferred_columns`]).
    fn schema_columns(
        &self,
        text: &str,
        subject: &str,
        key: bool,
        (whole, named): (bool, bool),
        format: &Format,
    ) -> Result<(Vec<ColumnDef>, bool)> {
        let kind = format.kind;
        let single = if key { "ROWKEY" } else { "ROWVAL" };
        let unsupported = || SqlError::plan(format!("Unsupported schema for {subject} (no SQL type for it): {text}"));
        let (fields, unwrapped) = if kind == FormatKind::Protobuf {
            (
                format::protobuf_columns(
                    text,
                    self.store.schema_registry().as_ref(),
                    format.schema_full_name.as_deref(),
                )?,
                false,
            )
        } else {
            let schema: serde_json::Value =
                serde_json::from_str(text).map_err(|e| SqlError::plan(format!("Invalid schema for {subject}: {e}")))?;
            let json = kind == FormatKind::JsonSr;
            let whole_type = |t: DataType| vec![Field::new(single, t, true)].into();
            let fields = match (whole, json) {
                (true, false) => format::avro_arrow_type(&schema).map(whole_type),
                (true, true) => format::json_schema_arrow_type(&schema).map(whole_type),
                (false, false) => format::avro_columns(&schema, single),
                (false, true) => format::json_schema_columns(&schema, single),
            };
            let is_record = if json {
                schema.get("type").and_then(|t| t.as_str()) == Some("object") && schema.get("properties").is_some()
            } else {
                avro_is_record(&schema)
            };
            let single_value = fields.as_ref().is_some_and(|f| f.len() == 1 && f[0].name() == single);
            (fields, whole || (single_value && !is_record))
        };
        let fields = fields.ok_or_else(unsupported)?;
        let mut out = Vec::with_capacity(fields.len());
        for f in fields.iter() {
            let sql_type = SqlType::from_arrow(f.data_type()).ok_or_else(unsupported)?;
            let (name, sql_type) = match named {
                true => (f.name().clone(), sql_type),
                false => (f.name().to_uppercase(), upper_fields(sql_type)),
            };
            out.push(ColumnDef { name, sql_type, key, primary_key: false, header: None, position: Default::default() });
        }
        Ok((out, unwrapped))
    }

    /// The schema registered as `id` (a statement's `*_SCHEMA_ID`).
    fn schema_by_id(&self, id: u32) -> Result<String> {
        self.store
            .schema_registry()
            .schema(id)?
            .ok_or_else(|| SqlError::plan(format!("Schema with id {id} does not exist in the Schema Registry.")))
    }

    /// A sink given `KEY_SCHEMA_ID` / `VALUE_SCHEMA_ID` writes with that registered schema: the
    /// query's columns must be the schema's first columns, in order and of the same types (the
    /// schema may have more, written as their default or null).
    fn use_registered_schemas(&self, sink: &mut SourceDef, with: &Props) -> Result<()> {
        for (key, prop) in [(true, "KEY_SCHEMA_ID"), (false, "VALUE_SCHEMA_ID")] {
            let format = if key { &sink.key_format } else { &sink.value_format };
            if !format.kind.uses_registry() {
                continue;
            }
            let Some(id) = schema_id(with, prop)? else { continue };
            let text = self.schema_by_id(id)?;
            let subject = format!("schema id {id}");
            let (registered, unwrapped) = self.schema_columns(&text, &subject, key, (false, true), format)?;
            let ours: Vec<&Column> = sink.columns.iter().filter(|c| c.key == key && c.header.is_none()).collect();
            // A schema of one unnamed value (not a record) names no column: its type must fit.
            let same_name = |r: &ColumnDef, c: &Column| unwrapped || r.name == c.name;
            let changed: Vec<(&str, &SqlType, bool)> = ours
                .iter()
                .enumerate()
                .filter(|(i, c)| registered.get(*i).is_none_or(|r| !same_name(r, c) || r.sql_type != c.sql_type))
                .map(|(_, c)| (c.name.as_str(), &c.sql_type, false))
                .collect();
            if !changed.is_empty() {
                return Err(SqlError::plan(format!(
                    "The following {} columns are changed, missing or reordered: [{}]. Schema from schema registry is [{}]",
                    if key { "key" } else { "value" },
                    column_list(changed),
                    column_list(registered.iter().map(|r| (r.name.as_str(), &r.sql_type, false)))
                )));
            }
            if key {
                sink.key_format.schema_id = Some(id);
            } else {
                sink.value_format.schema_id = Some(id);
            }
        }
        Ok(())
    }

    /// Registers the schemas of a new source in a registry format (keys and values, unless their
    /// subjects have some already: a producer's), so that producers can fetch them. They are the
    /// schemas a sink of these columns registers: building its encoder registers them.
    fn register_schemas(&self, def: &SourceDef) -> Result<()> {
        let registry = self.store.schema_registry();
        for (key, format, schema) in
            [(true, &def.key_format, def.key_schema()), (false, &def.value_format, def.value_schema())]
        {
            if !format.kind.uses_registry() || schema.fields().is_empty() {
                continue;
            }
            let subject = rill_connectors::registry::subject(&def.topic, key);
            if registry.latest(&subject)?.is_some() {
                continue;
            }
            format::encoder(format, schema, Some(&format::Registered { registry: registry.clone(), subject }))?;
        }
        Ok(())
    }

    /// Creates the topic if PARTITIONS says how; returns its partition count.
    fn ensure_topic(&self, topic: &str, partitions: Option<&PropValue>, compacted: bool) -> Result<u32> {
        let wanted: Option<u32> = match partitions {
            Some(v) => Some(v.as_text().parse().map_err(|_| SqlError::plan("PARTITIONS must be a positive number"))?),
            None => None,
        };
        match self.store.topic_config(topic) {
            Ok(cfg) => Ok(cfg.partitions),
            Err(_) => match wanted {
                Some(n) if n > 0 => {
                    let cleanup_policy = if compacted { CleanupPolicy::Compact } else { CleanupPolicy::Delete };
                    self.store.create_topic(topic, TopicConfig { partitions: n, cleanup_policy, ..TopicConfig::default() })?;
                    Ok(n)
                }
                _ => Err(SqlError::plan(format!(
                    "Topic '{topic}' does not exist. If you want to create a new topic for the stream/table please re-run the statement providing the required 'PARTITIONS' configuration in the WITH clause (and optionally 'REPLICAS'). For example: CREATE STREAM FOO (ID INT, VALUE STRING) WITH (KAFKA_TOPIC='{topic}', PARTITIONS=2, REPLICAS=1, FORMAT='JSON');"
                ))),
            },
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn create_as_select(
        &self,
        catalog: &mut Catalog,
        kind: SourceKind,
        name: &str,
        with: &Props,
        select: Select,
        text: &str,
        props: &Properties,
        replay: Option<u64>,
        or_replace: bool,
    ) -> Result<StatementResult> {
        if select.limit.is_some() {
            return Err(SqlError::plan(format!(
                "CREATE {} AS SELECT statements don't support LIMIT clause.",
                kind.name()
            )));
        }
        let plan = planner::plan_select(&self.ctx, catalog, &select).await?;
        let reads = std::iter::once(&plan.source).chain(plan.side_sources.iter().map(|(s, _)| s));
        if reads.into_iter().any(|s| s.kind == SourceKind::Table && s.window.is_some()) {
            return Err(SqlError::plan("KSQL does not support persistent queries on windowed tables."));
        }
        match (plan.is_table, kind) {
            (true, SourceKind::Stream) => {
                return Err(SqlError::plan(
                    "Invalid result type. Your SELECT query produces a TABLE. Please use CREATE TABLE AS SELECT statement instead.",
                ))
            }
            (false, SourceKind::Table) if plan.source.kind == SourceKind::Stream => {
                return Err(SqlError::plan(
                    "Invalid result type. Your SELECT query produces a STREAM. Please use CREATE STREAM AS SELECT statement instead.",
                ))
            }
            _ => {}
        }
        let columns: Vec<Column> = plan
            .columns
            .iter()
            .filter(|c| c.key)
            .chain(plan.columns.iter().filter(|c| !c.key))
            .map(|c| Column { name: c.name.clone(), sql_type: c.sql_type.clone(), key: c.key, header: None })
            .collect();
        // WITH (TIMESTAMP=...) on the result: its records carry that column's time. ksqlDB checks
        // it before the key projection.
        let timestamp = check_timestamp(&columns, with)?;
        if let Some(hint) = &plan.key_hint {
            return Err(SqlError::plan(format!(
                "Key missing from projection (ie, SELECT). See https://cnfl.io/2LV7ouS.\nThe query used to build `{name}` must include {hint}"
            )));
        }
        if plan.is_table && plan.stage.is_some() && !plan.columns.iter().any(|c| c.key) {
            return Err(SqlError::plan(format!(
                "Key missing from projection (ie, SELECT). See https://cnfl.io/2LV7ouS.\nThe query used to build `{name}` must include the grouping expression(s) in its projection (eg, SELECT <grouping expressions>...)."
            )));
        }
        if plan.keeps_input_key() {
            check_key_projection(&plan, name)?;
        }
        if !plan.columns.iter().any(|c| !c.key) {
            return Err(SqlError::plan("The projection contains no value columns."));
        }
        // The default topic: the sink's name, after `ksql.output.topic.name.prefix` if set.
        let topic = with.get("KAFKA_TOPIC").map(|v| v.as_text()).unwrap_or_else(|| {
            let prefix = props.get("ksql.output.topic.name.prefix").map(String::as_str).unwrap_or("");
            format!("{prefix}{name}")
        });
        let (mut key_format, value_format) =
            formats(with, Some((&plan.source.key_format, &plan.source.value_format)), props)?;
        if plan.columns.iter().any(|c| c.key) && key_format.kind == FormatKind::None {
            let explicit = with.get("KEY_FORMAT").or(with.get("FORMAT"));
            if explicit.is_some_and(|f| f.as_text().eq_ignore_ascii_case("NONE")) {
                let keys: Vec<String> =
                    plan.columns.iter().filter(|c| c.key).map(|c| format!("`{}` {} KEY", c.name, c.sql_type)).collect();
                return Err(SqlError::plan(format!(
                    "The 'NONE' format can only be used when no columns are defined. Got: [{}]",
                    keys.join(", ")
                )));
            }
            // A keyless source's query that has a key again (joins, PARTITION BY, GROUP BY): the
            // default key format (ksqlDB's `ksql.persistence.default.format.key`, KAFKA when
            // unset), a single key column unwrapped.
            let default = props.get("ksql.persistence.default.format.key");
            key_format = Format::new(default.map(|d| FormatKind::parse(d)).transpose()?.unwrap_or(FormatKind::Kafka));
            key_format.wrap_single_value = false;
        }
        if !plan.columns.iter().any(|c| c.key) {
            if with.get("KEY_FORMAT").is_some_and(|f| !f.as_text().eq_ignore_ascii_case("NONE")) {
                return Err(SqlError::plan("Key format specified for stream without key columns."));
            }
            key_format = Format::new(FormatKind::None);
        }
        check_columns(&columns, with, &value_format)?;
        let partitions = match with.get("PARTITIONS") {
            Some(p) => Some(p.clone()),
            None => Some(PropValue::Number(plan.source.partitions.to_string())),
        };
        let timestamp_format = timestamp.as_ref().and_then(|_| with.get("TIMESTAMP_FORMAT")).map(|v| v.as_text());
        let mut sink = SourceDef {
            name: name.to_string(),
            kind,
            read_only: false,
            columns,
            topic: topic.clone(),
            key_format,
            value_format,
            timestamp,
            timestamp_format,
            partitions: 1,
            statement: text.to_string(),
            written_by: vec![],
            window: None,
        };
        wrap_config(&mut sink, with, props);
        check_formats(&sink)?;
        self.use_registered_schemas(&mut sink, with)?;
        sink.partitions = self.ensure_topic(&topic, partitions.as_ref(), plan.is_table)?;
        sink.window = plan.window.map(|(_, _, k)| k);
        let sequence = self.peek_sequence(replay)?;
        let mut id = format!("{}_{name}_{sequence}", if kind == SourceKind::Table { "CTAS" } else { "CSAS" });
        // CREATE OR REPLACE of a query's result: the query keeps its id, its checkpoint (state
        // and positions) and its output topic, if the change leaves the state's meaning intact.
        let replaced = match catalog.sources.get(name).filter(|_| or_replace) {
            Some(old) => {
                let old_id = old
                    .written_by
                    .iter()
                    .find(|q| q.starts_with("CSAS_") || q.starts_with("CTAS_"))
                    .cloned()
                    .ok_or_else(|| SqlError::plan(format!("Cannot replace {name}: no query writes it.")))?;
                let q = catalog.queries.get(&old_id).ok_or_else(|| SqlError::Internal("query vanished".into()))?;
                check_upgrade(old, &sink, &q.signature, &state_signature(&plan)?, &old_id)?;
                sink.written_by = old.written_by.clone();
                Some(old_id)
            }
            None => None,
        };
        if let Some(old_id) = &replaced {
            if let Some(q) = catalog.queries.remove(old_id) {
                // Stopping takes a final checkpoint, which the new version restores.
                q.running.stop().await;
            }
            self.pending.lock().retain(|spec| &spec.id != old_id);
            sink.written_by.retain(|w| w != old_id);
            id = old_id.clone();
        }
        let previous = catalog.sources.insert(name.to_string(), sink.clone());
        if let Err(e) = self.start_persistent(catalog, &id, plan, &sink, text, props, replay) {
            match previous {
                Some(p) => catalog.sources.insert(name.to_string(), p),
                None => catalog.sources.remove(name),
            };
            return Err(e);
        }
        self.record(text, props, replay)?;
        Ok(StatementResult::CommandStatus {
            statement: text.to_string(),
            message: format!("Created query with ID {id}"),
            query_id: Some(id),
            sequence,
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn start_persistent(
        &self,
        catalog: &mut Catalog,
        id: &str,
        plan: QueryPlan,
        sink: &SourceDef,
        text: &str,
        props: &Properties,
        replay: Option<u64>,
    ) -> Result<()> {
        let input_schema = plan.schema.clone();
        let index = |name: &str| input_schema.index_of(name).map_err(|e| SqlError::Internal(e.to_string()));
        let key_columns = sink.key_columns().map(|c| index(&c.name)).collect::<Result<Vec<_>>>()?;
        let value_columns = sink.value_columns().map(|c| index(&c.name)).collect::<Result<Vec<_>>>()?;
        // DECIMALs declared narrower than computed (a DECIMAL SUM): the sink checks they fit.
        let mut narrow = Vec::new();
        for c in sink.key_columns().chain(sink.value_columns()) {
            let (i, to) = (index(&c.name)?, c.sql_type.to_arrow());
            if matches!((input_schema.field(i).data_type(), &to), (DataType::Decimal128(a, _), DataType::Decimal128(b, _)) if b < a)
            {
                narrow.push((i, to));
            }
        }
        let sink_spec = SinkSpec {
            topic: sink.topic.clone(),
            key_format: sink.key_format.clone(),
            value_format: sink.value_format.clone(),
            key_columns,
            value_columns,
            timestamp_column: match &sink.timestamp {
                Some(c) => index(c)?,
                None => plan.rowtime_column,
            },
            timestamp_format: match &sink.timestamp_format {
                Some(f) => Some(crate::timefmt::java_to_chrono_parse(f)?),
                None => None,
            },
            input_schema: input_schema.clone(),
            delete_column: plan.delete_column,
            window: plan.window.map(|(start, end, kind)| WindowKey {
                start,
                end,
                session: matches!(kind, WindowKind::Session { .. }),
            }),
            headers_column: plan.headers_column,
            key_from_input: plan.keeps_input_key(),
            narrow,
        };
        let spec = QuerySpec {
            id: id.to_string(),
            source: reader_spec(&plan),
            chain: plan.chain.clone(),
            stage: plan.stage.clone(),
            shard_keys: plan.shard_keys.clone(),
            parallelism: parallelism(props)?,
            side_inputs: side_inputs(&plan),
            output: Output::Topic(Box::new(sink_spec)),
            start: start_from(props, StartFrom::Latest),
            commit_group: Some(format!("rill-query-{id}")),
            checkpoint: Some(self.checkpoint_spec(id, props)?),
        };
        let plan_text = explain(&plan, Some(&sink.name), Some(id))?;
        let signature = state_signature(&plan)?;
        let running = if replay.is_some() {
            let topics = std::iter::once(plan.source.topic.clone())
                .chain(plan.side_sources.iter().map(|(s, _)| s.topic.clone()))
                .collect();
            self.pending.lock().push(spec);
            Arc::new(RunningQuery::not_started(id, topics))
        } else {
            let running = Arc::new(runtime::start(self.store.clone(), spec)?);
            self.pin_positions(id, &running)?;
            running
        };
        if let Some(s) = catalog.sources.get_mut(&sink.name) {
            s.written_by.push(id.to_string());
        }
        catalog.queries.insert(
            id.to_string(),
            QueryDef {
                id: id.to_string(),
                statement: text.to_string(),
                sink: sink.name.clone(),
                sink_topic: sink.topic.clone(),
                sources: std::iter::once(plan.source.name.clone())
                    .chain(plan.side_sources.iter().map(|(s, _)| s.name.clone()))
                    .collect(),
                running,
                plan: plan_text,
                signature,
            },
        );
        Ok(())
    }

    async fn insert_values(&self, sink: &SourceDef, columns: Option<Vec<String>>, values: Vec<sp::Expr>) -> Result<()> {
        if sink.read_only {
            return Err(SqlError::plan(format!(
                "Cannot insert values into read-only {}: {}",
                sink.kind.name().to_lowercase(),
                sink.name
            )));
        }
        let all: Vec<String> = sink.columns.iter().map(|c| c.name.clone()).collect();
        let columns = columns.unwrap_or(all);
        if columns.len() != values.len() {
            return Err(SqlError::plan(format!(
                "Failed to prepare statement: Expected number columns and values to match: {}, {}",
                columns.len(),
                values.len()
            )));
        }
        let headers: Vec<&str> = columns
            .iter()
            .filter(|c| sink.columns.iter().any(|s| &s.name == *c && s.header.is_some()))
            .map(String::as_str)
            .collect();
        if !headers.is_empty() {
            return Err(SqlError::plan(format!("Cannot insert into HEADER columns: {}", headers.join(", "))));
        }
        for c in &columns {
            if c == rill_engine::source::ROWPARTITION || c == rill_engine::source::ROWOFFSET {
                return Err(SqlError::plan(format!("Inserting into column `{c}` is not allowed.")));
            }
            if c != "ROWTIME" && !sink.columns.iter().any(|s| &s.name == c) {
                return Err(SqlError::plan(format!("Column name {c} does not exist.")));
            }
        }
        // Values are literals: a qualified name refers to no source here.
        for v in &values {
            let mut qualifier = None;
            let _ = sp::visit_expressions(v, |e: &sp::Expr| {
                if let sp::Expr::CompoundIdentifier(ids) = e {
                    qualifier = qualifier.take().or_else(|| ids.first().map(|i| i.value.clone()));
                }
                std::ops::ControlFlow::<()>::Continue(())
            });
            if let Some(q) = qualifier {
                return Err(SqlError::plan(format!(
                    "Failed to prepare statement: '{q}' is not a valid stream/table name or alias."
                )));
            }
        }
        // Evaluate the literals with DataFusion: SELECT v1 AS c1, ...
        let mut query = *sqlparser::parser::Parser::new(&parser::KsqlDialect)
            .try_with_sql("SELECT NULL")
            .and_then(|mut p| p.parse_query())
            .map_err(|e| SqlError::Internal(e.to_string()))?;
        if let sp::SetExpr::Select(select) = query.body.as_mut() {
            select.projection = values
                .into_iter()
                .zip(&columns)
                .map(|(e, c)| sp::SelectItem::ExprWithAlias { expr: e, alias: sp::Ident::with_quote('"', c) })
                .collect();
        }
        // ksqlDB's expressions (STRUCT(a := 1), MAP('k' := v), struct dereference, ...).
        planner::ksql_expressions(&mut query);
        let plan = self
            .ctx
            .state()
            .statement_to_plan(DfStatement::Statement(Box::new(sp::Statement::Query(Box::new(query)))))
            .await?;
        // The same typed rules as in queries (constructors, GREATEST/LEAST, casts to text).
        let plan = crate::typecheck::typed_rules(plan)?;
        let batches = self.ctx.execute_logical_plan(plan).await?.collect().await?;
        let row = batches.first().ok_or_else(|| SqlError::Internal("VALUES produced no row".into()))?;
        let mut fields = Vec::new();
        let mut arrays: Vec<ArrayRef> = Vec::new();
        for c in &sink.columns {
            let dt = c.sql_type.to_arrow();
            let array = match columns.iter().position(|n| n == &c.name) {
                Some(i) => cast_value(row.column(i), &dt, &c.name)?,
                None => arrow::array::new_null_array(&dt, 1),
            };
            fields.push(Field::new(&c.name, dt, true));
            arrays.push(array);
        }
        let ts = match columns.iter().position(|n| n == "ROWTIME") {
            Some(i) => cast_value(row.column(i), &DataType::Int64, "ROWTIME")?,
            None => Arc::new(Int64Array::from(vec![now_ms()])),
        };
        fields.push(Field::new(planner::HIDDEN_TS, DataType::Int64, true));
        arrays.push(ts);
        let schema = Arc::new(Schema::new(fields));
        let batch = RecordBatch::try_new(schema.clone(), arrays)?;
        self.row_sink(sink, schema)?.write(&batch).await?;
        Ok(())
    }

    /// Inserts rows given as JSON objects (the `/inserts-stream` endpoint); field names match
    /// columns case-insensitively, `ROWTIME` sets the record timestamp. Returns one result per row.
    pub async fn insert_json(&self, target: &str, rows: &[&[u8]]) -> Result<Vec<std::result::Result<(), String>>> {
        let Some(sink) = self.source(target).await else {
            return Err(unknown_insert_target(&*self.catalog.lock().await, target));
        };
        if sink.read_only {
            return Err(SqlError::plan(format!(
                "Cannot insert values into read-only {}: {}",
                sink.kind.name().to_lowercase(),
                sink.name
            )));
        }
        if sink.has_header_columns() {
            return Err(SqlError::plan(format!("Cannot insert into {} because it has header columns", sink.name)));
        }
        let mut fields: Vec<Field> =
            sink.columns.iter().map(|c| Field::new(&c.name, c.sql_type.to_arrow(), true)).collect();
        fields.push(Field::new("ROWTIME", DataType::Int64, true));
        let schema = Arc::new(Schema::new(fields));
        let mut decoder = format::decoder(&Format::new(FormatKind::Json), schema.clone(), None)?;
        let decoded = decoder.decode(rows)?;
        let mut results: Vec<std::result::Result<(), String>> = vec![Ok(()); rows.len()];
        for (i, e) in &decoded.errors {
            results[*i] = Err(e.clone());
        }
        let mut batch = decoded.batch;
        // Rows without ROWTIME get the current time.
        let ts = batch.column(sink.columns.len()).clone();
        let now = now_ms();
        let filled: Int64Array = ts
            .as_any()
            .downcast_ref::<Int64Array>()
            .map(|a| a.iter().map(|v| Some(v.unwrap_or(now))).collect())
            .unwrap_or_else(|| Int64Array::from(vec![now; batch.num_rows()]));
        let mut columns = batch.columns().to_vec();
        columns[sink.columns.len()] = Arc::new(filled);
        batch = RecordBatch::try_new(schema.clone(), columns)?;
        self.row_sink(&sink, schema)?.write(&batch).await?;
        Ok(results)
    }

    /// A sink writing rows laid out as `sink`'s columns (keys first) then the record time.
    fn row_sink(&self, sink: &SourceDef, schema: arrow::datatypes::SchemaRef) -> Result<Sink> {
        let nkeys = sink.key_columns().count();
        let spec = SinkSpec {
            topic: sink.topic.clone(),
            key_format: sink.key_format.clone(),
            value_format: sink.value_format.clone(),
            key_columns: (0..nkeys).collect(),
            value_columns: (nkeys..sink.columns.len()).collect(),
            timestamp_column: sink.columns.len(),
            timestamp_format: None,
            input_schema: schema,
            delete_column: None,
            window: None,
            headers_column: None,
            key_from_input: false,
            narrow: vec![],
        };
        Ok(Sink::try_new(spec, self.store.clone())?)
    }

    fn print(&self, topic: &str, from_beginning: bool, limit: Option<u64>) -> Result<StatementResult> {
        let cfg = self
            .store
            .topic_config(topic)
            .map_err(|_| SqlError::NotFound(format!("Could not find topic '{topic}', or the KSQL user does not have permissions to list the topic. Topic names are case-sensitive.")))?;
        let (tx, rx) = mpsc::channel(64);
        let store = self.store.clone();
        let registry = store.schema_registry();
        let topic_name = topic.to_string();
        tokio::spawn(async move {
            let mut sent = 0u64;
            let mut offsets = Vec::new();
            for p in 0..cfg.partitions {
                let o =
                    if from_beginning { store.start_offset(&topic_name, p) } else { store.end_offset(&topic_name, p) };
                offsets.push(o.unwrap_or(0));
            }
            loop {
                let mut progressed = false;
                for p in 0..cfg.partitions {
                    let Ok(fetch) = store.read(&topic_name, p, offsets[p as usize], 1 << 20) else { return };
                    for r in fetch.records() {
                        let line = format!(
                            "rowtime: {}, key: {}, value: {}, partition: {}",
                            r.timestamp,
                            r.key.map(|k| printable(registry.as_ref(), k)).unwrap_or_else(|| "<null>".into()),
                            r.value.map(|v| printable(registry.as_ref(), v)).unwrap_or_else(|| "<null>".into()),
                            p
                        );
                        if tx.send(line).await.is_err() {
                            return;
                        }
                        sent += 1;
                        if limit.is_some_and(|l| sent >= l) {
                            return;
                        }
                    }
                    if fetch.next_offset() > offsets[p as usize] {
                        offsets[p as usize] = fetch.next_offset();
                        progressed = true;
                    }
                }
                if !progressed {
                    let waits = (0..cfg.partitions).map(|p| {
                        let store = store.clone();
                        let t = topic_name.clone();
                        let o = offsets[p as usize];
                        Box::pin(async move { store.wait_for(&t, p, o).await })
                    });
                    tokio::select! {
                        _ = futures::future::select_all(waits) => {}
                        _ = tx.closed() => return,
                    }
                }
            }
        });
        Ok(StatementResult::Print { topic: topic.to_string(), rows: rx })
    }

    fn info(&self, catalog: &Catalog, s: &SourceDef) -> SourceInfo {
        let read_queries = catalog.queries.values().filter(|q| q.sources.contains(&s.name)).map(query_info).collect();
        let write_queries: Vec<QueryInfo> =
            catalog.queries.values().filter(|q| q.sink == s.name).map(query_info).collect();
        let (mut processed, mut dead, mut late, mut state, mut lag, mut last_error) =
            (0u64, 0u64, 0u64, 0u64, 0u64, None);
        for q in catalog.queries.values().filter(|q| q.sources.contains(&s.name) || q.sink == s.name) {
            processed += q.running.stats.records_in.load(Ordering::Relaxed);
            dead += q.running.stats.dead_letters.load(Ordering::Relaxed);
            late += q.running.stats.late_records.load(Ordering::Relaxed);
            state += q.running.stats.state_bytes.load(Ordering::Relaxed);
            lag += q.running.lag(self.store.as_ref());
            if let Some(e) = q.running.stats.last_error.lock().clone() {
                last_error = Some(e);
            }
        }
        SourceInfo {
            name: s.name.clone(),
            kind: s.kind.name(),
            topic: s.topic.clone(),
            key_format: s.key_format.kind.name().to_string(),
            value_format: s.value_format.kind.name().to_string(),
            windowed: s.window.is_some(),
            window_type: s.window_type().map(String::from),
            columns: s.columns.clone(),
            timestamp: s.timestamp.clone(),
            partitions: s.partitions,
            statement: s.statement.clone(),
            read_queries,
            write_queries,
            statistics: format!(
                "messages-processed: {processed}, consumer-lag: {lag}, late-records: {late} (topic {}), state-bytes: {state}",
                runtime::LATE_TOPIC
            ),
            error_stats: match last_error {
                Some(e) => format!("dead-letters: {dead} (last error: {e}; see topic {})", runtime::DEAD_LETTER_TOPIC),
                None => format!("dead-letters: {dead}"),
            },
        }
    }
}

/// The operator graph of a plan, with each operator's state and whether it stays bounded.
fn explain(plan: &QueryPlan, sink: Option<&str>, query: Option<&str>) -> Result<String> {
    let mut lines = vec![format!(
        "SOURCE {} (topic '{}', {} partition{}, event time {})",
        plan.source.name,
        plan.source.topic,
        plan.source.partitions,
        if plan.source.partitions == 1 { "" } else { "s" },
        plan.source.timestamp.clone().unwrap_or_else(|| "ROWTIME".into())
    )];
    let describe = |op: &dyn rill_engine::Operator, where_: &str| {
        let s = op.state_info();
        format!(
            "  > {} [{where_}] state: {} ({})",
            op.name().to_uppercase(),
            s.description,
            if s.bounded { "bounded" } else { "UNBOUNDED" }
        )
    };
    for op in (plan.chain)()?.operators() {
        lines.push(describe(op.as_ref(), "one task per source partition"));
    }
    // Persistent queries: inputs not partitioned by the stage's key go through a topic, unless
    // every input has one partition.
    let partitions: Vec<u32> =
        std::iter::once(plan.source.partitions).chain(plan.side_sources.iter().map(|(s, _)| s.partitions)).collect();
    let steps = plan.shard_keys.iter().flat_map(|k| k.repartition.iter().flatten());
    for step in steps.filter(|_| sink.is_some()) {
        lines.push(match rill_engine::repartition::through_topics(&partitions) {
            false => format!("  > REPARTITION {step} by key in process (single-partition inputs: no topic)"),
            true => format!(
                "  > REPARTITION {step} by key through topic '{}' (one partition per stage shard)",
                rill_engine::repartition::topic_name(query.unwrap_or("<id>"), step)
            ),
        });
    }
    if let Some(stage) = &plan.stage {
        for op in stage()?.operators() {
            lines.push(describe(op.as_ref(), "stateful stage, watermark = min over partitions"));
        }
    }
    lines.push(match sink {
        Some(s) => {
            format!("  > SINK {s}{}", if plan.is_table { " (changelog: upserts and tombstones by key)" } else { "" })
        }
        None => "  > PUSH to client".to_string(),
    });
    Ok(lines.join("\n"))
}

fn query_info(q: &QueryDef) -> QueryInfo {
    QueryInfo {
        id: q.id.clone(),
        statement: q.statement.clone(),
        sinks: vec![q.sink.clone()],
        sink_topics: vec![q.sink_topic.clone()],
        state: if q.running.failed() { "ERROR" } else { "RUNNING" },
    }
}

/// The window of a source declared over a windowed topic: `WINDOW_TYPE` ('TUMBLING', 'HOPPING'
/// or 'SESSION') and, for time windows, `WINDOW_SIZE` (e.g. '30 SECONDS').
fn declared_window(with: &Props) -> Result<Option<WindowKind>> {
    let size = match with.get("WINDOW_SIZE") {
        Some(v) => {
            let text = v.as_text();
            Some(duration_millis(&text).ok_or_else(|| {
                SqlError::plan(format!("Invalid WINDOW_SIZE '{text}': give a number and a unit, e.g. '30 SECONDS'"))
            })?)
        }
        None => None,
    };
    let Some(kind) = with.get("WINDOW_TYPE") else {
        return match size {
            Some(_) => Err(SqlError::plan("'WINDOW_SIZE' should not be set without 'WINDOW_TYPE'.")),
            None => Ok(None),
        };
    };
    let need_size = || {
        size.ok_or_else(|| {
            SqlError::plan("Tumbling and Hopping window types should set 'WINDOW_SIZE' in the WITH clause.")
        })
    };
    Ok(Some(match kind.as_text().to_uppercase().as_str() {
        "SESSION" if size.is_some() => {
            return Err(SqlError::plan("'WINDOW_SIZE' should not be set for SESSION windows."))
        }
        "SESSION" => WindowKind::Session { gap: 0 },
        "TUMBLING" => WindowKind::Tumbling { size: need_size()? },
        "HOPPING" => {
            let size = need_size()?;
            WindowKind::Hopping { size, advance: size }
        }
        other => {
            return Err(SqlError::plan(format!(
                "Invalid value for WINDOW_TYPE: '{other}'. Valid values are SESSION, HOPPING and TUMBLING."
            )))
        }
    }))
}

/// `'<n> <unit>'` (MILLISECONDS, SECONDS, MINUTES, HOURS, DAYS; singular too) in ms.
fn duration_millis(text: &str) -> Option<i64> {
    let mut parts = text.split_whitespace();
    let n: i64 = parts.next()?.parse().ok()?;
    let unit = parts.next()?.to_uppercase();
    let per = match unit.trim_end_matches('S') {
        "MILLISECOND" => 1,
        "SECOND" => 1_000,
        "MINUTE" => 60_000,
        "HOUR" => 3_600_000,
        "DAY" => 86_400_000,
        _ => return None,
    };
    parts.next().is_none().then(|| n * per)
}

/// The TIMESTAMP column named in a WITH clause (upper-cased): it must be one of `cols`, a
/// BIGINT or TIMESTAMP, or a STRING with a TIMESTAMP_FORMAT.
fn check_timestamp(cols: &[Column], with: &Props) -> Result<Option<String>> {
    let timestamp = with.get("TIMESTAMP").map(|v| v.as_text().to_uppercase());
    if let Some(ts) = &timestamp {
        match cols.iter().find(|c| &c.name == ts) {
            None => return Err(SqlError::plan(format!("The TIMESTAMP column set in the WITH clause does not exist in the schema: '{ts}'"))),
            Some(c) if c.sql_type == SqlType::String => match with.get("TIMESTAMP_FORMAT") {
                Some(f) => {
                    crate::timefmt::java_to_chrono(&f.as_text())?;
                }
                None => {
                    return Err(SqlError::plan(format!(
                        "TIMESTAMP column {ts} is a STRING: give its TIMESTAMP_FORMAT (for example 'yyyy-MM-dd HH:mm:ss.SSS')"
                    )))
                }
            },
            Some(c) if !matches!(c.sql_type, SqlType::Bigint | SqlType::Timestamp) => {
                return Err(SqlError::plan(format!(
                    "Timestamp column, `{ts}`, should be LONG(INT64), TIMESTAMP, or a String with a timestamp_format specified."
                )))
            }
            _ => {}
        }
    }
    Ok(timestamp)
}

/// A record key or value as PRINT shows it: AVRO (a registered schema id and a body that
/// decodes with it) as JSON, JSON_SR without its header, anything else as text.
fn printable(registry: &dyn rill_connectors::SchemaRegistry, bytes: &[u8]) -> String {
    if let Ok((_, body)) = format::split_frame("AVRO", bytes) {
        if let Ok(v) = format::avro_decode_json(registry, bytes) {
            return v.to_string();
        }
        // JSON_SR: JSON text after the header.
        if serde_json::from_slice::<serde_json::Value>(body).is_ok() {
            return String::from_utf8_lossy(body).into_owned();
        }
    }
    String::from_utf8_lossy(bytes).into_owned()
}

/// Whether an Avro schema is a record.
fn avro_is_record(avro: &serde_json::Value) -> bool {
    avro.get("type").and_then(|t| t.as_str()) == Some("record")
}

/// A type with its struct fields' names upper-cased (as ksqlDB infers them from a schema).
fn upper_fields(t: SqlType) -> SqlType {
    match t {
        SqlType::Struct(fields) => {
            SqlType::Struct(fields.into_iter().map(|(n, t)| (n.to_uppercase(), upper_fields(t))).collect())
        }
        SqlType::Array(t) => SqlType::Array(Box::new(upper_fields(*t))),
        SqlType::Map(k, v) => SqlType::Map(k, Box::new(upper_fields(*v))),
        other => other,
    }
}

/// `ksql.persistence.wrap.single.values=false` writes and reads a single value column of a
/// format that can do so (JSON, JSON_SR, AVRO) unwrapped, unless the statement's
/// `WRAP_SINGLE_VALUE` says otherwise (ksqlDB's default for the property).
fn wrap_config(def: &mut SourceDef, with: &Props, props: &Properties) {
    let off = props.get("ksql.persistence.wrap.single.values").is_some_and(|v| v.eq_ignore_ascii_case("false"));
    let single = def.value_columns().filter(|c| c.header.is_none()).count() == 1;
    let can = matches!(def.value_format.kind, FormatKind::Json | FormatKind::JsonSr | FormatKind::Avro);
    if off && single && can && !with.contains_key("WRAP_SINGLE_VALUE") {
        def.value_format.wrap_single_value = false;
    }
}

/// What the key and value formats can carry, with ksqlDB's messages (the one place CREATE
/// statements check it; the codecs refuse the same schemas at run time).
fn check_formats(def: &SourceDef) -> Result<()> {
    let show =
        |cols: &[&Column]| format!("[{}]", column_list(cols.iter().map(|c| (c.name.as_str(), &c.sql_type, c.key))));
    let base = |t: &SqlType| t.to_string().split(['<', '(']).next().unwrap_or_default().trim().to_string();
    // Why `format` cannot carry `cols`, if it cannot.
    let problem = |format: &Format, cols: &[&Column]| -> Option<String> {
        match format.kind {
            FormatKind::None if !cols.is_empty() => {
                Some(format!("The 'NONE' format can only be used when no columns are defined. Got: {}", show(cols)))
            }
            FormatKind::Kafka if cols.len() > 1 => {
                Some(format!("The 'KAFKA' format only supports a single field. Got: {}", show(cols)))
            }
            FormatKind::Kafka => cols
                .iter()
                .find(|c| {
                    !matches!(
                        c.sql_type,
                        SqlType::Int | SqlType::Bigint | SqlType::Double | SqlType::String | SqlType::Bytes
                    )
                })
                .map(|c| format!("The 'KAFKA' format does not support type '{}'", base(&c.sql_type))),
            FormatKind::Delimited => cols
                .iter()
                .find(|c| matches!(c.sql_type, SqlType::Array(_) | SqlType::Map(..) | SqlType::Struct(_)))
                .map(|c| {
                    format!(
                        "The 'DELIMITED' format does not support type '{}', column: `{}`",
                        base(&c.sql_type),
                        c.name
                    )
                }),
            _ => None,
        }
    };
    let keys: Vec<&Column> = def.key_columns().collect();
    if let Some(reason) = problem(&def.key_format, &keys) {
        // ksqlDB wraps key problems in the key schema, except NONE's.
        return Err(SqlError::plan(if def.key_format.kind == FormatKind::None {
            reason
        } else {
            format!(
                "Key format does not support schema.\nformat: {}\nschema: Persistence{{columns={}, features=[]}}\nreason: {reason}",
                def.key_format.kind.name(),
                show(&keys)
            )
        }));
    }
    let values: Vec<&Column> = def.value_columns().collect();
    match problem(&def.value_format, &values) {
        Some(reason) => Err(SqlError::plan(reason)),
        None => Ok(()),
    }
}

/// ksqlDB's rules for keys of a non-aggregating query: every source key column is selected,
/// each exactly once.
fn check_key_projection(plan: &QueryPlan, name: &str) -> Result<()> {
    let keys: Vec<&str> = plan.source.key_columns().map(|c| c.name.as_str()).collect();
    for k in &keys {
        let aliases: Vec<&str> =
            plan.columns.iter().filter(|c| c.key && c.origin.as_deref() == Some(*k)).map(|c| c.name.as_str()).collect();
        if aliases.len() > 1 {
            return Err(SqlError::plan(format!(
                "The projection contains a key column (`{k}`) more than once, aliased as: {}.",
                aliases.join(" and ")
            )));
        }
    }
    let missing: Vec<&str> = keys
        .iter()
        .copied()
        .filter(|k| !plan.columns.iter().any(|c| c.key && c.origin.as_deref() == Some(*k)))
        .collect();
    if !missing.is_empty() {
        return Err(SqlError::plan(format!(
            "Key missing from projection (ie, SELECT). See https://cnfl.io/2LV7ouS.\nThe query used to build `{name}` must include the key column{} {} in its projection (eg, SELECT {}...).",
            if keys.len() > 1 { "s" } else { "" },
            keys.join(" and "),
            keys.join(", ")
        )));
    }
    Ok(())
}

/// ksqlDB's refusal of a key column whose type contains a map.
pub(crate) fn map_key(name: &str, sql_type: &SqlType) -> SqlError {
    SqlError::plan(format!(
        "Map keys, including types that contain maps, are not supported as they may lead to unexpected behavior due to inconsistent serialization. Key column name: `{name}`. Column type: {sql_type}. See https://github.com/confluentinc/ksql/issues/6621 for more."
    ))
}

/// Checks a new source's key and value columns against ksqlDB's rules.
fn check_columns(columns: &[Column], with: &Props, value_format: &Format) -> Result<()> {
    for c in columns.iter().filter(|c| c.key) {
        if c.sql_type.contains_map() {
            return Err(map_key(&c.name, &c.sql_type));
        }
    }
    // JSON objects have string keys.
    fn non_string_map_key(t: &SqlType) -> bool {
        match t {
            SqlType::Map(k, v) => **k != SqlType::String || non_string_map_key(v),
            SqlType::Array(t) => non_string_map_key(t),
            SqlType::Struct(fields) => fields.iter().any(|(_, t)| non_string_map_key(t)),
            _ => false,
        }
    }
    let mut value_columns = columns.iter().filter(|c| !c.key && c.header.is_none());
    let non_string_keys = value_columns.any(|c| non_string_map_key(&c.sql_type));
    match value_format.kind {
        FormatKind::Json | FormatKind::JsonSr if non_string_keys => {
            return Err(SqlError::plan("JSON only supports MAP types with STRING keys"));
        }
        FormatKind::Protobuf | FormatKind::ProtobufNosr if non_string_keys => {
            return Err(SqlError::plan("PROTOBUF format only supports MAP types with STRING keys"));
        }
        _ => {}
    }
    if with.contains_key("WRAP_SINGLE_VALUE") && columns.iter().filter(|c| !c.key).count() != 1 {
        return Err(SqlError::plan("'WRAP_SINGLE_VALUE' is only valid for single-field value schemas"));
    }
    Ok(())
}

/// INSERT INTO casts a number literal selected into a DECIMAL column of the sink to that
/// column's type, as ksqlDB does (`INSERT INTO T SELECT 1 AS C1` with C1 DECIMAL(5, 2)).
fn literals_as_sink_decimals(mut query: Select, sink: &SourceDef) -> Select {
    let sp::SetExpr::Select(body) = query.query.body.as_mut() else { return query };
    for item in &mut body.projection {
        let sp::SelectItem::ExprWithAlias { expr, alias } = item else { continue };
        let number = match &*expr {
            sp::Expr::UnaryOp { op: sp::UnaryOperator::Minus, expr } => expr.as_ref(),
            e => e,
        };
        if !matches!(number, sp::Expr::Value(v) if matches!(v.value, sp::Value::Number(..))) {
            continue;
        }
        let Some(column) = sink.columns.iter().find(|c| c.name == alias.value) else { continue };
        let SqlType::Decimal(precision, scale) = column.sql_type else { continue };
        let data_type = sp::DataType::Decimal(sp::ExactNumberInfo::PrecisionAndScale(precision as u64, scale as i64));
        *expr = sp::Expr::Cast {
            kind: sp::CastKind::Cast,
            expr: Box::new(expr.clone()),
            data_type,
            array: false,
            format: None,
        };
    }
    query
}

fn check_insert_schema(plan: &QueryPlan, sink: &SourceDef) -> Result<()> {
    let ours: Vec<(&str, &SqlType, bool)> =
        plan.columns.iter().map(|c| (c.name.as_str(), &c.sql_type, c.key)).collect();
    let theirs: Vec<(&str, &SqlType, bool)> =
        sink.columns.iter().map(|c| (c.name.as_str(), &c.sql_type, c.key)).collect();
    let mut a = ours.clone();
    let mut b = theirs.clone();
    a.sort_by_key(|c| (!c.2, c.0));
    b.sort_by_key(|c| (!c.2, c.0));
    if a != b {
        let render = |cols: &[(&str, &SqlType, bool)]| column_list(cols.iter().copied());
        return Err(SqlError::plan(format!(
            "Incompatible schema between results and sink.\nResult schema is {}\nSink schema is {}",
            render(&ours),
            render(&theirs)
        )));
    }
    Ok(())
}

fn cast_value(a: &ArrayRef, dt: &DataType, column: &str) -> Result<ArrayRef> {
    if a.data_type() == dt {
        return Ok(a.clone());
    }
    // `STRUCT()` into a STRUCT column: every field null.
    if let (DataType::Struct(empty), DataType::Struct(fields)) = (a.data_type(), dt) {
        if empty.is_empty() {
            let children = fields.iter().map(|f| arrow::array::new_null_array(f.data_type(), a.len())).collect();
            let nulls = a.logical_nulls();
            let array = arrow::array::StructArray::try_new_with_length(fields.clone(), children, nulls, a.len())
                .map_err(|e| SqlError::plan(format!("column {column}: {e}")))?;
            return Ok(Arc::new(array));
        }
    }
    arrow::compute::cast(a, dt).map_err(|e| {
        SqlError::plan(format!(
            "Expected type {} for column {column}: {e}",
            SqlType::from_arrow(dt).map(|t| t.to_string()).unwrap_or_default()
        ))
    })
}

/// How a query's source is read: with each record's headers when the plan carries them.
fn reader_spec(plan: &QueryPlan) -> rill_engine::source::SourceSpec {
    let mut spec = plan.source.source_spec();
    spec.carry_headers = plan.headers_column.is_some();
    // Value columns the query never reads need not be decoded.
    spec.read_values = plan.read_columns.as_ref().map(|read| {
        let fields = spec.value_schema.fields().iter().enumerate();
        fields.filter(|(_, f)| read.contains(f.name())).map(|(i, _)| i).collect()
    });
    spec
}

fn formats(with: &Props, inherit: Option<(&Format, &Format)>, props: &Properties) -> Result<(Format, Format)> {
    let get = |k: &str| with.get(k).map(|v| v.as_text());
    let both = get("FORMAT");
    if both.is_some() {
        for (prop, other) in [("KEY_FORMAT", "VALUE_FORMAT"), ("VALUE_FORMAT", "KEY_FORMAT")] {
            if get(prop).is_some() {
                return Err(SqlError::plan(format!(
                    "Cannot supply both '{prop}' and 'FORMAT' properties, as 'FORMAT' sets both key and value formats. Either use just 'FORMAT', or use '{}' and '{}'.",
                    if prop == "KEY_FORMAT" { prop } else { other },
                    if prop == "KEY_FORMAT" { other } else { prop }
                )));
            }
        }
    }
    let parse = |s: String| FormatKind::parse(&s).map_err(SqlError::from);
    let default = |k: &str| props.get(&format!("ksql.persistence.default.format.{k}")).cloned();
    let value_kind = match get("VALUE_FORMAT").or(both.clone()) {
        Some(v) => parse(v)?,
        None => match (inherit, default("value")) {
            (Some((_, v)), _) => v.kind,
            (None, Some(d)) => parse(d)?,
            (None, None) => return Err(SqlError::plan("Statement is missing the 'VALUE_FORMAT' property from the WITH clause. Either provide one or set a default via the 'ksql.persistence.default.format.value' config.")),
        },
    };
    let key_kind = match get("KEY_FORMAT").or(both) {
        Some(v) => parse(v)?,
        None => match (inherit, default("key")) {
            (Some((k, _)), _) => k.kind,
            (None, Some(d)) => parse(d)?,
            (None, None) => FormatKind::Kafka,
        },
    };
    let mut value = Format::new(value_kind);
    let mut key = Format::new(key_kind);
    // A DELIMITED sink of a DELIMITED source keeps its delimiter unless one is given.
    if let Some((k, v)) = inherit {
        if k.kind == key.kind {
            key.delimiter = k.delimiter;
        }
        if v.kind == value.kind {
            value.delimiter = v.delimiter;
            value.protobuf_nullable = v.protobuf_nullable;
        }
        if k.kind == key.kind {
            key.protobuf_nullable = k.protobuf_nullable;
        }
    }
    // WRAP_SINGLE_VALUE is not inherited from a query's source (ksqlDB).
    if let Some(PropValue::Bool(b)) = with.get("WRAP_SINGLE_VALUE") {
        if *b && matches!(value.kind, FormatKind::Delimited | FormatKind::Kafka) {
            return Err(SqlError::plan(format!(
                "Format '{}' does not support 'WRAP_SINGLE_VALUE' set to 'true'.",
                value.kind.name()
            )));
        }
        if !*b && matches!(value.kind, FormatKind::Protobuf | FormatKind::ProtobufNosr) {
            return Err(SqlError::plan(format!(
                "Format '{}' does not support 'WRAP_SINGLE_VALUE' set to 'false'.",
                value.kind.name()
            )));
        }
        value.wrap_single_value = *b;
    }
    for (prop, f) in
        [("VALUE_PROTOBUF_NULLABLE_REPRESENTATION", &mut value), ("KEY_PROTOBUF_NULLABLE_REPRESENTATION", &mut key)]
    {
        let Some(r) = get(prop) else { continue };
        if !matches!(f.kind, FormatKind::Protobuf | FormatKind::ProtobufNosr) {
            return Err(SqlError::plan(format!(
                "{} does not support the following configs: [nullableRepresentation]",
                f.kind.name()
            )));
        }
        f.protobuf_nullable = match r.to_uppercase().as_str() {
            "OPTIONAL" => ProtobufNullable::Optional,
            "WRAPPER" => ProtobufNullable::Wrapper,
            _ => {
                return Err(SqlError::plan(format!(
                    "Invalid value for {prop}: '{r}'. Valid values are: OPTIONAL, WRAPPER"
                )))
            }
        };
    }
    for (prop, f) in [("VALUE_DELIMITER", &mut value), ("KEY_DELIMITER", &mut key)] {
        if let Some(d) = get(prop) {
            if f.kind != FormatKind::Delimited {
                return Err(SqlError::plan(format!(
                    "{} does not support the following configs: [delimiter]",
                    f.kind.name()
                )));
            }
            f.delimiter = match d.to_uppercase().as_str() {
                "TAB" => b'\t',
                "SPACE" => b' ',
                "" => {
                    return Err(SqlError::plan(format!(
                        "Failed to prepare statement: Configuration {prop} is invalid: Delimiter cannot be empty, if you meant to have a tab or space for delimiter, please use the special values 'TAB' or 'SPACE'\nExample valid value: ';'"
                    )))
                }
                s if s.trim().is_empty() => {
                    return Err(SqlError::plan(format!(
                        "Failed to prepare statement: Configuration {prop} is invalid: Delimiter cannot be empty, if you meant to have a tab or space for delimiter, please use the special values 'TAB' or 'SPACE'\nExample valid value: ';'"
                    )))
                }
                s if s.len() == 1 => s.as_bytes()[0],
                _ => {
                    return Err(SqlError::plan(format!(
                        "Failed to prepare statement: Configuration {prop} is invalid: Invalid delimiter value: '{d}'. Delimiter must be a single character or TAB,SPACE\nExample valid value: ';'"
                    )))
                }
            };
        }
    }
    for (prop, is_key) in
        [("VALUE_AVRO_SCHEMA_FULL_NAME", false), ("VALUE_SCHEMA_FULL_NAME", false), ("KEY_SCHEMA_FULL_NAME", true)]
    {
        let f = if is_key { &mut key } else { &mut value };
        let Some(name) = get(prop) else { continue };
        if !f.kind.uses_registry() {
            return Err(SqlError::plan(format!(
                "{} does not support the following configs: [fullSchemaName]",
                f.kind.name()
            )));
        }
        if name.trim().is_empty() {
            return Err(SqlError::plan("fullSchemaName cannot be empty. Format configuration: {fullSchemaName=}"));
        }
        f.schema_full_name = Some(name);
    }
    // ksqlDB keys are unwrapped single values.
    key.wrap_single_value = false;
    Ok((key, value))
}

fn side_inputs(plan: &QueryPlan) -> Vec<runtime::SideInput> {
    plan.side_sources
        .iter()
        .map(|(s, chain)| {
            let mut source = s.source_spec();
            source.carry_headers = plan.side_headers;
            runtime::SideInput { source, chain: chain.clone() }
        })
        .collect()
}

/// Columns as ksqlDB lists them in messages: `` `NAME` TYPE[ KEY]``, comma-separated.
fn column_list<'a>(cols: impl IntoIterator<Item = (&'a str, &'a SqlType, bool)>) -> String {
    let items: Vec<String> =
        cols.into_iter().map(|(n, t, k)| format!("`{n}` {t}{}", if k { " KEY" } else { "" })).collect();
    items.join(", ")
}

/// A `*_SCHEMA_ID` property's schema id.
fn schema_id(with: &Props, prop: &str) -> Result<Option<u32>> {
    with.get(prop)
        .map(|v| v.as_text().parse().map_err(|_| SqlError::plan(format!("{prop} must be a schema id (a number)"))))
        .transpose()
}

/// The state signatures of a plan's operators (see `Operator::state_signature`).
fn state_signature(plan: &QueryPlan) -> Result<Vec<String>> {
    let mut out = (plan.chain)()?.state_signature()?;
    if let Some(stage) = &plan.stage {
        out.extend(stage()?.state_signature()?);
    }
    Ok(out)
}

/// Whether `new` may replace `old` keeping query `id`'s state and output topic: the same key,
/// every old value column still there with its type, the same topic, and stateful operators
/// whose state means the same.
fn check_upgrade(old: &SourceDef, new: &SourceDef, old_sig: &[String], new_sig: &[String], id: &str) -> Result<()> {
    let refuse = |why: String| {
        Err(SqlError::plan(format!(
            "Cannot upgrade {} {}: {why}. Its query {id} keeps running unchanged; to change this, \
             TERMINATE {id}, DROP {} {} and create it again.",
            old.kind.name().to_lowercase(),
            old.name,
            old.kind.name(),
            old.name
        )))
    };
    if old.kind != new.kind {
        return refuse(format!("it is a {}, the new query produces a {}", old.kind.name(), new.kind.name()));
    }
    if old.topic != new.topic {
        return refuse(format!("its topic is {}, not {}", old.topic, new.topic));
    }
    let keys = |s: &SourceDef| s.key_columns().map(|c| (c.name.clone(), c.sql_type.clone())).collect::<Vec<_>>();
    if keys(old) != keys(new) {
        return refuse("the key columns would change".into());
    }
    for c in old.value_columns() {
        match new.value_columns().find(|n| n.name == c.name) {
            Some(n) if n.sql_type == c.sql_type => {}
            Some(n) => {
                return refuse(format!("column {} would change type from {} to {}", c.name, c.sql_type, n.sql_type))
            }
            None => return refuse(format!("column {} would disappear", c.name)),
        }
    }
    if old_sig != new_sig {
        let diff = old_sig
            .iter()
            .zip(new_sig)
            .find(|(a, b)| a != b)
            .map(|(a, b)| format!("{a} would become {b}"))
            .unwrap_or_else(|| format!("{} stateful operators would become {}", old_sig.len(), new_sig.len()));
        return refuse(format!("its state would not mean the same: {diff}"));
    }
    Ok(())
}

impl KsqlEngine {
    /// Where query `id` keeps its checkpoints.
    fn checkpoint_dir(&self, id: &str) -> PathBuf {
        self.state_dir.join("checkpoints").join(id)
    }

    /// How query `id` checkpoints: `processing.guarantee` (`exactly_once` by default, or
    /// `at_least_once`) and `commit.interval.ms` (longest time between checkpoints under load,
    /// 2000 by default), as ksqlDB names them (also with the `ksql.streams.` prefix).
    fn checkpoint_spec(&self, id: &str, props: &Properties) -> Result<CheckpointSpec> {
        let prop = |name: &str| props.get(name).or_else(|| props.get(&format!("ksql.streams.{name}")));
        let exactly_once = match prop("processing.guarantee").map(|s| s.to_lowercase()) {
            None => true,
            Some(g) if g == "exactly_once" || g == "exactly_once_v2" => true,
            Some(g) if g == "at_least_once" => false,
            Some(g) => {
                return Err(SqlError::plan(format!(
                    "Invalid value {g} for configuration processing.guarantee: \
                     expected one of at_least_once, exactly_once, exactly_once_v2"
                )))
            }
        };
        let interval = match prop("commit.interval.ms") {
            None => 2000,
            Some(v) => v.trim().parse::<u64>().map_err(|_| {
                SqlError::plan(format!("Invalid value {v} for configuration commit.interval.ms: expected milliseconds"))
            })?,
        };
        Ok(CheckpointSpec {
            dir: self.checkpoint_dir(id),
            interval: std::time::Duration::from_millis(interval.max(1)),
            exactly_once,
        })
    }
}

/// How many shards a query's keyed stage runs as (see `rill_engine::shard`), if set: ksqlDB's
/// `num.stream.threads` (also with the `ksql.streams.` prefix). The engine's default follows
/// the cores, or the input partitions through repartition topics (`QuerySpec::parallelism`).
fn parallelism(props: &Properties) -> Result<Option<usize>> {
    let name = "num.stream.threads";
    match props.get(name).or_else(|| props.get(&format!("ksql.streams.{name}"))) {
        None => Ok(None),
        Some(v) => match v.trim().parse::<usize>() {
            Ok(n) if n >= 1 => Ok(Some(n)),
            _ => Err(SqlError::plan(format!(
                "Invalid value {v} for configuration {name}: expected a number of at least 1"
            ))),
        },
    }
}

/// ksqlDB's scalable push queries (`ksql.query.push.v2.enabled`): a stateless query from the
/// latest offsets over a source a persistent query writes, served from that query's output
/// (as every push query in Rill is served from its source's topic); only the name differs.
fn is_scalable_push(plan: &planner::QueryPlan, props: &Properties) -> bool {
    let set = |name: &str, value: &str| props.get(name).is_some_and(|v| v.trim().eq_ignore_ascii_case(value));
    set("ksql.query.push.v2.enabled", "true")
        && set("auto.offset.reset", "latest")
        && plan.keeps_input_key()
        && plan.side_sources.is_empty()
        && !plan.source.written_by.is_empty()
}

fn start_from(props: &Properties, default: StartFrom) -> StartFrom {
    match props
        .get("auto.offset.reset")
        .or_else(|| props.get("ksql.streams.auto.offset.reset"))
        .map(|s| s.to_lowercase())
    {
        Some(s) if s == "earliest" => StartFrom::Earliest,
        Some(s) if s == "latest" => StartFrom::Latest,
        _ => default,
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_i64(now_ms());
    h.finish() % 10_000_000_000
}

/// ksqlDB's message for INSERT into a source that does not exist, with a hint when one exists
/// under the same name in another case (the name was or was not quoted when it should not or
/// should have been).
fn unknown_insert_target(catalog: &Catalog, target: &str) -> SqlError {
    let mut message = format!("Cannot insert values into an unknown stream/table: `{target}`");
    let other = catalog.sources.keys().find(|n| n.eq_ignore_ascii_case(target) && n.as_str() != target);
    if let Some(other) = other {
        if target == target.to_uppercase() {
            message.push_str(&format!(
                "\nDid you mean \"{other}\"? Hint: wrap the source name in double quotes to make it case-sensitive."
            ));
        } else {
            message
                .push_str(&format!("\nDid you mean {other}? Hint: try removing double quotes from the source name."));
        }
    }
    SqlError::NotFound(message)
}
