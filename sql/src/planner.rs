//! Planning a SELECT: ksqlDB rewrites on the AST, DataFusion's SQL planner for types,
//! functions and coercion, then the logical plan is cut into Rill operators.

use std::ops::ControlFlow;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::MemTable;
use datafusion::common::{DFSchema, TableReference};
use datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion::logical_expr::{Expr, LogicalPlan};
use datafusion::physical_expr::aggregate::LoweredAggregateBuilder;
use datafusion::physical_expr::execution_props::ExecutionProps;
use datafusion::physical_expr::expressions::{BinaryExpr, NotExpr};
use datafusion::physical_expr::{expressions::Column as PhysColumn, PhysicalExpr};
use datafusion::prelude::SessionContext;
use datafusion::sql::parser::Statement as DfStatement;
use rill_engine::operator::Chain;
use rill_engine::operators::aggregate::DELETE_COLUMN;
use rill_engine::operators::{
    AggregateConfig, AggregateOperator, CalcOperator, ForeignKeyJoinConfig, ForeignKeyJoinOperator, JoinKind,
    StreamStreamJoinConfig, StreamStreamJoinOperator, StreamTableJoinConfig, StreamTableJoinOperator,
    TableDiffOperator, TableTableJoinConfig, TableTableJoinOperator, UnnestOperator, WindowConfig, WindowKind,
    JOIN_TIME_COLUMN,
};
use rill_engine::runtime::ChainFactory;
use rill_engine::shard::ShardKeys;
use sqlparser::ast as sp;

use crate::ast::{Emit, Select, SourceKind, WindowSpec};
use crate::catalog::{Catalog, SourceDef};
use crate::error::{Result, SqlError};
use crate::lambdas::create_physical_expr;
use crate::types::SqlType;

/// Name of the hidden last column carrying each output row's record timestamp.
pub const HIDDEN_TS: &str = rill_engine::operators::aggregate::ROWTIME_COLUMN;
/// Window start pseudo column.
pub const WINDOWSTART: &str = "WINDOWSTART";
/// ksqlDB's pseudo columns: a record's time, partition and offset; a window's bounds.
const PSEUDO_COLUMNS: [&str; 5] = ["ROWTIME", "ROWPARTITION", "ROWOFFSET", WINDOWSTART, WINDOWEND];
/// Window end pseudo column.
pub const WINDOWEND: &str = "WINDOWEND";

/// A column of a query's output.
#[derive(Clone, Debug, PartialEq)]
pub struct OutputColumn {
    /// Name.
    pub name: String,
    /// Type.
    pub sql_type: SqlType,
    /// Whether it is a key column of the output.
    pub key: bool,
    /// The input column it copies, when it is a plain column reference.
    pub origin: Option<String>,
}

/// A planned query: operator chains and what its output rows look like.
pub struct QueryPlan {
    /// The source read.
    pub source: SourceDef,
    /// Per source partition, stateless.
    pub chain: ChainFactory,
    /// The stateful stage (aggregations), if any.
    pub stage: Option<ChainFactory>,
    /// The stage's key per input, when all of its state is keyed by it (it may then run as
    /// several shards; see `rill_engine::shard`).
    pub shard_keys: Option<Arc<ShardKeys>>,
    /// The visible output columns.
    pub columns: Vec<OutputColumn>,
    /// Schema of output batches (visible columns, then hidden ones).
    pub schema: SchemaRef,
    /// Hidden BIGINT column with each row's record timestamp.
    pub rowtime_column: usize,
    /// Hidden BOOLEAN column marking tombstones (aggregations).
    pub delete_column: Option<usize>,
    /// Hidden window bound columns and the window kind (windowed aggregations).
    pub window: Option<(usize, usize, WindowKind)>,
    /// Hidden column with each row's input record headers (its source's reader must carry
    /// them, see `SourceSpec::carry_headers`); sinks write them.
    pub headers_column: Option<usize>,
    /// The side sources' readers must carry record headers too (their rows are planned with
    /// them: a join's streams, or both tables of a table-table join).
    pub side_headers: bool,
    /// The source's columns the query reads, when known (a single source); the reader may
    /// leave the others undecoded (see `SourceSpec::read_values`).
    pub read_columns: Option<Vec<String>>,
    /// The output is a changelog keyed by the GROUP BY columns.
    pub is_table: bool,
    /// PARTITION BY chose a new key.
    pub rekeyed: bool,
    /// Further inputs of the stage (the table of a stream-table join).
    pub side_sources: Vec<(SourceDef, ChainFactory)>,
    /// The key is incomplete (a join or GROUP BY expression is not projected): what the
    /// projection must include, in ksqlDB's words (the end of its "Key missing from
    /// projection" message). Persistent queries are refused with it.
    pub key_hint: Option<String>,
}

impl QueryPlan {
    /// The output's key is the input record's key as read: no stage (GROUP BY, join) and no
    /// PARTITION BY chose another.
    pub fn keeps_input_key(&self) -> bool {
        self.stage.is_none() && !self.rekeyed
    }
}

/// Plans `select` over the catalog's sources.
pub async fn plan_select(ctx: &SessionContext, catalog: &Catalog, select: &Select) -> Result<QueryPlan> {
    plan_query(ctx, catalog, select, false).await
}

/// Plans a push query (`SELECT ... EMIT CHANGES`): like [`plan_select`], but `*` over a
/// windowed source also selects its window bounds, as ksqlDB's push queries do.
pub async fn plan_push(ctx: &SessionContext, catalog: &Catalog, select: &Select) -> Result<QueryPlan> {
    plan_query(ctx, catalog, select, true).await
}

async fn plan_query(ctx: &SessionContext, catalog: &Catalog, select: &Select, push: bool) -> Result<QueryPlan> {
    let planned = plan_query_as_written(ctx, catalog, select, push).await;
    // DataFusion's messages for columns it cannot resolve become ksqlDB's.
    match planned {
        Err(e) if e.to_string().contains("require unique expression names") => {
            let unresolved = selected_columns_error(select, catalog);
            let duplicate = match unresolved {
                Some(u) => Some(u),
                None => duplicate_column_error(ctx, catalog, select, push).await,
            };
            Err(duplicate.unwrap_or(e))
        }
        Err(e) if datafusion_column_error(&e.to_string()) => Err(selected_columns_error(select, catalog).unwrap_or(e)),
        Err(e) => {
            Err(non_boolean_where(select, &e.to_string()).or_else(|| select_cast(select, &e.to_string())).unwrap_or(e))
        }
        other => other,
    }
}

/// ksqlDB's message for a CAST in the SELECT list between kinds of types that do not convert
/// (`CAST(text AS ARRAY<INT>)`): "Invalid Select: Cast of ... is not supported".
fn select_cast(select: &Select, message: &str) -> Option<SqlError> {
    let cast = &message[message.find("Cast of ")?..];
    let sp::SetExpr::Select(body) = select.query.body.as_ref() else { return None };
    // (The parser writes casts to ARRAY, MAP and STRUCT as calls of `crate::castfn`.)
    let complex = |f: &sp::Function| f.name.to_string().eq_ignore_ascii_case(crate::castfn::NAME);
    let in_projection = sp::visit_expressions(&body.projection, |e: &sp::Expr| {
        if matches!(e, sp::Expr::Cast { .. }) || matches!(e, sp::Expr::Function(f) if complex(f)) {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    });
    in_projection.is_break().then(|| SqlError::plan(format!("Invalid Select: {cast}")))
}

/// ksqlDB's message for a WHERE clause that is not a condition (`WHERE 'text'`), from
/// DataFusion's ("Cannot create filter with non-boolean predicate '...' returning Utf8").
fn non_boolean_where(select: &Select, message: &str) -> Option<SqlError> {
    let (_, returning) = message.split_once("Cannot create filter with non-boolean predicate")?;
    let (_, arrow_type) = returning.rsplit_once(" returning ")?;
    let data_type: DataType = arrow_type.trim().parse().ok()?;
    let sql_type = SqlType::from_arrow(&data_type)?;
    let sp::SetExpr::Select(body) = select.query.body.as_ref() else { return None };
    let text = ksql_ast_text(body.selection.as_ref()?);
    Some(SqlError::plan(format!(
        "Type error in WHERE expression: Should evaluate to boolean but is {text} ({sql_type}) instead."
    )))
}

/// ksqlDB's message for a SELECT list naming two columns alike (`SELECT A AS X, B AS X`):
/// "Duplicate value columns found in schema: `X` TYPE", of the second. Its type comes from
/// planning the query again with that column renamed. `None` when no two are named alike
/// (found without planning).
pub(crate) async fn duplicate_column_error(
    ctx: &SessionContext,
    catalog: &Catalog,
    select: &Select,
    push: bool,
) -> Option<SqlError> {
    const RENAMED: &str = "__RILL_DUPLICATE";
    let mut select = select.clone();
    let sp::SetExpr::Select(body) = select.query.body.as_mut() else { return None };
    let name = |item: &sp::SelectItem| match item {
        sp::SelectItem::ExprWithAlias { alias, .. } => Some(alias.value.clone()),
        sp::SelectItem::UnnamedExpr(sp::Expr::Identifier(id)) => Some(id.value.clone()),
        sp::SelectItem::UnnamedExpr(sp::Expr::CompoundIdentifier(parts)) => parts.last().map(|p| p.value.clone()),
        _ => None,
    };
    let names: Vec<Option<String>> = body.projection.iter().map(name).collect();
    let second = (1..names.len()).find(|&j| names[j].is_some() && names[..j].contains(&names[j]))?;
    let duplicate = names[second].clone()?;
    let expr = match &body.projection[second] {
        sp::SelectItem::ExprWithAlias { expr, .. } | sp::SelectItem::UnnamedExpr(expr) => expr.clone(),
        _ => return None,
    };
    body.projection[second] = sp::SelectItem::ExprWithAlias { expr, alias: sp::Ident::new(RENAMED) };
    let plan = Box::pin(plan_query_as_written(ctx, catalog, &select, push)).await.ok()?;
    let column = plan.columns.iter().find(|c| c.name == RENAMED)?;
    Some(SqlError::plan(format!("Duplicate value columns found in schema: `{duplicate}` {}", column.sql_type)))
}

async fn plan_query_as_written(
    ctx: &SessionContext,
    catalog: &Catalog,
    select: &Select,
    push: bool,
) -> Result<QueryPlan> {
    let mut query = select.query.clone();
    let sp::SetExpr::Select(body) = query.body.as_mut() else {
        return Err(SqlError::Unsupported("Only simple SELECT statements are supported".into()));
    };
    if body.from.len() != 1 {
        return Err(SqlError::plan("A query must read FROM exactly one source (use JOIN to combine sources)"));
    }
    if !body.from[0].joins.is_empty() {
        return plan_joins(ctx, catalog, select, true).await;
    }
    let (source_name, alias) = match &body.from[0].relation {
        sp::TableFactor::Table { name, alias, .. } => {
            (name.0.last().and_then(|p| p.as_ident()).map(|i| i.value.clone()).unwrap_or_default(), alias.clone())
        }
        _ => return Err(SqlError::Unsupported("Only streams and tables can be queried".into())),
    };
    let source = catalog
        .sources
        .get(&source_name)
        .cloned()
        .ok_or_else(|| SqlError::NotFound(format!("{source_name} does not exist.")))?;
    let _ = alias;
    plan_single(ctx, source, select, push).await
}

/// ksqlDB's rules for table functions (`EXPLODE`, `CUBE_EXPLODE`): of a stream's rows, not with
/// aggregations, and EXPLODE of an array.
fn table_functions(select: &Select, source: &SourceDef) -> Result<()> {
    let sp::SetExpr::Select(body) = select.query.body.as_ref() else { return Ok(()) };
    let mut found = None;
    for item in &body.projection {
        let _ = sp::visit_expressions(item, |e: &sp::Expr| {
            if let sp::Expr::Function(f) = e {
                let name = function_name(f);
                if matches!(name.as_deref(), Some("EXPLODE" | "CUBE_EXPLODE")) {
                    found = Some((name.unwrap_or_default(), plain_args(f).unwrap_or_default()));
                    return ControlFlow::Break(());
                }
            }
            ControlFlow::Continue(())
        });
        if found.is_some() {
            break;
        }
    }
    let Some((name, args)) = found else { return Ok(()) };
    if source.kind == SourceKind::Table {
        return Err(SqlError::plan("Table source is not supported with table functions"));
    }
    let grouped = !matches!(body.group_by, sp::GroupByExpr::Expressions(ref e, _) if e.is_empty());
    if grouped || select.window.is_some() {
        return Err(SqlError::plan("Table functions cannot be used with aggregations."));
    }
    if let (Some(sp::Expr::Identifier(id)), "EXPLODE") = (args.first(), name.as_str()) {
        let column = source.columns.iter().find(|c| c.name == id.value);
        if let Some(c) = column.filter(|c| !matches!(c.sql_type, SqlType::Array(_))) {
            return Err(SqlError::plan(format!(
                "Function 'explode' does not accept parameters ({}).\nValid alternatives are:\nexplode(ARRAY<DECIMAL> input)\nexplode(ARRAY<T> list)",
                c.sql_type
            )));
        }
    }
    Ok(())
}

/// Plans `select` reading FROM `source` alone (no join).
async fn plan_single(ctx: &SessionContext, source: SourceDef, select: &Select, push: bool) -> Result<QueryPlan> {
    table_functions(select, &source)?;
    let partition_hint = match select.query.body.as_ref() {
        sp::SetExpr::Select(body) if !push && !select.partition_by.is_empty() => {
            check_partition_by(&body.projection, &source, &select.partition_by)?
        }
        _ => None,
    };
    let mut plan = plan_single_query(ctx, source, select, push).await?;
    if partition_hint.is_some() {
        plan.key_hint = partition_hint;
    }
    Ok(plan)
}

/// [`plan_single`] after the checks on the statement as written.
async fn plan_single_query(ctx: &SessionContext, source: SourceDef, select: &Select, push: bool) -> Result<QueryPlan> {
    let mut query = select.query.clone();
    let sp::SetExpr::Select(body) = query.body.as_mut() else {
        return Err(SqlError::Unsupported("Only simple SELECT statements are supported".into()));
    };
    // `GROUP BY (a, b)`: one grouping set, the same as `GROUP BY a, b` (ksqlDB).
    if let sp::GroupByExpr::Expressions(exprs, _) = &mut body.group_by {
        if let [sp::Expr::Tuple(items)] = exprs.as_slice() {
            *exprs = items.clone();
        }
    }
    let mut grouped = !matches!(body.group_by, sp::GroupByExpr::Expressions(ref e, _) if e.is_empty());
    if push && !grouped && select.window.is_none() {
        // A push query may aggregate without GROUP BY: one group of every row (ksqlDB).
        let state = ctx.state();
        let is_aggregate = |name: &str| state.aggregate_functions().contains_key(&name.to_lowercase());
        if calls_aggregate(&body.projection, &is_aggregate) {
            let everything = sp::Expr::value(sp::Value::SingleQuotedString(String::new()));
            body.group_by = sp::GroupByExpr::Expressions(vec![everything], vec![]);
            grouped = true;
        }
    }
    if grouped && source.value_format.kind == rill_connectors::format::FormatKind::Kafka {
        return Err(SqlError::plan(format!(
            "Source(s) {} are using the 'KAFKA' value format. This format does not yet support GROUP BY.",
            source.name
        )));
    }
    {
        let state = ctx.state();
        let is_aggregate = |name: &str| state.aggregate_functions().contains_key(&name.to_lowercase());
        check_grouping(body, &source.name, grouped, push, select, &is_aggregate)?;
    }
    if !select.partition_by.is_empty() && grouped {
        return Err(SqlError::Unsupported("PARTITION BY together with GROUP BY is not supported yet".into()));
    }
    // PARTITION BY: the partitioning expressions become the key. A projection item computing
    // the same expression leaves the value and names the key (ksqlDB's rule); otherwise the key
    // is named after the column or struct field, or KSQL_COL_<n>.
    let rekey_by = if select.partition_by.is_empty() {
        None
    } else {
        let by_null = select.partition_by.len() == 1 && is_null_literal(&select.partition_by[0]);
        Some(if by_null { vec![] } else { select.partition_by.clone() })
    };
    if select.window.is_some() && !grouped {
        // An aggregation without GROUP BY: its other items are what is not grouped (ksqlDB).
        let state = ctx.state();
        let is_aggregate = |name: &str| state.aggregate_functions().contains_key(&name.to_lowercase());
        if calls_aggregate(&body.projection, &is_aggregate) {
            if let Some(m) = ungrouped_items(&body.projection, &body.group_by, None, &is_aggregate) {
                return Err(SqlError::plan(m));
            }
        }
        return Err(SqlError::plan("WINDOW clause requires a GROUP BY clause."));
    }
    let emit_final = select.emit == Some(Emit::Final);
    let window = select.window.as_ref().map(|w| window_config(w, emit_final));
    if window.is_some() {
        // WINDOWSTART and WINDOWEND are group columns of every windowed aggregation.
        if let sp::GroupByExpr::Expressions(exprs, _) = &mut body.group_by {
            exprs.push(sp::Expr::Identifier(quoted(WINDOWSTART)));
            exprs.push(sp::Expr::Identifier(quoted(WINDOWEND)));
        }
    }
    check_reserved_names(&body.projection, window.is_some() || (push && source.window.is_some()), !push)?;
    if window.is_some() && source.window.is_none() {
        // The window bounds of a windowed aggregation exist only in its output.
        let bound = |e: &sp::Expr| {
            let mut found = None;
            let _ = sp::visit_expressions(e, |x: &sp::Expr| {
                if let sp::Expr::Identifier(id) = x {
                    if id.value == WINDOWSTART || id.value == WINDOWEND {
                        found.get_or_insert(id.value.clone());
                    }
                }
                ControlFlow::<()>::Continue(())
            });
            found
        };
        if let Some(b) = body.selection.as_ref().and_then(bound) {
            return Err(SqlError::plan(format!("Error in WHERE expression: Unknown column {b}.")));
        }
        if let Some(b) = body.having.as_ref().and_then(bound) {
            return Err(SqlError::plan(format!(
                "Window bounds column {b} can only be used in the SELECT clause of windowed aggregations"
            )));
        }
    }
    rewrite_projection(&mut body.projection, &source, rekey_by.is_some(), None, push);
    if push && !grouped && source.kind == SourceKind::Stream {
        skip_stream_tombstones(body);
    }
    let mut rekey: Option<Vec<String>> = None;
    if let Some(exprs) = rekey_by {
        let mut names = Vec::new();
        let mut generated = 0;
        for (i, e) in exprs.iter().enumerate() {
            // Compare expressions as text, ignoring identifier quotes (`*` expands to quoted names).
            let unquoted = |x: &sp::Expr| x.to_string().replace(['"', '`'], "");
            let text = unquoted(e);
            let matching = body.projection.iter().position(|item| match item {
                sp::SelectItem::UnnamedExpr(x) | sp::SelectItem::ExprWithAlias { expr: x, .. } => unquoted(x) == text,
                _ => false,
            });
            let name = match matching.map(|j| body.projection.remove(j)) {
                Some(sp::SelectItem::ExprWithAlias { alias, .. }) => alias.value,
                Some(sp::SelectItem::UnnamedExpr(sp::Expr::Identifier(id))) => id.value,
                _ => match e {
                    sp::Expr::Identifier(id) => id.value.clone(),
                    sp::Expr::CompoundIdentifier(ids) => ids.last().map(|id| id.value.clone()).unwrap_or_default(),
                    sp::Expr::BinaryOp { op: sp::BinaryOperator::Arrow, right, .. } => right.to_string(),
                    _ => {
                        let n = format!("KSQL_COL_{generated}");
                        generated += 1;
                        n
                    }
                },
            };
            // A stream's tombstone (no value) has a null key unless the key reads only key columns:
            // ksqlDB evaluates the expression on the value, which is null.
            let mut of_value = false;
            let _ = sp::visit_expressions(e, |x: &sp::Expr| {
                if let sp::Expr::Identifier(id) = x {
                    of_value |= !source.columns.iter().any(|c| c.key && c.name == id.value);
                }
                ControlFlow::<()>::Continue(())
            });
            let expr = if of_value && source.kind == SourceKind::Stream {
                let deleted = sp::Expr::IsTrue(Box::new(sp::Expr::Identifier(quoted(rill_engine::source::DELETE))));
                case_when(deleted, sp::Expr::Value(sp::Value::Null.into()), e.clone())
            } else {
                e.clone()
            };
            body.projection.push(sp::SelectItem::ExprWithAlias { expr, alias: quoted(&format!("__RILL_PKEY_{i}")) });
            names.push(name);
        }
        rekey = Some(names);
    }
    string_plus(&mut query, &[(&[source.name.as_str()], &source)]);
    in_list_literals(&mut query, &source)?;
    // For ksqlDB's message if DataFusion finds a non-aggregate item that is not grouped.
    let written = match query.body.as_ref() {
        sp::SetExpr::Select(b) => Some((b.projection.clone(), b.group_by.clone())),
        _ => None,
    };
    let having = match query.body.as_ref() {
        sp::SetExpr::Select(b) => b.having.clone(),
        _ => None,
    };
    let body_selection = match query.body.as_ref() {
        sp::SetExpr::Select(b) => b.selection.clone(),
        _ => None,
    };
    ksql_rules(&mut query)?;

    // Plan with DataFusion against the source's row schema (plus window bounds when windowed).
    let row_schema = source.row_schema();
    let mut scan_fields: Vec<Field> = row_schema.fields().iter().map(|f| f.as_ref().clone()).collect();
    if window.is_some() {
        scan_fields.push(Field::new(WINDOWSTART, DataType::Int64, true));
        scan_fields.push(Field::new(WINDOWEND, DataType::Int64, true));
    }
    let table = MemTable::try_new(Arc::new(Schema::new(scan_fields)), vec![vec![]])?;
    let reference = TableReference::bare(source.name.clone());
    let _ = ctx.deregister_table(reference.clone());
    ctx.register_table(reference.clone(), Arc::new(table))?;
    let rewritten_items = match query.body.as_ref() {
        sp::SetExpr::Select(b) => b.projection.clone(),
        _ => vec![],
    };
    let statement = DfStatement::Statement(Box::new(sp::Statement::Query(Box::new(query))));
    let state = ctx.state();
    let mut plan = state.statement_to_plan(statement).await;
    if let (Err(e), Some((items, _))) = (&plan, &written) {
        if e.to_string().contains("Cannot get result type for arithmetic operation") {
            if let Some(m) = null_arithmetic(ctx, &source.name, items, &rewritten_items).await {
                plan = Err(datafusion::error::DataFusionError::Plan(m));
            }
        }
    }
    let _ = ctx.deregister_table(reference);
    // GROUP BY expressions as written (the window bounds added above left out).
    let group_texts: Vec<String> = match &written {
        Some((_, sp::GroupByExpr::Expressions(e, _))) => {
            e.iter().map(ksql_ast_text).filter(|t| t != WINDOWSTART && t != WINDOWEND).collect()
        }
        _ => vec![],
    };
    let plan = match (plan.map_err(SqlError::from), written) {
        (Err(e), Some((items, _))) if e.to_string().contains("not found") => {
            return Err(unresolved_column(&items, body_selection.as_ref(), &source).unwrap_or(e));
        }
        (Err(e), Some((items, groups)))
            if e.to_string().contains("must appear in GROUP BY clause")
                || e.to_string().contains("not part of GROUP BY") =>
        {
            let is_aggregate = |name: &str| state.aggregate_functions().contains_key(&name.to_lowercase());
            return Err(match ungrouped_items(&items, &groups, having.as_ref(), &is_aggregate) {
                Some(m) => SqlError::plan(m),
                None => e,
            });
        }
        (plan, _) => plan?,
    };
    crate::typecheck::check(&plan)?;
    let plan = crate::typecheck::typed_rules(plan)?;
    // The analyzer adds DataFusion's type coercions (casts) to the plan.
    let plan = simplify(state.analyzer().execute_and_check(plan, state.config_options(), |_, _| {})?);
    let LogicalPlan::Projection(projection) = &plan else {
        return Err(SqlError::Internal(format!("expected a projection, planned:\n{}", plan.display_indent())));
    };
    let read_columns = referenced_columns(&plan, None);
    let props = ExecutionProps::new();
    let pctx = PhysicalPlanningContext::default();
    let planned = match peel_having(&projection.input) {
        (having, LogicalPlan::Aggregate(aggregate)) => {
            let groups = aggregate.group_expr.len() - if window.is_some() { 2 } else { 0 };
            let names: Vec<String> = aggregate.schema.fields().iter().take(groups).map(|f| f.name().clone()).collect();
            let mut plan = plan_aggregate(
                source,
                projection,
                having,
                aggregate,
                window,
                select.emit == Some(Emit::Final),
                &props,
                &pctx,
            )?;
            // Each GROUP BY expression is projected once (ksqlDB's messages).
            for n in &names {
                let copies: Vec<&str> = plan
                    .columns
                    .iter()
                    .filter(|c| c.key && c.origin.as_ref() == Some(n))
                    .map(|c| c.name.as_str())
                    .collect();
                if copies.len() > 1 {
                    return Err(SqlError::plan(format!(
                        "The projection contains a key column more than once: `{}`.",
                        copies.join("` and `")
                    )));
                }
            }
            // Every GROUP BY expression must be projected (it is the key): name the missing ones.
            let projected = |n: &String| plan.columns.iter().any(|c| c.key && c.origin.as_ref() == Some(n));
            let missing: Vec<&str> =
                names.iter().zip(&group_texts).filter(|(n, _)| !projected(n)).map(|(_, t)| t.as_str()).collect();
            plan.key_hint = match missing.as_slice() {
                [] => None,
                [one] => Some(format!("the grouping expression {one} in its projection (eg, SELECT {one}...).")),
                _ => Some(format!(
                    "the grouping expressions {} in its projection (eg, SELECT {}...).",
                    and_list(&missing),
                    missing.join(", ")
                )),
            };
            Ok(plan)
        }
        (_, LogicalPlan::Unnest(unnest)) if rekey.is_none() && source.kind == SourceKind::Stream => {
            plan_unnest(source, projection, unnest, &props, &pctx)
        }
        _ => {
            if contains_aggregate(&plan) {
                return Err(SqlError::Unsupported("this aggregation shape is not supported yet".into()));
            }
            plan_stateless(source, projection, rekey, &props, &pctx)
        }
    };
    planned.map(|plan| QueryPlan { read_columns, ..plan })
}

/// The names of the columns a plan's expressions read (None if one is a wildcard); with
/// `qualifiers`, only those of that source (by name or alias) and unqualified ones.
fn referenced_columns(plan: &LogicalPlan, qualifiers: Option<&[&str]>) -> Option<Vec<String>> {
    use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
    let mut names = std::collections::BTreeSet::new();
    let mut wildcard = false;
    let _ = plan.apply(|node| {
        node.apply_expressions(|e| {
            #[allow(deprecated)]
            let is_wildcard = e.exists(|x| Ok(matches!(x, Expr::Wildcard { .. })))?;
            wildcard |= is_wildcard;
            let ours = |c: &&datafusion::common::Column| match (&c.relation, qualifiers) {
                (Some(r), Some(q)) => q.contains(&r.table()),
                _ => true,
            };
            names.extend(e.column_refs().into_iter().filter(ours).map(|c| c.name.clone()));
            Ok(TreeNodeRecursion::Continue)
        })?;
        Ok(TreeNodeRecursion::Continue)
    });
    (!wildcard).then(|| names.into_iter().collect())
}

/// ksqlDB's message for a column that does not exist, naming the clause it is in.
fn unresolved_column(items: &[sp::SelectItem], selection: Option<&sp::Expr>, source: &SourceDef) -> Option<SqlError> {
    let known = |c: &str| source.columns.iter().any(|x| x.name == c) || PSEUDO_COLUMNS.contains(&c);
    let unknown = |e: &sp::Expr| {
        let mut found = None;
        let _ = sp::visit_expressions(e, |x: &sp::Expr| {
            if let sp::Expr::Identifier(id) = x {
                if !known(&id.value) && found.is_none() {
                    found = Some(id.value.clone());
                }
            }
            ControlFlow::<()>::Continue(())
        });
        found
    };
    for item in items {
        if let sp::SelectItem::UnnamedExpr(e) | sp::SelectItem::ExprWithAlias { expr: e, .. } = item {
            if let Some(c) = unknown(e) {
                return Some(SqlError::plan(format!("SELECT column '{c}' cannot be resolved.")));
            }
        }
    }
    let c = unknown(selection?)?;
    Some(SqlError::plan(format!("WHERE column '{c}' cannot be resolved.")))
}

/// ksqlDB's `col IN (...)` over a scalar column: string literals are read as the column's type
/// (`'4.000'` for a number, `'TrUe'` or `'Y'` for a boolean), literals compared with a STRING
/// column become strings, and elements of another type are refused with ksqlDB's messages.
fn in_list_literals(query: &mut sp::Query, source: &SourceDef) -> Result<()> {
    let column_type = |e: &sp::Expr| match e {
        sp::Expr::Identifier(id) => source.columns.iter().find(|c| c.name == id.value).map(|c| c.sql_type.clone()),
        _ => None,
    };
    let numeric = |t: &SqlType| matches!(t, SqlType::Int | SqlType::Bigint | SqlType::Double | SqlType::Decimal(..));
    let mut problem: Option<String> = None;
    let _ = sp::visit_expressions_mut(query, |e| {
        let sp::Expr::InList { expr, list, .. } = e else { return ControlFlow::<()>::Continue(()) };
        let Some(t) = column_type(expr) else { return ControlFlow::Continue(()) };
        if matches!(t, SqlType::Struct(_) | SqlType::Array(_) | SqlType::Map(..)) {
            if let Err(p) = complex_in_list(list, &t, &column_type) {
                problem.get_or_insert(p);
            }
            if list.is_empty() {
                let negated = matches!(e, sp::Expr::InList { negated: true, .. });
                *e = sp::Expr::value(sp::Value::Boolean(negated));
            }
            return ControlFlow::Continue(());
        }
        if !(numeric(&t) || matches!(t, SqlType::Boolean | SqlType::String)) {
            return ControlFlow::Continue(());
        }
        let mismatch = |other: &str, item: &sp::Expr| {
            format!(
                "Invalid Predicate: operator does not exist: {t} = {other} ({})\nHint: You might need to add explicit type casts.",
                ksql_ast_text(item)
            )
        };
        for item in list.iter_mut() {
            let literal = match item {
                sp::Expr::Value(v) => Some(v.value.clone()),
                _ => None,
            };
            let replacement = match (&t, literal) {
                (SqlType::String, Some(sp::Value::SingleQuotedString(_))) => None,
                (SqlType::String, Some(sp::Value::Number(n, _))) => Some(sp::Value::SingleQuotedString(n)),
                (SqlType::String, Some(sp::Value::Boolean(b))) => Some(sp::Value::SingleQuotedString(b.to_string())),
                (SqlType::Boolean, Some(sp::Value::SingleQuotedString(text))) => {
                    let l = text.to_lowercase();
                    let is = |word: &str| !l.is_empty() && word.starts_with(l.as_str());
                    if is("true") || is("yes") {
                        Some(sp::Value::Boolean(true))
                    } else if is("false") || is("no") {
                        Some(sp::Value::Boolean(false))
                    } else {
                        problem.get_or_insert(format!(
                            "Invalid Predicate: invalid input syntax for type BOOLEAN: \"{text}\"."
                        ));
                        None
                    }
                }
                (SqlType::Boolean, Some(sp::Value::Number(n, _))) => {
                    problem.get_or_insert(mismatch(number_type(&n), item));
                    None
                }
                (t, Some(sp::Value::SingleQuotedString(text))) if numeric(t) => match text.trim().parse::<f64>() {
                    Ok(_) => Some(sp::Value::Number(text.trim().to_string(), false)),
                    Err(_) => {
                        let name = match t {
                            SqlType::Decimal(..) => "DECIMAL".to_string(),
                            other => other.to_string(),
                        };
                        problem.get_or_insert(format!(
                            "Invalid Predicate: invalid input syntax for type {name}: \"{text}\"."
                        ));
                        None
                    }
                },
                (t, Some(sp::Value::Boolean(_))) if numeric(t) => {
                    problem.get_or_insert(mismatch("BOOLEAN", item));
                    None
                }
                (_, Some(_)) => None,
                (t, None) => {
                    if let Some(u) = column_type(item) {
                        let fits = u == *t || (numeric(t) && numeric(&u));
                        if !fits {
                            problem.get_or_insert(mismatch(&u.to_string(), item));
                        }
                    }
                    None
                }
            };
            if let Some(v) = replacement {
                *item = sp::Expr::value(v);
            }
        }
        ControlFlow::Continue(())
    });
    match problem {
        Some(p) => Err(SqlError::plan(p)),
        None => Ok(()),
    }
}

/// `C IN (...)` with `C` an ARRAY, MAP or STRUCT column, as ksqlDB compares them. The values of
/// constructors (`ARRAY[..]`, `MAP(k := v)`, `STRUCT(f := v)`) must fit `C`'s element, value or
/// field types: columns of a comparable type, text that reads as a number for a numeric one; a
/// number is no container. For a STRUCT, a constructor naming a field `C` does not have can never
/// be equal (it leaves the list), and other items but columns are cast to `C`'s type field by
/// field by name (missing fields null, `'7'` a number).
fn complex_in_list(
    list: &mut Vec<sp::Expr>,
    t: &SqlType,
    column_type: &dyn Fn(&sp::Expr) -> Option<SqlType>,
) -> std::result::Result<(), String> {
    let numeric = |t: &SqlType| matches!(t, SqlType::Int | SqlType::Bigint | SqlType::Double | SqlType::Decimal(..));
    let mismatch = |written: &dyn std::fmt::Display, item: &sp::Expr| {
        format!(
            "Invalid Predicate: operator does not exist: {t} = {written} ({})\nHint: You might need to add explicit type casts.",
            ksql_ast_text(item)
        )
    };
    for item in list.iter() {
        if let sp::Expr::Value(v) = item {
            if let sp::Value::Number(n, _) = &v.value {
                return Err(mismatch(&number_type(n), item));
            }
        }
        let Some((kind, parts)) = constructor_parts(item) else { continue };
        let mut fields_so_far = Vec::new();
        for (label, value) in parts {
            let expected = match (kind, t) {
                ("ARRAY", SqlType::Array(e)) | ("MAP", SqlType::Map(_, e)) => e.as_ref(),
                ("STRUCT", SqlType::Struct(fields)) => match fields.iter().find(|(n, _)| Some(n) == label.as_ref()) {
                    Some((_, f)) => f,
                    None => break,
                },
                _ => break,
            };
            if let sp::Expr::Value(v) = value {
                if let sp::Value::SingleQuotedString(text) = &v.value {
                    if numeric(expected) && text.trim().parse::<f64>().is_err() {
                        return Err(format!(
                            "Invalid Predicate: invalid input syntax for type {expected}: \"{text}\"."
                        ));
                    }
                }
            }
            let Some(c) = column_type(value) else { continue };
            let fits = c == *expected || (numeric(&c) && numeric(expected));
            fields_so_far.push((label.unwrap_or_default(), c.clone()));
            if !fits {
                let written = match kind {
                    "ARRAY" => SqlType::Array(Box::new(c)),
                    "MAP" => SqlType::Map(Box::new(SqlType::String), Box::new(c)),
                    _ => SqlType::Struct(fields_so_far),
                };
                return Err(mismatch(&written, item));
            }
        }
    }
    let SqlType::Struct(fields) = t else { return Ok(()) };
    let foreign = |item: &sp::Expr| match constructor_parts(item) {
        Some(("STRUCT", parts)) => parts.iter().any(|(n, _)| !fields.iter().any(|(f, _)| Some(f) == n.as_ref())),
        _ => false,
    };
    list.retain(|item| !foreign(item));
    for item in list.iter_mut() {
        // Columns keep their types (DataFusion widens both sides to a common one).
        if column_type(item).is_some() {
            continue;
        }
        let original = std::mem::replace(item, sp::Expr::value(sp::Value::Null));
        *item =
            call(crate::castfn::NAME, vec![original, sp::Expr::value(sp::Value::SingleQuotedString(t.to_string()))]);
    }
    Ok(())
}

/// One value of a constructor, with its field name or map key when it is a name.
type ConstructorPart<'a> = (Option<String>, &'a sp::Expr);

/// A constructor's kind and values: `ARRAY[..]`'s elements; `MAP(k := v, ..)`'s values and
/// `STRUCT(f := v, ..)`'s fields, with their names (None for elements and map keys that are not
/// names).
fn constructor_parts(item: &sp::Expr) -> Option<(&'static str, Vec<ConstructorPart<'_>>)> {
    if let sp::Expr::Array(a) = item {
        return Some(("ARRAY", a.elem.iter().map(|e| (None, e)).collect()));
    }
    let sp::Expr::Function(f) = item else { return None };
    let name = function_name(f);
    let kind = match name.as_deref() {
        Some("STRUCT") => "STRUCT",
        Some("MAP") => "MAP",
        Some("ARRAY") => "ARRAY",
        _ => return None,
    };
    let sp::FunctionArguments::List(args) = &f.args else { return None };
    args.args
        .iter()
        .map(|a| match (assignment(a), a) {
            (Some((sp::Expr::Identifier(id), value)), _) if kind != "ARRAY" => Some((Some(id.value.clone()), value)),
            (Some((_, value)), _) if kind != "ARRAY" => Some((None, value)),
            (None, sp::FunctionArg::Unnamed(sp::FunctionArgExpr::Expr(e))) if kind == "ARRAY" => Some((None, e)),
            _ => None,
        })
        .collect::<Option<Vec<_>>>()
        .map(|parts| (kind, parts))
}

/// The ksqlDB type of a number literal as written: DECIMAL with a point, else INTEGER or BIGINT.
fn number_type(n: &str) -> &'static str {
    if n.contains('.') {
        "DECIMAL"
    } else if n.parse::<i32>().is_ok() {
        "INTEGER"
    } else {
        "BIGINT"
    }
}

/// The two sides of a `name := value` argument (of `STRUCT(...)` or `MAP(...)`).
fn assignment(arg: &sp::FunctionArg) -> Option<(&sp::Expr, &sp::Expr)> {
    match arg {
        sp::FunctionArg::Unnamed(sp::FunctionArgExpr::Expr(sp::Expr::BinaryOp {
            left,
            op: sp::BinaryOperator::Assignment,
            right,
        })) => Some((left.as_ref(), right.as_ref())),
        _ => None,
    }
}

/// ksqlDB's `+` also concatenates strings: `a + b` with a string literal or STRING column on
/// either side becomes `a || b`. `sources`: the query's sources, each with the names that
/// qualify its columns (name and alias); with one source, any qualifier is its.
fn string_plus(query: &mut sp::Query, sources: &[(&[&str], &SourceDef)]) {
    let string_column = |qualifier: Option<&str>, name: &str| {
        sources
            .iter()
            .filter(|(names, _)| sources.len() == 1 || qualifier.is_none_or(|q| names.contains(&q)))
            .any(|(_, s)| s.columns.iter().any(|c| c.name == name && c.sql_type == SqlType::String))
    };
    let stringy = |e: &sp::Expr| -> bool {
        fn walk(e: &sp::Expr, column: &dyn Fn(Option<&str>, &str) -> bool) -> bool {
            match e {
                sp::Expr::Value(v) => matches!(v.value, sp::Value::SingleQuotedString(_)),
                sp::Expr::Identifier(id) => column(None, &id.value),
                sp::Expr::CompoundIdentifier(ids) => match &ids[..] {
                    [q, c] => column(Some(&q.value), &c.value),
                    _ => ids.last().is_some_and(|id| column(None, &id.value)),
                },
                sp::Expr::BinaryOp { op: sp::BinaryOperator::StringConcat, .. } => true,
                sp::Expr::Nested(inner) => walk(inner, column),
                _ => false,
            }
        }
        walk(e, &string_column)
    };
    let _ = sp::visit_expressions_mut(query, |e| {
        if let sp::Expr::BinaryOp { left, op, right } = e {
            if *op == sp::BinaryOperator::Plus && (stringy(left) || stringy(right)) {
                *op = sp::BinaryOperator::StringConcat;
            }
        }
        ControlFlow::<()>::Continue(())
    });
}

/// An expression as ksqlDB writes it in messages: binary operations in parentheses.
pub(crate) fn ksql_ast_text(e: &sp::Expr) -> String {
    match e {
        sp::Expr::BinaryOp { left, op, right } => {
            let op = if *op == sp::BinaryOperator::StringConcat { "+".to_string() } else { op.to_string() };
            format!("({} {op} {})", ksql_ast_text(left), ksql_ast_text(right))
        }
        sp::Expr::Nested(inner) => ksql_ast_text(inner),
        sp::Expr::Function(f) if matches!(constructor_parts(e), Some(("STRUCT" | "MAP", _))) => {
            // `STRUCT(F0:=V)`, `MAP('a':=V)`: assignments without spaces, as ksqlDB writes them.
            let sp::FunctionArguments::List(args) = &f.args else { return e.to_string() };
            let parts: Vec<String> = args
                .args
                .iter()
                .map(|a| match assignment(a) {
                    Some((left, right)) => format!("{}:={}", ksql_ast_text(left), ksql_ast_text(right)),
                    None => a.to_string(),
                })
                .collect();
            format!("{}({})", f.name.to_string().to_uppercase(), parts.join(", "))
        }
        sp::Expr::Identifier(id) => id.value.clone(),
        sp::Expr::CompoundIdentifier(ids) => ids.iter().map(|i| i.value.as_str()).collect::<Vec<_>>().join("."),
        e if is_null_literal(e) => "null".into(),
        other => other.to_string(),
    }
}

/// ksqlDB's rules for PARTITION BY, checked on the statement as written: NULL only alone,
/// columns of the source (PARTITION BY applies to the input), every expression projected (unless
/// the projection is `*`; else the key hint is returned), and each key column projected once.
fn check_partition_by(projection: &[sp::SelectItem], source: &SourceDef, exprs: &[sp::Expr]) -> Result<Option<String>> {
    if exprs.len() > 1 && exprs.iter().any(is_null_literal) {
        return Err(SqlError::plan("Cannot PARTITION BY multiple columns including NULL"));
    }
    let pseudo = PSEUDO_COLUMNS;
    let known = |name: &str| {
        source.columns.iter().any(|c| c.name.eq_ignore_ascii_case(name))
            || pseudo.iter().any(|p| p.eq_ignore_ascii_case(name))
    };
    let aliases: Vec<&str> = projection
        .iter()
        .filter_map(|i| match i {
            sp::SelectItem::ExprWithAlias { alias, .. } => Some(alias.value.as_str()),
            _ => None,
        })
        .collect();
    for e in exprs {
        let column = match e {
            sp::Expr::Identifier(id) => Some(&id.value),
            sp::Expr::CompoundIdentifier(ids) if ids.len() == 2 => Some(&ids[1].value),
            _ => None,
        };
        if let Some(c) = column.filter(|c| !known(c)) {
            let c = c.to_uppercase();
            let mut message = format!("PARTITION BY column '{c}' cannot be resolved.");
            if aliases.iter().any(|a| a.eq_ignore_ascii_case(&c)) {
                message.push_str(&format!(
                    " '{c}' must be a column in the source schema since PARTITION BY is applied on the input."
                ));
            }
            return Err(SqlError::plan(message));
        }
    }
    if exprs.iter().any(is_null_literal) {
        return Ok(None);
    }
    // Expressions compare as text, without quotes and qualifiers.
    let text = |e: &sp::Expr| unqualified(e, &source.name).to_string().replace(['"', '`'], "").to_uppercase();
    let wildcard =
        projection.iter().any(|i| matches!(i, sp::SelectItem::Wildcard(_) | sp::SelectItem::QualifiedWildcard(..)));
    let projected = |e: &sp::Expr| {
        projection
            .iter()
            .filter(|item| match item {
                sp::SelectItem::UnnamedExpr(x) | sp::SelectItem::ExprWithAlias { expr: x, .. } => text(x) == text(e),
                _ => false,
            })
            .count()
    };
    if !wildcard && exprs.iter().any(|e| projected(e) == 0) {
        let qualified: Vec<String> = exprs
            .iter()
            .map(|e| {
                let mut e = e.clone();
                let _ = sp::visit_expressions_mut(&mut e, |x: &mut sp::Expr| {
                    if let sp::Expr::Identifier(id) = x {
                        *x = sp::Expr::CompoundIdentifier(vec![sp::Ident::new(&source.name), id.clone()]);
                    }
                    ControlFlow::<()>::Continue(())
                });
                ksql_ast_text(&e).to_uppercase()
            })
            .collect();
        let noun = if qualified.len() == 1 { "expression" } else { "expressions" };
        return Ok(Some(format!(
            "the partitioning {noun} {} in its projection (eg, SELECT {}...).",
            and_list(&qualified),
            qualified.join(", ")
        )));
    }
    for e in exprs {
        let names: Vec<String> = projection
            .iter()
            .filter_map(|item| match item {
                sp::SelectItem::UnnamedExpr(x) if text(x) == text(e) => Some(text(x)),
                sp::SelectItem::ExprWithAlias { expr: x, alias } if text(x) == text(e) => {
                    Some(alias.value.to_uppercase())
                }
                _ => None,
            })
            .collect();
        if names.len() > 1 {
            return Err(SqlError::plan(format!(
                "The projection contains a key column (`{}`) more than once, aliased as: {}.",
                text(e),
                and_list(&names)
            )));
        }
    }
    Ok(None)
}

/// ksqlDB's rules for aggregations, checked on the statement as written: no aggregate calls
/// in GROUP BY, none nested in another, no GROUP BY expression twice, EMIT FINAL only over
/// windows, and a persistent aggregation needs a GROUP BY.
fn check_grouping(
    body: &sp::Select,
    source: &str,
    grouped: bool,
    push: bool,
    select: &Select,
    is_aggregate: &dyn Fn(&str) -> bool,
) -> Result<()> {
    let aggregate_in = |e: &sp::Expr| first_aggregate(e, is_aggregate);
    let group_exprs = match &body.group_by {
        sp::GroupByExpr::Expressions(exprs, _) => exprs.as_slice(),
        sp::GroupByExpr::All(_) => &[],
    };
    for e in group_exprs {
        if let Some(f) = aggregate_in(e) {
            return Err(SqlError::plan(format!(
                "GROUP BY does not support aggregate functions: {} is an aggregate function.",
                f.name.to_string().to_uppercase()
            )));
        }
    }
    // The same column, qualified or not, is the same expression.
    let text = |e: &sp::Expr| unqualified(e, source).to_string().to_uppercase();
    for (i, e) in group_exprs.iter().enumerate() {
        if group_exprs[..i].iter().any(|earlier| text(earlier) == text(e)) {
            return Err(SqlError::plan(format!("Duplicate GROUP BY expression: {}", ksql_ast_text(e).to_uppercase())));
        }
    }
    // The first aggregate call of each SELECT item (None: the item calls none, or is `*`).
    let item_aggregates: Vec<Option<sp::Function>> = body
        .projection
        .iter()
        .map(|item| match item {
            sp::SelectItem::UnnamedExpr(e) | sp::SelectItem::ExprWithAlias { expr: e, .. } => aggregate_in(e),
            _ => None,
        })
        .collect();
    let aggregates: Vec<&sp::Function> = item_aggregates.iter().flatten().collect();
    for f in &aggregates {
        if let sp::FunctionArguments::List(list) = &f.args {
            for arg in &list.args {
                if let sp::FunctionArg::Unnamed(sp::FunctionArgExpr::Expr(a)) = arg {
                    if let Some(inner) = aggregate_in(a) {
                        let inner_name = inner.name.to_string().to_uppercase();
                        return Err(SqlError::plan(format!(
                            "Aggregate functions can not be nested: {}({inner_name}())",
                            f.name.to_string().to_uppercase()
                        )));
                    }
                }
            }
        }
    }
    if select.emit == Some(Emit::Final) && select.window.is_none() && grouped {
        return Err(SqlError::plan("EMIT FINAL is only supported for windowed aggregations."));
    }
    let every_item_aggregates = item_aggregates.iter().all(Option::is_some);
    // (Columns outside aggregates get the ungrouped-items message instead.)
    if !grouped && !push && every_item_aggregates {
        if let Some(f) = aggregates.first() {
            let name = f.name.to_string().to_uppercase();
            let args = match &f.args {
                sp::FunctionArguments::List(list) if !list.args.is_empty() => list
                    .args
                    .iter()
                    .map(|a| match a {
                        sp::FunctionArg::Unnamed(sp::FunctionArgExpr::Expr(e)) => ksql_ast_text(e).to_uppercase(),
                        _ => "ROWTIME".to_string(),
                    })
                    .collect::<Vec<_>>()
                    .join(", "),
                _ => "ROWTIME".to_string(),
            };
            return Err(SqlError::plan(format!(
                "CREATE TABLE AS SELECT statement does not support aggregate function [{name}({args})] without a GROUP BY clause."
            )));
        }
    }
    Ok(())
}

/// Whether a SELECT item calls an aggregate function.
fn calls_aggregate(items: &[sp::SelectItem], is_aggregate: &dyn Fn(&str) -> bool) -> bool {
    items.iter().any(|item| match item {
        sp::SelectItem::UnnamedExpr(e) | sp::SelectItem::ExprWithAlias { expr: e, .. } => {
            first_aggregate(e, is_aggregate).is_some()
        }
        _ => false,
    })
}

/// The first aggregate function call in `e` (outermost first), if any.
fn first_aggregate(e: &sp::Expr, is_aggregate: &dyn Fn(&str) -> bool) -> Option<sp::Function> {
    let mut found = None;
    let _ = sp::visit_expressions(e, |x: &sp::Expr| {
        if let sp::Expr::Function(f) = x {
            if is_aggregate(&f.name.to_string()) {
                found = Some(f.clone());
                return ControlFlow::Break(());
            }
        }
        ControlFlow::Continue(())
    });
    found
}

/// Items as ksqlDB lists them in messages: `A`, `A and B`, `A, B and C`.
fn and_list<S: AsRef<str>>(items: &[S]) -> String {
    match items {
        [] => String::new(),
        [one] => one.as_ref().to_string(),
        [init @ .., last] => {
            format!("{} and {}", init.iter().map(|s| s.as_ref()).collect::<Vec<_>>().join(", "), last.as_ref())
        }
    }
}

/// `e` with the qualifier `source.` removed from its columns.
fn unqualified(e: &sp::Expr, source: &str) -> sp::Expr {
    let mut e = e.clone();
    let _ = sp::visit_expressions_mut(&mut e, |x: &mut sp::Expr| {
        if let sp::Expr::CompoundIdentifier(ids) = x {
            if ids.len() == 2 && ids[0].value.eq_ignore_ascii_case(source) {
                *x = sp::Expr::Identifier(ids[1].clone());
            }
        }
        ControlFlow::<()>::Continue(())
    });
    e
}

/// ksqlDB's message for SELECT items that neither aggregate nor are grouped: an item is listed
/// when a column it uses is neither inside an aggregate call nor inside a GROUP BY expression.
fn ungrouped_items(
    items: &[sp::SelectItem],
    group_by: &sp::GroupByExpr,
    having: Option<&sp::Expr>,
    is_aggregate: &dyn Fn(&str) -> bool,
) -> Option<String> {
    let groups: Vec<String> = match group_by {
        sp::GroupByExpr::Expressions(e, _) => e.iter().map(ksql_ast_text).collect(),
        _ => return None,
    };
    fn covered(e: &sp::Expr, groups: &[String], is_aggregate: &dyn Fn(&str) -> bool) -> bool {
        if groups.contains(&ksql_ast_text(e)) {
            return true;
        }
        match e {
            sp::Expr::Function(f) if is_aggregate(&f.name.to_string()) => true,
            sp::Expr::Identifier(_) | sp::Expr::CompoundIdentifier(_) => false,
            sp::Expr::Value(_) => true,
            other => match children(other) {
                // Unknown shapes: covered only without any column outside the groups.
                c if c.is_empty() => {
                    let mut ok = true;
                    let _ = sp::visit_expressions(other, |x: &sp::Expr| {
                        if matches!(x, sp::Expr::Identifier(_) | sp::Expr::CompoundIdentifier(_))
                            && !groups.contains(&ksql_ast_text(x))
                        {
                            ok = false;
                        }
                        ControlFlow::<()>::Continue(())
                    });
                    ok
                }
                c => c.iter().all(|x| covered(x, groups, is_aggregate)),
            },
        }
    }
    fn children(e: &sp::Expr) -> Vec<&sp::Expr> {
        match e {
            sp::Expr::BinaryOp { left, right, .. } => vec![left, right],
            sp::Expr::Nested(inner) | sp::Expr::UnaryOp { expr: inner, .. } | sp::Expr::Cast { expr: inner, .. } => {
                vec![inner]
            }
            sp::Expr::Substring { expr, substring_from, substring_for, .. } => std::iter::once(expr.as_ref())
                .chain(substring_from.as_deref())
                .chain(substring_for.as_deref())
                .collect(),
            sp::Expr::Function(f) => match &f.args {
                sp::FunctionArguments::List(l) => l
                    .args
                    .iter()
                    .filter_map(|a| match a {
                        sp::FunctionArg::Unnamed(sp::FunctionArgExpr::Expr(x)) => Some(x),
                        _ => None,
                    })
                    .collect(),
                _ => vec![],
            },
            _ => vec![],
        }
    }
    let exprs = items.iter().filter_map(|item| match item {
        sp::SelectItem::UnnamedExpr(e) | sp::SelectItem::ExprWithAlias { expr: e, .. } => Some(e),
        _ => None,
    });
    if !calls_aggregate(items, is_aggregate) && !groups.is_empty() {
        return Some("GROUP BY requires aggregate functions in either the SELECT or HAVING clause.".into());
    }
    let listed: Vec<String> = exprs.filter(|e| !covered(e, &groups, is_aggregate)).map(ksql_ast_text).collect();
    if !listed.is_empty() {
        return Some(format!(
            "Non-aggregate SELECT expression(s) not part of GROUP BY: {}\nEither add the column(s) to the GROUP BY or remove them from the SELECT.",
            listed.join(", ")
        ));
    }
    // HAVING: the columns it uses outside aggregate calls and grouped expressions.
    fn uncovered(e: &sp::Expr, groups: &[String], is_aggregate: &dyn Fn(&str) -> bool, out: &mut Vec<String>) {
        if groups.contains(&ksql_ast_text(e)) {
            return;
        }
        match e {
            sp::Expr::Function(f) if is_aggregate(&f.name.to_string()) => {}
            sp::Expr::Identifier(_) | sp::Expr::CompoundIdentifier(_) => {
                let name = ksql_ast_text(e);
                if !out.contains(&name) {
                    out.push(name);
                }
            }
            other => children(other).into_iter().for_each(|c| uncovered(c, groups, is_aggregate, out)),
        }
    }
    let mut columns = Vec::new();
    if let Some(h) = having {
        uncovered(h, &groups, is_aggregate, &mut columns);
    }
    (!columns.is_empty())
        .then(|| format!("Non-aggregate HAVING expression not part of GROUP BY: {}", columns.join(", ")))
}

/// `EXPLODE` (DataFusion's unnest): projection inside, unnest, projection outside; the record
/// time and null-value marker ride along as extra columns.
fn plan_unnest(
    source: SourceDef,
    projection: &datafusion::logical_expr::Projection,
    unnest: &datafusion::logical_expr::Unnest,
    props: &ExecutionProps,
    pctx: &PhysicalPlanningContext,
) -> Result<QueryPlan> {
    let LogicalPlan::Projection(inner) = unnest.input.as_ref() else {
        return Err(SqlError::Unsupported("this EXPLODE shape is not supported yet".into()));
    };
    if !unnest.struct_type_columns.is_empty() {
        return Err(SqlError::Unsupported("EXPLODE of a STRUCT is not supported".into()));
    }
    let (filter, scan_schema) = filter_over_scan(&inner.input)?;
    let physical = |e: &Expr| create_physical_expr(e, scan_schema, props, pctx).map_err(SqlError::from);
    let filter = filter.map(physical).transpose()?;
    let mut inner_exprs = inner.expr.iter().map(physical).collect::<Result<Vec<_>>>()?;
    let mut inner_fields: Vec<Field> =
        inner.schema.fields().iter().map(|f| f.as_ref().clone().with_nullable(true)).collect();
    let n_inner = inner_fields.len();
    inner_exprs.push(Arc::new(PhysColumn::new(HIDDEN_TS, index_in(scan_schema, rill_engine::source::ROWTIME)?)));
    inner_fields.push(Field::new(HIDDEN_TS, DataType::Int64, true));
    inner_exprs.push(Arc::new(PhysColumn::new(DELETE_COLUMN, index_in(scan_schema, rill_engine::source::DELETE)?)));
    inner_fields.push(Field::new(DELETE_COLUMN, DataType::Boolean, true));
    let inner_schema = Arc::new(Schema::new(inner_fields));
    let lists: Vec<usize> = unnest.list_type_columns.iter().map(|(i, _)| *i).collect();
    let mut sources = unnest.dependency_indices.clone();
    let mut exploded: Vec<bool> = sources.iter().map(|d| lists.contains(d)).collect();
    let mut unnest_fields: Vec<Field> =
        unnest.schema.fields().iter().map(|f| f.as_ref().clone().with_nullable(true)).collect();
    let n_unnest = unnest_fields.len();
    sources.extend([n_inner, n_inner + 1]);
    exploded.extend([false, false]);
    unnest_fields.push(Field::new(HIDDEN_TS, DataType::Int64, true));
    unnest_fields.push(Field::new(DELETE_COLUMN, DataType::Boolean, true));
    let unnest_schema = Arc::new(Schema::new(unnest_fields));
    let outer = |e: &Expr| create_physical_expr(e, &unnest.schema, props, pctx).map_err(SqlError::from);
    let key_names: Vec<&str> = source.key_columns().map(|c| c.name.as_str()).collect();
    let (mut exprs, columns, mut fields) = output_columns(projection, &outer, |c| key_names.contains(&c))?;
    exprs.push(Arc::new(PhysColumn::new(DELETE_COLUMN, n_unnest + 1)));
    fields.push(Field::new(DELETE_COLUMN, DataType::Boolean, true));
    let delete_column = Some(fields.len() - 1);
    exprs.push(Arc::new(PhysColumn::new(HIDDEN_TS, n_unnest)));
    fields.push(Field::new(HIDDEN_TS, DataType::Int64, true));
    let rowtime_column = fields.len() - 1;
    let schema = Arc::new(Schema::new(fields));
    let out_schema = schema.clone();
    let chain: ChainFactory = Arc::new(move || {
        Ok(Chain::new(vec![
            Box::new(CalcOperator::try_new(filter.clone(), inner_exprs.clone(), inner_schema.clone())?),
            Box::new(UnnestOperator::try_new(sources.clone(), exploded.clone(), unnest_schema.clone())?),
            Box::new(CalcOperator::try_new(None, exprs.clone(), out_schema.clone())?),
        ]))
    });
    Ok(QueryPlan {
        source,
        chain,
        stage: None,
        shard_keys: None,
        columns,
        schema,
        rowtime_column,
        delete_column,
        window: None,
        is_table: false,
        rekeyed: false,
        side_sources: vec![],
        key_hint: None,
        headers_column: None,
        side_headers: false,
        read_columns: None,
    })
}

fn plan_stateless(
    source: SourceDef,
    projection: &datafusion::logical_expr::Projection,
    rekey: Option<Vec<String>>,
    props: &ExecutionProps,
    pctx: &PhysicalPlanningContext,
) -> Result<QueryPlan> {
    let (filter, scan_schema) = filter_over_scan(&projection.input)?;
    // Each row's record headers go on to its output record: the reader of a source (not of a
    // join's output) appends them after the row's other columns. The expressions are planned
    // over the batch as it comes, headers included (a lambda's parameters are numbered after
    // the batch's columns).
    let carries_headers = source.name != JOINED;
    let headers = headers_field();
    let exec_schema = match carries_headers {
        true => scan_schema.join(&DFSchema::try_from(Schema::new(vec![headers.clone()]))?)?,
        false => scan_schema.clone(),
    };
    let physical = |e: &Expr| create_physical_expr(e, &exec_schema, props, pctx).map_err(SqlError::from);
    let mut filter = filter.map(physical).transpose()?;
    if source.kind == SourceKind::Stream {
        // A stream's null values pass through a projection, but a WHERE clause drops them.
        if let Some(f) = filter.take() {
            let delete = index_in(scan_schema, rill_engine::source::DELETE)?;
            let live: Arc<dyn PhysicalExpr> =
                Arc::new(NotExpr::new(Arc::new(PhysColumn::new(rill_engine::source::DELETE, delete))));
            filter = Some(Arc::new(BinaryExpr::new(f, datafusion::logical_expr::Operator::And, live)));
        }
    }
    let key_names: Vec<&str> = source.key_columns().map(|c| c.name.as_str()).collect();
    let rekeyed = rekey.is_some();
    let (mut exprs, mut columns, mut fields) =
        output_columns(projection, &physical, |c| !rekeyed && key_names.contains(&c))?;
    if let Some(keys) = rekey {
        // The partitioning expressions are the last projection items: they are the key.
        let n = columns.len() - keys.len();
        for (j, name) in keys.iter().enumerate() {
            columns[n + j].name = name.clone();
            columns[n + j].key = true;
            fields[n + j] = Field::new(name, fields[n + j].data_type().clone(), true);
        }
    }
    // A windowed source's rows keep their window (hidden columns, written into the key).
    let mut window = None;
    if let Some(kind) = source.window {
        for (name, hidden) in [(WINDOWSTART, "__RILL_WINDOWSTART"), (WINDOWEND, "__RILL_WINDOWEND")] {
            exprs.push(Arc::new(PhysColumn::new(name, index_in(scan_schema, name)?)));
            fields.push(Field::new(hidden, DataType::Int64, true));
        }
        window = Some((fields.len() - 2, fields.len() - 1, kind));
    }
    // Null values pass through as null values; a table's changelog keeps its deletes, and its
    // filtered-out rows become deletes.
    let is_table = source.kind == SourceKind::Table;
    let input_delete = index_in(scan_schema, rill_engine::source::DELETE)?;
    exprs.push(Arc::new(PhysColumn::new(DELETE_COLUMN, input_delete)));
    fields.push(Field::new(DELETE_COLUMN, DataType::Boolean, true));
    let delete_out = fields.len() - 1;
    let deletes = is_table.then_some((input_delete, delete_out));
    let key_columns: Vec<usize> = (0..columns.len()).filter(|i| columns[*i].key).collect();
    let headers_column = carries_headers.then(|| {
        exprs.push(Arc::new(PhysColumn::new(rill_engine::source::HEADERS, scan_schema.fields().len())));
        fields.push(headers);
        fields.len() - 1
    });
    let ts_index = index_in(scan_schema, rill_engine::source::ROWTIME)?;
    exprs.push(Arc::new(PhysColumn::new(rill_engine::source::ROWTIME, ts_index)));
    fields.push(Field::new(HIDDEN_TS, DataType::Int64, true));
    let rowtime_column = fields.len() - 1;
    let schema = Arc::new(Schema::new(fields));
    let calc_schema = schema.clone();
    let chain: ChainFactory = Arc::new(move || {
        let mut calc = CalcOperator::try_new(filter.clone(), exprs.clone(), calc_schema.clone())?;
        if let Some((input, output)) = deletes {
            calc = calc.with_table_deletes(input, output).with_emitted_keys(key_columns.clone())?;
        }
        Ok(Chain::new(vec![Box::new(calc)]))
    });
    Ok(QueryPlan {
        source,
        chain,
        stage: None,
        shard_keys: None,
        columns,
        schema,
        rowtime_column,
        delete_column: Some(delete_out),
        window,
        is_table,
        rekeyed,
        side_sources: vec![],
        key_hint: None,
        headers_column,
        side_headers: false,
        read_columns: None,
    })
}

#[allow(clippy::too_many_arguments)]
fn plan_aggregate(
    source: SourceDef,
    projection: &datafusion::logical_expr::Projection,
    having: Option<&Expr>,
    aggregate: &datafusion::logical_expr::Aggregate,
    window: Option<WindowConfig>,
    emit_final: bool,
    props: &ExecutionProps,
    pctx: &PhysicalPlanningContext,
) -> Result<QueryPlan> {
    let (filter, scan_schema) = filter_over_scan(&aggregate.input)?;
    let scan_physical = |e: &Expr| create_physical_expr(e, scan_schema, props, pctx).map_err(SqlError::from);
    let delete_index = index_in(scan_schema, rill_engine::source::DELETE)?;
    let from_table = source.kind == SourceKind::Table;
    // Per partition: WHERE, passing the source row through. With EMIT CHANGES, rows come with
    // their record headers (a last column), which the aggregation writes on the rows they
    // produce (final results, produced by time, carry none; nor do joins' rows yet).
    let source_rows = source.row_schema();
    let carries_headers = !emit_final && source.name != JOINED;
    let headers_index = carries_headers.then_some(source_rows.fields().len());
    let row_schema = if carries_headers { with_headers(&source_rows) } else { source_rows.clone() };
    let pre_filter = if from_table {
        // A table's filtered-out rows become deletes; TableDiffOperator turns them into retractions.
        filter.map(scan_physical).transpose()?
    } else {
        // Null values (tombstones) of a stream do not take part in aggregations.
        let not_deleted: Arc<dyn PhysicalExpr> =
            Arc::new(NotExpr::new(Arc::new(PhysColumn::new(rill_engine::source::DELETE, delete_index))));
        Some(match filter.map(scan_physical).transpose()? {
            Some(f) => Arc::new(BinaryExpr::new(f, datafusion::logical_expr::Operator::And, not_deleted))
                as Arc<dyn PhysicalExpr>,
            None => not_deleted,
        })
    };
    // The stage: the aggregation, then the projection over its output.
    let window_groups = if window.is_some() { 2 } else { 0 };
    let user_groups = aggregate.group_expr.len() - window_groups;
    let group_exprs = aggregate.group_expr[..user_groups].iter().map(scan_physical).collect::<Result<Vec<_>>>()?;
    let scan_arrow = scan_schema.as_arrow();
    let mut aggregates = Vec::new();
    let mut aggregate_filters = Vec::new();
    // A table's aggregates must retract its updated and deleted rows.
    let mut not_retractable: Vec<String> = Vec::new();
    for e in &aggregate.aggr_expr {
        let lowered = LoweredAggregateBuilder::new(e, scan_schema, scan_arrow, props, pctx).build()?;
        // DataFusion's sliding MIN/MAX retract in arrival order only (window frames), not the
        // arbitrary retractions of table updates; ksqlDB refuses them on tables too.
        let fun = lowered.aggregate.fun().name();
        let sliding_only = matches!(fun, "min" | "max");
        if from_table
            && (sliding_only
                || !lowered.aggregate.create_sliding_accumulator().is_ok_and(|a| a.supports_retract_batch()))
        {
            let name = match lowered.aggregate.fun().name() {
                "last_value" => "LATEST_BY_OFFSET".to_string(),
                "first_value" => "EARLIEST_BY_OFFSET".to_string(),
                other => other.to_uppercase(),
            };
            if !not_retractable.contains(&name) {
                not_retractable.push(name);
            }
        }
        if source.value_format.kind == rill_connectors::format::FormatKind::Delimited {
            // ksqlDB keeps aggregate state in the source's value format: DELIMITED holds only
            // single primitive values.
            let state = lowered.aggregate.state_fields()?;
            let nested = |t: &DataType| t.is_nested();
            if state.len() > 1 || state.iter().any(|f| nested(f.data_type())) {
                return Err(SqlError::plan(
                    "One of the functions used in the statement has an intermediate type that the value format can not handle. Please remove the function or change the format.",
                ));
            }
        }
        aggregates.push(lowered.aggregate);
        aggregate_filters.push(lowered.filter);
    }
    // Per partition: WHERE, passing on the source row. A stream's columns the stage never reads
    // are passed on as nulls: rows may go through a repartition topic, and long strings the
    // aggregation does not use would only weigh on it.
    let pseudo = [rill_engine::source::ROWOFFSET, rill_engine::source::ROWPARTITION];
    let mut read: std::collections::HashSet<usize> =
        pseudo.iter().filter_map(|c| index_in(scan_schema, c).ok()).chain([delete_index]).collect();
    read.insert(index_in(scan_schema, rill_engine::source::ROWTIME)?);
    let mut reads = |e: &Arc<dyn PhysicalExpr>| {
        read.extend(datafusion::physical_expr::utils::collect_columns(e).iter().map(|c| c.index()))
    };
    group_exprs.iter().for_each(&mut reads);
    for (a, f) in aggregates.iter().zip(&aggregate_filters) {
        a.expressions().iter().for_each(&mut reads);
        a.order_bys().iter().for_each(|o| reads(&o.expr));
        f.iter().for_each(&mut reads);
    }
    read.extend(headers_index);
    let mut identity = identity_exprs(&row_schema);
    if !from_table && scan_schema.fields().len() == source_rows.fields().len() {
        for (i, e) in identity.iter_mut().enumerate().filter(|(i, _)| !read.contains(i)) {
            if let Ok(null) = datafusion::common::ScalarValue::try_from(row_schema.field(i).data_type()) {
                *e = Arc::new(datafusion::physical_expr::expressions::Literal::new(null));
            }
        }
    }
    let pre_schema = row_schema.clone();
    let chain: ChainFactory = Arc::new(move || match &pre_filter {
        Some(f) => {
            let mut calc = CalcOperator::try_new(Some(f.clone()), identity.clone(), pre_schema.clone())?;
            if from_table {
                calc = calc.with_table_deletes(delete_index, delete_index);
            }
            Ok(Chain::new(vec![Box::new(calc)]))
        }
        None => Ok(Chain::new(vec![])),
    });
    if !not_retractable.is_empty() {
        let noun = if not_retractable.len() == 1 { "function" } else { "functions" };
        return Err(SqlError::plan(format!(
            "The aggregation {noun} {} cannot be applied to a table source, only to a stream source.",
            and_list(&not_retractable)
        )));
    }
    let agg_schema = aggregate.schema.clone();
    let (projection, narrow) = ksql_sums(projection, aggregate)?;
    let projection = &projection;
    let having = having.map(|h| create_physical_expr(h, &agg_schema, props, pctx)).transpose()?;
    let output_schema: SchemaRef = Arc::new(agg_schema.as_arrow().clone());
    let group_names: Vec<String> = agg_schema.fields().iter().take(user_groups).map(|f| f.name().clone()).collect();
    // The projection reads the aggregation's output batches: its columns, then the delete flag,
    // the row time and the headers (a lambda's parameters are numbered after all of them).
    let mut hidden =
        vec![Field::new(DELETE_COLUMN, DataType::Boolean, true), Field::new(HIDDEN_TS, DataType::Int64, true)];
    hidden.extend(headers_index.map(|_| headers_field()));
    let post_input = agg_schema.join(&DFSchema::try_from(Schema::new(hidden))?)?;
    let post_physical = |e: &Expr| create_physical_expr(e, &post_input, props, pctx).map_err(SqlError::from);
    let (mut exprs, mut columns, mut fields) =
        output_columns(projection, &post_physical, |c| group_names.iter().any(|g| g == c))?;
    for c in columns.iter_mut() {
        if let Some(t) = narrow.iter().find(|(n, _)| *n == c.name).and_then(|(_, t)| SqlType::from_arrow(t)) {
            c.sql_type = t;
        }
    }
    // Key columns are ordered as in GROUP BY, not as in the projection.
    let key_order = |c: &OutputColumn| {
        c.origin.as_ref().and_then(|o| group_names.iter().position(|g| g == o)).unwrap_or(usize::MAX)
    };
    let mut keys: Vec<usize> = (0..columns.len()).filter(|i| columns[*i].key).collect();
    let slots = keys.clone();
    keys.sort_by_key(|i| key_order(&columns[*i]));
    if keys != slots {
        let (c0, e0, f0) = (columns.clone(), exprs.clone(), fields.clone());
        for (slot, from) in slots.iter().zip(&keys) {
            columns[*slot] = c0[*from].clone();
            exprs[*slot] = e0[*from].clone();
            fields[*slot] = f0[*from].clone();
        }
    }
    let n_out = agg_schema.fields().len();
    let mut window_cols = None;
    if let Some(w) = window {
        exprs.push(Arc::new(PhysColumn::new(WINDOWSTART, user_groups)));
        exprs.push(Arc::new(PhysColumn::new(WINDOWEND, user_groups + 1)));
        fields.push(Field::new("__RILL_WINDOWSTART", DataType::Int64, true));
        fields.push(Field::new("__RILL_WINDOWEND", DataType::Int64, true));
        window_cols = Some((fields.len() - 2, fields.len() - 1, w.kind));
    }
    exprs.push(Arc::new(PhysColumn::new(DELETE_COLUMN, n_out)));
    fields.push(Field::new(DELETE_COLUMN, DataType::Boolean, true));
    let delete_column = Some(fields.len() - 1);
    let mut headers_column = None;
    if headers_index.is_some() {
        exprs.push(Arc::new(PhysColumn::new(rill_engine::source::HEADERS, n_out + 2)));
        fields.push(headers_field());
        headers_column = Some(fields.len() - 1);
    }
    exprs.push(Arc::new(PhysColumn::new(HIDDEN_TS, n_out + 1)));
    fields.push(Field::new(HIDDEN_TS, DataType::Int64, true));
    let rowtime_column = fields.len() - 1;
    let schema = Arc::new(Schema::new(fields));
    let rowtime_index = index_in(scan_schema, rill_engine::source::ROWTIME)?;
    let offset_index = index_in(scan_schema, rill_engine::source::ROWOFFSET).ok();
    let partition_index = index_in(scan_schema, rill_engine::source::ROWPARTITION).ok();
    let post_schema = schema.clone();
    let key_columns = source.key_columns().count();
    let retract_index = from_table.then(|| row_schema.fields().len());
    // A stream's groups are independent of each other: the stage may be split by group key.
    // (A table's rows are first diffed by the table's own key, which differs from the groups'.)
    let shard_keys = if from_table || group_exprs.is_empty() {
        None
    } else {
        let types =
            group_exprs.iter().map(|e| e.data_type(&row_schema)).collect::<datafusion::common::Result<Vec<_>>>()?;
        let repartition = vec![(!partitioned_by(&group_exprs, &source)).then_some("Aggregate-GroupBy")];
        Some(Arc::new(ShardKeys { inputs: vec![group_exprs.clone()], types, time: Some(rowtime_index), repartition }))
    };
    let stage: ChainFactory = Arc::new(move || {
        let cfg = AggregateConfig {
            window,
            emit_final,
            group_exprs: group_exprs.clone(),
            aggregates: aggregates.clone(),
            aggregate_filters: aggregate_filters.clone(),
            having: having.clone(),
            output_schema: output_schema.clone(),
            rowtime_index,
            offset_index,
            partition_index,
            retract_index,
            headers_index,
        };
        let agg = AggregateOperator::try_new(cfg, &row_schema)?;
        let post = CalcOperator::try_new(None, exprs.clone(), post_schema.clone())?;
        let mut ops: Vec<Box<dyn rill_engine::Operator>> = Vec::new();
        if from_table {
            ops.push(Box::new(TableDiffOperator::try_new(&row_schema, key_columns, delete_index)?));
        }
        ops.push(Box::new(agg));
        ops.push(Box::new(post));
        Ok(Chain::new(ops))
    });
    Ok(QueryPlan {
        source,
        chain,
        stage: Some(stage),
        shard_keys,
        columns,
        schema,
        rowtime_column,
        delete_column,
        window: window_cols,
        is_table: true,
        rekeyed: false,
        side_sources: vec![],
        key_hint: None,
        headers_column,
        side_headers: false,
        read_columns: None,
    })
}

/// ksqlDB's message for arithmetic with a bare NULL on a type DataFusion has no arithmetic for
/// (`MAP(1:='cat') + NULL`): the first such item's operation as written, and the other operand's
/// type (planned alone from its rewritten form). `None` if there is none.
async fn null_arithmetic(
    ctx: &SessionContext,
    source: &str,
    written: &[sp::SelectItem],
    rewritten: &[sp::SelectItem],
) -> Option<String> {
    let item_expr = |i: &sp::SelectItem| match i {
        sp::SelectItem::UnnamedExpr(e) | sp::SelectItem::ExprWithAlias { expr: e, .. } => Some(e.clone()),
        _ => None,
    };
    let is_null = |e: &sp::Expr| matches!(e, sp::Expr::Value(v) if v.value == sp::Value::Null);
    // (left, op, right) of the first arithmetic with a NULL side, in an item.
    let find = |e: &sp::Expr| {
        let mut found = None;
        let _ = sp::visit_expressions(e, |x: &sp::Expr| {
            if let sp::Expr::BinaryOp { left, op, right } = x {
                let arithmetic = matches!(
                    op,
                    sp::BinaryOperator::Plus
                        | sp::BinaryOperator::Minus
                        | sp::BinaryOperator::Multiply
                        | sp::BinaryOperator::Divide
                        | sp::BinaryOperator::Modulo
                );
                if arithmetic && (is_null(left) ^ is_null(right)) {
                    found = Some((left.as_ref().clone(), op.clone(), right.as_ref().clone()));
                    return ControlFlow::Break(());
                }
            }
            ControlFlow::Continue(())
        });
        found
    };
    for (w, r) in written.iter().zip(rewritten) {
        let (Some((wl, op, wr)), Some((rl, _, rr))) =
            (item_expr(w).and_then(|e| find(&e)), item_expr(r).and_then(|e| find(&e)))
        else {
            continue;
        };
        let operand = if is_null(&rl) { rr } else { rl };
        let sql = format!("SELECT {operand} FROM \"{source}\"");
        let plan = ctx.state().create_logical_plan(&sql).await.ok()?;
        let t = plan.schema().field(0).data_type().clone();
        let t = SqlType::from_arrow(&t).map_or_else(|| t.to_string(), |s| s.to_string());
        let text = |e: &sp::Expr| if is_null(e) { "null".to_string() } else { ksql_ast_text(e) };
        let types = if is_null(&wl) { format!("null and {t}") } else { format!("{t} and null") };
        return Some(format!(
            "Error processing expression: ({} {op} {}). Arithmetic on types {types} are not supported.",
            text(&wl),
            text(&wr)
        ));
    }
    None
}

/// [`typed_sums`]: INT sums' output names, DECIMAL sums' with their types.
pub(crate) type TypedSums = (Vec<String>, Vec<(String, DataType)>);

/// The SUMs among an aggregate's outputs that ksqlDB types as their argument: the output names
/// of INT sums (the analyzer casts their argument to BIGINT), and of DECIMAL sums with their type.
pub(crate) fn typed_sums(aggregate: &datafusion::logical_expr::Aggregate) -> Result<TypedSums> {
    use datafusion::logical_expr::ExprSchemable;
    let groups = aggregate.group_expr.len();
    let mut int_sums = Vec::new();
    let mut decimal_sums = Vec::new();
    for (i, e) in aggregate.aggr_expr.iter().enumerate() {
        if let Expr::AggregateFunction(f) = e.clone().unalias() {
            if !f.func.name().eq_ignore_ascii_case("sum") {
                continue;
            }
            let name = aggregate.schema.qualified_field(groups + i).1.name().clone();
            let arg = f.params.args.first();
            if let Some(DataType::Decimal128(p, s)) = arg.map(|a| a.get_type(aggregate.input.schema())).transpose()? {
                decimal_sums.push((name, DataType::Decimal128(p, s)));
                continue;
            }
            // The analyzer widens SUM's argument: look under its cast.
            let arg = arg.map(|a| match a {
                Expr::Cast(c) => c.expr.as_ref(),
                other => other,
            });
            if arg.map(|a| a.get_type(aggregate.input.schema())).transpose()? == Some(DataType::Int32) {
                int_sums.push(name);
            }
        }
    }
    Ok((int_sums, decimal_sums))
}

/// `x` is one of the aggregate outputs `names`, or Rill's `COALESCE(SUM(x), 0)` of one
/// (perhaps simplified to a CASE; the sum under the casts that coalescing with a literal adds).
pub(crate) fn is_sum_of(x: &Expr, names: &[String]) -> bool {
    let is_sum = |mut x: &Expr| {
        while let Expr::Cast(c) = x {
            x = c.expr.as_ref();
        }
        matches!(x, Expr::Column(c) if names.contains(&c.name))
    };
    match x {
        Expr::ScalarFunction(f) if f.func.name() == "coalesce" => f.args.first().is_some_and(is_sum),
        Expr::Case(c) => c.when_then_expr.len() == 1 && is_sum(&c.when_then_expr[0].1),
        other => is_sum(other),
    }
}

/// ksqlDB types a SUM as its argument ([`typed_sums`]). The projection casts INT sums back to
/// INT where it outputs them as they are (inside an expression the sum stays a BIGINT, as the
/// analyzer typed the expression: `F0 * SUM(F1)` is computed and written as BIGINT). DECIMAL
/// sums output as they are are returned by name with their declared type: the sink narrows
/// them, sending a row whose sum does not fit to the dead-letter topic.
fn ksql_sums(
    projection: &datafusion::logical_expr::Projection,
    aggregate: &datafusion::logical_expr::Aggregate,
) -> Result<(datafusion::logical_expr::Projection, Vec<(String, DataType)>)> {
    let (int_sums, decimal_sums) = typed_sums(aggregate)?;
    let unaliased = |e: &Expr| match e {
        Expr::Alias(a) => a.expr.as_ref().clone(),
        other => other.clone(),
    };
    let mut narrow = Vec::new();
    for (e, (_, field)) in projection.expr.iter().zip(projection.schema.iter()) {
        let e = unaliased(e);
        if let Some((_, t)) = decimal_sums.iter().find(|(n, _)| is_sum_of(&e, std::slice::from_ref(n))) {
            narrow.push((field.name().clone(), t.clone()));
        }
    }
    if int_sums.is_empty() {
        return Ok((projection.clone(), narrow));
    }
    let exprs = projection
        .expr
        .iter()
        .map(|e| match e {
            x if is_sum_of(x, &int_sums) => datafusion::logical_expr::cast(x.clone(), DataType::Int32),
            Expr::Alias(a) if is_sum_of(&a.expr, &int_sums) => {
                datafusion::logical_expr::cast(a.expr.as_ref().clone(), DataType::Int32).alias(a.name.clone())
            }
            other => other.clone(),
        })
        .collect::<Vec<_>>();
    // Keep each item's name (a bare `SUM(x)` would otherwise be renamed by the cast).
    let named = exprs
        .into_iter()
        .zip(projection.schema.fields())
        .map(|(e, f)| if e.schema_name().to_string() == *f.name() { e } else { e.alias(f.name()) })
        .collect();
    Ok((datafusion::logical_expr::Projection::try_new(named, projection.input.clone())?, narrow))
}

/// The visible output columns of a projection: physical expressions, column descriptions, fields.
#[allow(clippy::type_complexity)]
fn output_columns(
    projection: &datafusion::logical_expr::Projection,
    physical: &dyn Fn(&Expr) -> Result<Arc<dyn PhysicalExpr>>,
    is_key: impl Fn(&str) -> bool,
) -> Result<(Vec<Arc<dyn PhysicalExpr>>, Vec<OutputColumn>, Vec<Field>)> {
    let mut exprs = Vec::new();
    let mut columns = Vec::new();
    let mut fields = Vec::new();
    for (e, (_, field)) in projection.expr.iter().zip(projection.schema.iter()) {
        exprs.push(physical(e)?);
        let sql_type = SqlType::from_arrow(field.data_type()).ok_or_else(|| {
            SqlError::plan(format!("Column {} has type {} which Rill cannot write", field.name(), field.data_type()))
        })?;
        let origin = match e.clone().unalias() {
            Expr::Column(c) => Some(c.name),
            _ => None,
        };
        let key = origin.as_deref().is_some_and(&is_key);
        fields.push(Field::new(field.name(), sql_type.to_arrow(), true));
        columns.push(OutputColumn { name: field.name().clone(), sql_type, key, origin });
    }
    Ok((exprs, columns, fields))
}

fn index_in(schema: &DFSchema, name: &str) -> Result<usize> {
    schema.index_of_column_by_name(None, name).ok_or_else(|| SqlError::Internal(format!("source schema has no {name}")))
}

/// `Filter? → X`: the HAVING predicate above an aggregate, if any.
fn peel_having(plan: &LogicalPlan) -> (Option<&Expr>, &LogicalPlan) {
    match plan {
        LogicalPlan::Filter(f) if matches!(f.input.as_ref(), LogicalPlan::Aggregate(_)) => {
            (Some(&f.predicate), f.input.as_ref())
        }
        other => (None, other),
    }
}

/// Window bounds as configured, with ksqlDB's default grace period: 24 hours, none with `EMIT
/// FINAL` (a final result comes at the window's end unless a grace period is given).
fn window_config(w: &WindowSpec, emit_final: bool) -> WindowConfig {
    let default_grace: i64 = if emit_final { 0 } else { 24 * 3_600_000 };
    let (kind, retention, grace) = match w {
        WindowSpec::Tumbling { size, retention, grace } => {
            (WindowKind::Tumbling { size: size.millis }, retention, grace)
        }
        WindowSpec::Hopping { size, advance, retention, grace } => {
            (WindowKind::Hopping { size: size.millis, advance: advance.millis }, retention, grace)
        }
        WindowSpec::Session { gap, retention, grace } => (WindowKind::Session { gap: gap.millis }, retention, grace),
    };
    let grace = grace.map(|g| g.millis).unwrap_or(default_grace);
    let retention = retention.map(|r| r.millis).unwrap_or(0).max(grace);
    WindowConfig { kind, grace, retention }
}

/// Plans and runs a pull query: `select` over `rows` (the current rows of `source`, in its row
/// schema). Returns the output columns and the result batches.
pub async fn run_pull(
    ctx: &SessionContext,
    source: &SourceDef,
    select: &Select,
    rows: RecordBatch,
) -> Result<(Vec<OutputColumn>, Vec<RecordBatch>)> {
    let mut query = select.query.clone();
    let sp::SetExpr::Select(body) = query.body.as_mut() else {
        return Err(SqlError::Unsupported("Only simple SELECT statements are supported".into()));
    };
    if !body.from.iter().all(|f| f.joins.is_empty()) {
        return Err(SqlError::plan(
            "Pull queries don't support JOIN clauses. See https://cnfl.io/queries for more info.\nAdd EMIT CHANGES if you intended to issue a push query.",
        ));
    }
    if !matches!(body.group_by, sp::GroupByExpr::Expressions(ref e, _) if e.is_empty()) {
        return Err(SqlError::plan(
            "Pull queries don't support GROUP BY clauses. See https://cnfl.io/queries for more info.\nAdd EMIT CHANGES if you intended to issue a push query.",
        ));
    }
    if select.window.is_some() {
        return Err(SqlError::plan(
            "Pull queries don't support WINDOW clauses. See https://cnfl.io/queries for more info.\nAdd EMIT CHANGES if you intended to issue a push query.",
        ));
    }
    rewrite_projection(&mut body.projection, source, false, None, true);
    query.limit_clause = None;
    string_plus(&mut query, &[(&[source.name.as_str()], source)]);
    ksql_rules(&mut query)?;
    let table = MemTable::try_new(rows.schema(), vec![vec![rows]])?;
    let reference = TableReference::bare(source.name.clone());
    let _ = ctx.deregister_table(reference.clone());
    ctx.register_table(reference.clone(), Arc::new(table))?;
    let statement = DfStatement::Statement(Box::new(sp::Statement::Query(Box::new(query))));
    let plan = ctx.state().statement_to_plan(statement).await;
    let result = async {
        let plan = plan?;
        crate::typecheck::check(&plan)?;
        let plan = crate::typecheck::typed_rules(plan)?;
        let mut key_names: Vec<&str> = source.key_columns().map(|c| c.name.as_str()).collect();
        if source.window.is_some() {
            key_names.extend([WINDOWSTART, WINDOWEND]);
        }
        let columns = match &plan {
            LogicalPlan::Projection(p) => p
                .expr
                .iter()
                .zip(p.schema.fields())
                .map(|(e, f)| {
                    let origin = match e.clone().unalias() {
                        Expr::Column(c) => Some(c.name),
                        _ => None,
                    };
                    OutputColumn {
                        name: f.name().clone(),
                        sql_type: SqlType::from_arrow(f.data_type()).unwrap_or(SqlType::String),
                        key: origin.as_deref().is_some_and(|o| key_names.contains(&o)),
                        origin,
                    }
                })
                .collect(),
            other => other
                .schema()
                .fields()
                .iter()
                .map(|f| OutputColumn {
                    name: f.name().clone(),
                    sql_type: SqlType::from_arrow(f.data_type()).unwrap_or(SqlType::String),
                    key: false,
                    origin: None,
                })
                .collect(),
        };
        let batches = ctx.execute_logical_plan(plan).await?.collect().await?;
        Ok::<_, SqlError>((columns, batches))
    }
    .await;
    let _ = ctx.deregister_table(reference);
    let (columns, mut batches) = result?;
    if let Some(limit) = select.limit {
        let mut left = limit as usize;
        for b in batches.iter_mut() {
            let n = b.num_rows().min(left);
            *b = b.slice(0, n);
            left -= n;
        }
    }
    Ok((columns, batches))
}

/// The rewrites of a query's expressions to ksqlDB's rules, before DataFusion plans it: magic
/// timestamps, two-valued comparisons, [`ksql_expressions`]; and the argument counts of
/// GREATEST, LEAST and COALESCE (ksqlDB names the first two in lower case, the last in upper).
fn ksql_rules(query: &mut sp::Query) -> Result<()> {
    let mut empty = None;
    let mut not_literal = None;
    let _ = sp::visit_expressions(query, |e: &sp::Expr| {
        if let sp::Expr::Function(f) = e {
            let name = function_name(f).map(|n| n.to_lowercase());
            // The count and the null flag of LATEST/EARLIEST_BY_OFFSET are literals.
            if let (Some("latest_by_offset" | "earliest_by_offset"), sp::FunctionArguments::List(l)) =
                (name.as_deref(), &f.args)
            {
                let literal = |e: &sp::Expr| match e {
                    sp::Expr::UnaryOp { op: sp::UnaryOperator::Minus, expr } => matches!(**expr, sp::Expr::Value(_)),
                    e => matches!(e, sp::Expr::Value(_)),
                };
                for (i, arg) in l.args.iter().enumerate().skip(1) {
                    if let sp::FunctionArg::Unnamed(sp::FunctionArgExpr::Expr(a)) = arg {
                        if !literal(a) {
                            not_literal = Some(format!(
                                "Parameter {} passed to function {} must be a literal constant, but was expression: '{}'",
                                i + 1,
                                name.unwrap_or_default().to_uppercase(),
                                ksql_ast_text(a)
                            ));
                            return ControlFlow::Break(());
                        }
                    }
                }
            }
            let no_args = match &f.args {
                sp::FunctionArguments::None => true,
                sp::FunctionArguments::List(l) => {
                    l.args.iter().all(|a| matches!(a, sp::FunctionArg::Unnamed(sp::FunctionArgExpr::Wildcard)))
                }
                sp::FunctionArguments::Subquery(_) => false,
            };
            if no_args && matches!(name.as_deref(), Some("greatest" | "least")) {
                empty = name;
                return ControlFlow::Break(());
            }
            if no_args && name.as_deref() == Some("coalesce") {
                empty = Some("COALESCE".to_string());
                return ControlFlow::Break(());
            }
        }
        ControlFlow::Continue(())
    });
    if let Some(name) = empty {
        return Err(SqlError::plan(format!("Function '{name}' does not accept parameters ().")));
    }
    if let Some(message) = not_literal {
        return Err(SqlError::plan(message));
    }
    if let sp::SetExpr::Select(body) = query.body.as_ref() {
        if body.projection.iter().any(|i| {
            matches!(i, sp::SelectItem::UnnamedExpr(e) | sp::SelectItem::ExprWithAlias { expr: e, .. } if is_null_literal(e))
        }) {
            return Err(SqlError::plan(
                "Can't infer a type of null. Please explicitly cast it to a required type, e.g. CAST(null AS VARCHAR).",
            ));
        }
    }
    number_literals(query)?;
    constructors(query)?;
    like_escapes(query);
    magic_timestamps(query);
    two_valued_comparisons(query);
    ksql_expressions(query);
    Ok(())
}

/// `x LIKE p ESCAPE '!'`: DataFusion's LIKE escapes with the backslash only, so the pattern is
/// rewritten to it (`like_escape`, see `crate::textfns`).
fn like_escapes(query: &mut sp::Query) {
    let _ = sp::visit_expressions_mut(query, |e| {
        if let sp::Expr::Like { pattern, escape_char, .. } | sp::Expr::ILike { pattern, escape_char, .. } = e {
            let escape = match escape_char.as_ref().map(|c| &c.value) {
                Some(sp::Value::SingleQuotedString(c)) if c != "\\" => c.clone(),
                _ => return ControlFlow::<()>::Continue(()),
            };
            let text = sp::Expr::Value(sp::Value::SingleQuotedString(escape).into());
            **pattern = call("like_escape", vec![(**pattern).clone(), text]);
            *escape_char = None;
        }
        ControlFlow::Continue(())
    });
}

/// ksqlDB's rules for ARRAY[...] and MAP(...) constructors: not empty, not only untyped NULLs
/// (keys or values), and text beside integer literals must read as an integer.
fn constructors(query: &sp::Query) -> Result<()> {
    const ISSUE: &str = "(see https://github.com/confluentinc/ksql/issues/4239)";
    let mut problem = None;
    let _ = sp::visit_expressions(query, |e: &sp::Expr| {
        let found = match constructor_parts(e) {
            Some(("ARRAY", parts)) if parts.is_empty() => {
                Some(format!("Array constructor cannot be empty. Please supply at least one element {ISSUE}."))
            }
            Some(("ARRAY", parts)) if parts.iter().all(|(_, v)| is_null_literal(v)) => Some(format!(
                "Cannot construct an array with all NULL elements {ISSUE}. As a workaround, you may cast a NULL value to the desired type."
            )),
            Some(("ARRAY", parts)) => {
                let integer = |v: &sp::Expr| matches!(v, sp::Expr::Value(x) if matches!(&x.value, sp::Value::Number(n, _) if n.parse::<i32>().is_ok()));
                let text = parts.iter().find_map(|(_, v)| match v {
                    sp::Expr::Value(x) => match &x.value {
                        sp::Value::SingleQuotedString(t) if t.trim().parse::<f64>().is_err() => Some(t.clone()),
                        _ => None,
                    },
                    _ => None,
                });
                match text {
                    Some(t) if parts.iter().any(|(_, v)| integer(v)) => {
                        Some(format!("invalid input syntax for type INTEGER: \"{t}\""))
                    }
                    _ => None,
                }
            }
            Some(("MAP", _)) => {
                let sp::Expr::Function(f) = e else { return ControlFlow::Continue(()) };
                let sp::FunctionArguments::List(args) = &f.args else { return ControlFlow::Continue(()) };
                let pairs: Vec<(&sp::Expr, &sp::Expr)> = args.args.iter().filter_map(assignment).collect();
                if args.args.is_empty() {
                    Some(format!(
                        "Map constructor cannot be empty. Please supply at least one key value pair {ISSUE}."
                    ))
                } else if pairs.len() == args.args.len() && pairs.iter().all(|(k, _)| is_null_literal(k)) {
                    Some("Cannot construct a map with all NULL keys".to_string())
                } else if pairs.len() == args.args.len() && pairs.iter().all(|(_, v)| is_null_literal(v)) {
                    Some("Cannot construct a map with all NULL values".to_string())
                } else {
                    None
                }
            }
            Some(("STRUCT", parts)) => {
                let names: Vec<&String> = parts.iter().filter_map(|(n, _)| n.as_ref()).collect();
                let unique: std::collections::HashSet<&&String> = names.iter().collect();
                (unique.len() < names.len()).then(|| "Duplicate field names found in STRUCT".to_string())
            }
            _ => None,
        };
        match found {
            Some(m) => {
                problem = Some(m);
                ControlFlow::Break(())
            }
            None => ControlFlow::Continue(()),
        }
    });
    problem.map_or(Ok(()), |p| Err(SqlError::plan(p)))
}

/// Number literals out of range, refused as ksqlDB's parser refuses them: an integer beyond
/// BIGINT, a number with an exponent beyond DOUBLE. (ksqlDB's column in these messages is one
/// past the literal's first character.)
fn number_literals(query: &sp::Query) -> Result<()> {
    let mut negated = std::collections::HashSet::new();
    let mut problem = None;
    let _ = sp::visit_expressions(query, |e: &sp::Expr| {
        let (text, at) = match e {
            sp::Expr::UnaryOp { op: sp::UnaryOperator::Minus, expr } => match expr.as_ref() {
                sp::Expr::Value(v) => match &v.value {
                    sp::Value::Number(n, _) => {
                        negated.insert((v.span.start.line, v.span.start.column));
                        (format!("-{n}"), v.span.start)
                    }
                    _ => return ControlFlow::Continue(()),
                },
                _ => return ControlFlow::Continue(()),
            },
            sp::Expr::Value(v) if !negated.contains(&(v.span.start.line, v.span.start.column)) => match &v.value {
                sp::Value::Number(n, _) => (n.clone(), v.span.start),
                _ => return ControlFlow::Continue(()),
            },
            _ => return ControlFlow::Continue(()),
        };
        let found = if text.contains(['e', 'E']) {
            text.parse::<f64>().is_ok_and(|f| f.is_infinite()).then(|| format!("Number overflows DOUBLE: {text}"))
        } else if !text.contains('.') {
            text.parse::<i64>().is_err().then(|| format!("Invalid numeric literal: {text}"))
        } else {
            None
        };
        match found {
            Some(m) => {
                problem = Some(format!("Failed to prepare statement: line {}:{}: {m}", at.line, at.column + 1));
                ControlFlow::Break(())
            }
            None => ControlFlow::Continue(()),
        }
    });
    problem.map_or(Ok(()), |p| Err(SqlError::plan(p)))
}

/// ksqlDB's "magic" timestamps: in WHERE, a text literal compared with `ROWTIME`, `WINDOWSTART`
/// or `WINDOWEND` (by `=`, `<`, `BETWEEN`, ...) is a date-time (`'2020-02-10T08:31:44.001+0000'`,
/// or a prefix of one such as `'2020-02-10'`; UTC unless it has an offset), compared as its epoch
/// milliseconds. Text that is no date-time is left as it is (and fails to plan as a comparison of
/// a BIGINT with a STRING).
fn magic_timestamps(query: &mut sp::Query) {
    let sp::SetExpr::Select(body) = query.body.as_mut() else { return };
    let Some(selection) = body.selection.as_mut() else { return };
    let is_time = |e: &sp::Expr| {
        crate::pull::column_name(e).is_some_and(|n| {
            [rill_engine::source::ROWTIME, WINDOWSTART, WINDOWEND].iter().any(|t| n.eq_ignore_ascii_case(t))
        })
    };
    let to_millis = |e: &mut sp::Expr| {
        let sp::Expr::Value(v) = e else { return };
        let sp::Value::SingleQuotedString(s) = &v.value else { return };
        if let Some(ms) = crate::timefmt::parse_iso_prefix(s) {
            *e = sp::Expr::value(sp::Value::Number(ms.to_string(), false));
        }
    };
    let _ = sp::visit_expressions_mut(selection, |e| {
        match e {
            sp::Expr::BinaryOp { left, op, right } if is_comparison(op) => {
                if is_time(left) {
                    to_millis(right);
                } else if is_time(right) {
                    to_millis(left);
                }
            }
            sp::Expr::Between { expr, low, high, .. } if is_time(expr) => {
                to_millis(low);
                to_millis(high);
            }
            sp::Expr::InList { expr, list, .. } if is_time(expr) => list.iter_mut().for_each(to_millis),
            _ => {}
        }
        ControlFlow::<()>::Continue(())
    });
}

fn table_name(f: &sp::TableFactor) -> Result<(String, String)> {
    match f {
        sp::TableFactor::Table { name, alias, .. } => {
            let n = name.0.last().and_then(|p| p.as_ident()).map(|i| i.value.clone()).unwrap_or_default();
            let a = alias.as_ref().map(|a| a.name.value.clone()).unwrap_or_else(|| n.clone());
            Ok((n, a))
        }
        _ => Err(SqlError::Unsupported("Only streams and tables can be joined".into())),
    }
}

/// Whether a planning error is DataFusion's about a column (not one of Rill's ksqlDB messages,
/// which say where: `Line: 3, Col: 84: ...`).
fn datafusion_column_error(message: &str) -> bool {
    let columns = ["not found", "is ambiguous", "require unique expression names"];
    columns.iter().any(|m| message.contains(m)) && !message.contains("Line: ")
}

/// Why the SELECT list names a column that does not resolve, if it does: of the sources of
/// `select`'s FROM (see [`check_selected_columns`]).
fn selected_columns_error(select: &Select, catalog: &Catalog) -> Option<SqlError> {
    let sp::SetExpr::Select(body) = select.query.body.as_ref() else { return None };
    let from = body.from.first()?;
    let mut sides: Vec<Side> = Vec::new();
    for relation in std::iter::once(&from.relation).chain(from.joins.iter().map(|j| &j.relation)) {
        let (name, alias) = table_name(relation).ok()?;
        let def = catalog.sources.get(&name)?.clone();
        sides.push((name, alias, def));
    }
    check_selected_columns(body, &sides).err()
}

/// The columns a SELECT list names directly (`C`, `A.C`, `A.*`) must exist, with ksqlDB's
/// messages: an unknown qualifier, an unknown column, a column of several joined sources.
fn check_selected_columns(body: &sp::Select, sides: &[Side]) -> Result<()> {
    let pseudo = PSEUDO_COLUMNS;
    let has = |s: &Side, c: &str| s.2.columns.iter().any(|x| x.name == c);
    known_qualifiers(body, sides)?;
    for item in &body.projection {
        match item {
            sp::SelectItem::UnnamedExpr(e) | sp::SelectItem::ExprWithAlias { expr: e, .. } => match e {
                sp::Expr::Identifier(id) if !pseudo.contains(&id.value.as_str()) => {
                    let owners: Vec<&Side> = sides.iter().filter(|s| has(s, &id.value)).collect();
                    match owners[..] {
                        [] => return Err(SqlError::plan(format!("SELECT column '{}' cannot be resolved.", id.value))),
                        [_] => {}
                        [a, b, ..] => {
                            let at = id.span.start;
                            return Err(SqlError::plan(format!(
                                "Line: {}, Col: {}: Column '{2}' is ambiguous. Could be {3}.{2} or {4}.{2}.",
                                at.line, at.column, id.value, a.1, b.1
                            )));
                        }
                    }
                }
                sp::Expr::CompoundIdentifier(parts) if parts.len() == 2 => {
                    let (q, c) = (&parts[0].value, &parts[1].value);
                    if !has(side(sides, q)?, c) && !pseudo.contains(&c.as_str()) {
                        return Err(SqlError::plan(format!("SELECT column '{q}.{c}' cannot be resolved.")));
                    }
                }
                _ => {}
            },
            _ => {}
        }
    }
    Ok(())
}

/// The source named `q` (by name or alias), or ksqlDB's message that there is none.
fn side<'a>(sides: &'a [Side], q: &str) -> Result<&'a Side> {
    sides
        .iter()
        .find(|s| s.0 == q || s.1 == q)
        .ok_or_else(|| SqlError::plan(format!("'{q}' is not a valid stream/table name or alias.")))
}

/// Every `X.*` of the SELECT list names one of the sources.
fn known_qualifiers(body: &sp::Select, sides: &[Side]) -> Result<()> {
    for item in &body.projection {
        if let sp::SelectItem::QualifiedWildcard(sp::SelectItemQualifiedWildcardKind::ObjectName(name), _) = item {
            let q = name.0.last().and_then(|p| p.as_ident()).map(|i| i.value.clone()).unwrap_or_default();
            side(sides, &q)?;
        }
    }
    Ok(())
}

/// Name of the derived source a join becomes when more follows it (another join, GROUP BY,
/// WINDOW or PARTITION BY).
const JOINED: &str = "__RILL_JOIN";

/// One source of a join: its name, its alias (the name when it has none) and its definition.
type Side = (String, String, SourceDef);

/// Plans a query whose FROM has joins. One join alone is [`plan_join`]. Otherwise the query is
/// cut in two: a join query selecting every column of its sources (named `<ALIAS>_<COLUMN>`)
/// becomes a derived source, and the rest of the query (the last join of several; or GROUP BY,
/// WINDOW, PARTITION BY) is planned over it with its column references rewritten to those names.
/// Both run as one stage: the first part's operators, then the rest's; a later join's table
/// or stream reaches its own join operator (see [`Chain::with_side_routes`]). `headers`: the
/// output carries record headers (one join of a stream alone: see [`plan_join`]).
async fn plan_joins(ctx: &SessionContext, catalog: &Catalog, select: &Select, headers: bool) -> Result<QueryPlan> {
    let sp::SetExpr::Select(body) = select.query.body.as_ref() else {
        return Err(SqlError::Unsupported("Only simple SELECT statements are supported".into()));
    };
    let lookup =
        |n: &str| catalog.sources.get(n).cloned().ok_or_else(|| SqlError::NotFound(format!("{n} does not exist.")));
    let mut sides: Vec<Side> = Vec::new();
    for relation in std::iter::once(&body.from[0].relation).chain(body.from[0].joins.iter().map(|j| &j.relation)) {
        let (name, alias) = table_name(relation)?;
        sides.push((name.clone(), alias, lookup(&name)?));
    }
    let kafka: Vec<&str> = sides
        .iter()
        .filter(|(_, _, s)| s.value_format.kind == rill_connectors::format::FormatKind::Kafka)
        .map(|(n, _, _)| n.as_str())
        .collect();
    if !kafka.is_empty() {
        return Err(SqlError::plan(format!(
            "Source(s) {} are using the 'KAFKA' value format. This format does not yet support JOIN.",
            kafka.join(", ")
        )));
    }
    // (`X.*` of no source would otherwise select nothing.)
    known_qualifiers(body, &sides)?;
    let grouped = !matches!(body.group_by, sp::GroupByExpr::Expressions(ref e, _) if e.is_empty());
    let more = grouped || select.window.is_some() || !select.partition_by.is_empty();
    if sides.len() == 2 && !more {
        return plan_join(ctx, catalog, None, select, headers).await;
    }
    // With more after the joins, the first part is every join; otherwise all but the last.
    let first = if more { sides.len() } else { sides.len() - 1 };
    let mut inner = select.clone();
    inner.window = None;
    inner.partition_by.clear();
    inner.within.truncate(first - 1);
    if let sp::SetExpr::Select(b) = inner.query.body.as_mut() {
        b.from[0].joins.truncate(first - 1);
        b.projection = sides[..first]
            .iter()
            .flat_map(|(_, alias, source)| {
                let names = source.columns.iter().map(|c| c.name.as_str()).chain(side_pseudo_columns(source));
                names.map(move |c| sp::SelectItem::ExprWithAlias {
                    expr: sp::Expr::CompoundIdentifier(vec![quoted(alias), quoted(c)]),
                    alias: quoted(&format!("{alias}_{c}")),
                })
            })
            .collect();
        b.group_by = sp::GroupByExpr::Expressions(vec![], vec![]);
        b.having = None;
        if !more {
            // WHERE may name the last source: it is applied after the last join.
            b.selection = None;
        }
    }
    let joined = Box::pin(plan_joins(ctx, catalog, &inner, false)).await?;
    let (derived, adapt) = derived_source(&joined, &sides[0].2)?;
    let rows = derived.row_schema();
    let mut outer = select.clone();
    outer.within.drain(..first - 1);
    over_derived(&mut outer, &sides, first);
    if more {
        if let sp::SetExpr::Select(b) = outer.query.body.as_mut() {
            b.selection = None;
        }
    }
    let rest = if more {
        plan_single(ctx, derived.clone(), &outer, false).await?
    } else {
        plan_join(ctx, catalog, Some(&derived), &outer, false).await?
    };
    // One stage: the first part's stage, the adapter, the rest's partition chain and stage.
    let join_stage = joined.stage.clone().ok_or_else(|| SqlError::Internal("a join without a stage".into()))?;
    let (rest_chain, rest_stage) = (rest.chain.clone(), rest.stage.clone());
    let (first_inputs, rest_inputs) = (joined.side_sources.len(), rest.side_sources.len());
    let stage: ChainFactory = Arc::new(move || {
        let first = join_stage()?;
        let mut routes: Vec<usize> = (0..first_inputs).map(|i| first.side_route(i + 1)).collect();
        let mut ops = first.into_operators();
        ops.push(Box::new(CalcOperator::try_new(None, adapt.clone(), rows.clone())?));
        ops.extend(rest_chain()?.into_operators());
        if let Some(s) = &rest_stage {
            let s = s()?;
            let base = ops.len();
            routes.extend((0..rest_inputs).map(|i| base + s.side_route(i + 1)));
            ops.extend(s.into_operators());
        }
        Ok(Chain::new(ops).with_side_routes(routes))
    });
    let mut side_sources = joined.side_sources;
    side_sources.extend(rest.side_sources);
    Ok(QueryPlan {
        source: joined.source,
        chain: joined.chain,
        stage: Some(stage),
        // The joins of one statement are keyed differently: one chain.
        shard_keys: None,
        side_sources,
        headers_column: None,
        side_headers: false,
        read_columns: None,
        ..rest
    })
}

/// The derived source a join query's output becomes (its key first when it is a table), and
/// the expressions turning the join's output rows into that source's rows (pseudo columns
/// from the join's time and delete marker).
fn derived_source(joined: &QueryPlan, left: &SourceDef) -> Result<(SourceDef, Vec<Arc<dyn PhysicalExpr>>)> {
    let mut columns: Vec<crate::catalog::Column> = joined
        .columns
        .iter()
        .map(|c| crate::catalog::Column {
            name: c.name.clone(),
            sql_type: c.sql_type.clone(),
            key: joined.is_table && c.key,
            header: None,
        })
        .collect();
    columns.sort_by_key(|c| !c.key);
    let derived = SourceDef {
        name: JOINED.into(),
        kind: if joined.is_table { SourceKind::Table } else { SourceKind::Stream },
        read_only: true,
        columns,
        topic: left.topic.clone(),
        key_format: left.key_format.clone(),
        value_format: left.value_format.clone(),
        timestamp: None,
        timestamp_format: None,
        partitions: left.partitions,
        statement: String::new(),
        written_by: vec![],
        window: None,
    };
    let mut adapt: Vec<Arc<dyn PhysicalExpr>> = Vec::new();
    for f in derived.row_schema().fields() {
        let name = f.name().as_str();
        adapt.push(match name {
            rill_engine::source::ROWTIME => Arc::new(PhysColumn::new(HIDDEN_TS, joined.rowtime_column)),
            rill_engine::source::DELETE => match joined.delete_column {
                Some(d) => Arc::new(PhysColumn::new(DELETE_COLUMN, d)),
                None => Arc::new(datafusion::physical_expr::expressions::Literal::new(false.into())),
            },
            rill_engine::source::ROWPARTITION | rill_engine::source::ROWOFFSET => {
                let null = datafusion::scalar::ScalarValue::try_from(f.data_type())?;
                Arc::new(datafusion::physical_expr::expressions::Literal::new(null))
            }
            _ => Arc::new(PhysColumn::new(name, index_of(&joined.schema, name)?)),
        });
    }
    Ok((derived, adapt))
}

/// Rewrites `select` to read the derived source of its first `first` sources: FROM names it in
/// their place, the projection is named as ksqlDB names it (`a.x` is X, or A_X when several
/// sources have an X; `*` and `a.*` are every column as `<ALIAS>_<COLUMN>`), and references to
/// their columns (`a.x`, or an `x` only one source has) become the derived columns.
fn over_derived(select: &mut Select, sides: &[Side], first: usize) {
    let in_derived = |q: &str| sides[..first].iter().position(|s| s.0 == q || s.1 == q);
    let has = |s: &Side, c: &str| s.2.columns.iter().any(|x| x.name == c);
    // A qualified pseudo column of a joined source is a column of the derived source too.
    let has_qualified =
        |i: usize, c: &str| has(&sides[i], c) || (i < first && side_pseudo_columns(&sides[i].2).any(|p| p == c));
    // ksqlDB's `SELECT *` of joins re-keyed by PARTITION BY: each source's value columns, its
    // pseudo columns, then its key columns.
    let rekeyed = !select.partition_by.is_empty();
    let sp::SetExpr::Select(b) = select.query.body.as_mut() else { return };
    let mut items = Vec::new();
    for item in b.projection.drain(..) {
        let expand = |(i, s): (usize, &Side)| {
            let names: Vec<&str> = if rekeyed && i < first {
                let values = s.2.value_columns().map(|c| c.name.as_str());
                values.chain(side_pseudo_columns(&s.2)).chain(s.2.key_columns().map(|c| c.name.as_str())).collect()
            } else {
                s.2.key_columns().chain(s.2.value_columns()).map(|c| c.name.as_str()).collect()
            };
            for c in names {
                items.push(sp::SelectItem::ExprWithAlias {
                    expr: sp::Expr::CompoundIdentifier(vec![quoted(&s.1), quoted(c)]),
                    alias: quoted(&format!("{}_{c}", s.1)),
                });
            }
        };
        match item {
            sp::SelectItem::Wildcard(_) => sides.iter().enumerate().for_each(expand),
            sp::SelectItem::QualifiedWildcard(sp::SelectItemQualifiedWildcardKind::ObjectName(name), _) => {
                let q = name.0.last().and_then(|p| p.as_ident()).map(|i| i.value.clone()).unwrap_or_default();
                sides.iter().enumerate().filter(|(_, s)| s.0 == q || s.1 == q).for_each(expand);
            }
            sp::SelectItem::UnnamedExpr(sp::Expr::CompoundIdentifier(parts)) if parts.len() == 2 => {
                let c = parts[1].value.clone();
                let shared = sides.iter().filter(|s| has(s, &c)).count() > 1;
                let alias = if shared { format!("{}_{c}", parts[0].value) } else { c };
                items.push(sp::SelectItem::ExprWithAlias {
                    expr: sp::Expr::CompoundIdentifier(parts),
                    alias: quoted(&alias),
                });
            }
            sp::SelectItem::UnnamedExpr(sp::Expr::Identifier(id)) if sides.iter().any(|s| has(s, &id.value)) => {
                items.push(sp::SelectItem::ExprWithAlias { alias: id.clone(), expr: sp::Expr::Identifier(id) })
            }
            other => items.push(other),
        }
    }
    b.projection = items;
    b.from.truncate(1);
    b.from[0].joins.drain(..first - 1);
    b.from[0].relation = sp::TableFactor::Table {
        name: sp::ObjectName::from(vec![quoted(JOINED)]),
        alias: None,
        args: None,
        with_hints: vec![],
        version: None,
        with_ordinality: false,
        partitions: vec![],
        json_path: None,
        sample: None,
        index_hints: vec![],
    };
    let rewrite = |e: &mut sp::Expr| {
        let column = |i: usize, c: &str| sp::Expr::Identifier(quoted(&format!("{}_{c}", sides[i].1)));
        let replacement = match e {
            sp::Expr::CompoundIdentifier(parts) if parts.len() == 2 => in_derived(&parts[0].value)
                .filter(|i| has_qualified(*i, &parts[1].value))
                .map(|i| column(i, &parts[1].value)),
            sp::Expr::Identifier(id) => {
                let owners: Vec<usize> = (0..sides.len()).filter(|i| has(&sides[*i], &id.value)).collect();
                match owners[..] {
                    [i] if i < first => Some(column(i, &id.value)),
                    _ => None,
                }
            }
            _ => None,
        };
        if let Some(r) = replacement {
            *e = r;
        }
        ControlFlow::<()>::Continue(())
    };
    let _ = sp::visit_expressions_mut(&mut select.query, rewrite);
    for e in &mut select.partition_by {
        let _ = sp::visit_expressions_mut(e, rewrite);
    }
}

/// The pseudo columns a joined source passes on, as `<ALIAS>_<NAME>` columns of the derived
/// source: a stream's ROWTIME, ROWPARTITION and ROWOFFSET; a table's ROWTIME.
fn side_pseudo_columns<'a>(source: &SourceDef) -> impl Iterator<Item = &'a str> + use<'a> {
    let all: [&'a str; 3] =
        [rill_engine::source::ROWTIME, rill_engine::source::ROWPARTITION, rill_engine::source::ROWOFFSET];
    let n = if source.kind == SourceKind::Stream { 3 } else { 1 };
    all.into_iter().take(n)
}

/// A stream-table join: `FROM stream [LEFT] JOIN table ON <stream expr> = table.<key>`.
/// `derived`: the derived source named [`JOINED`] (the joins before this one), if any.
/// `headers`: output rows of a stream's join carry the record headers of the stream row that
/// produced them (a join that is part of a longer query does not: Rill does not carry them
/// from one join to the next or into an aggregation yet).
async fn plan_join(
    ctx: &SessionContext,
    catalog: &Catalog,
    derived: Option<&SourceDef>,
    select: &Select,
    headers: bool,
) -> Result<QueryPlan> {
    let mut query = select.query.clone();
    let sp::SetExpr::Select(body) = query.body.as_mut() else {
        return Err(SqlError::Unsupported("Only simple SELECT statements are supported".into()));
    };
    if body.from[0].joins.len() > 1 {
        return Err(SqlError::Internal("plan_join plans one join; plan_joins splits longer ones".into()));
    }
    let lookup = |n: &str| match derived {
        Some(d) if n == JOINED => Ok(d.clone()),
        _ => catalog.sources.get(n).cloned().ok_or_else(|| SqlError::NotFound(format!("{n} does not exist."))),
    };
    let (left_name, left_alias) = table_name(&body.from[0].relation)?;
    let (right_name, right_alias) = table_name(&body.from[0].joins[0].relation)?;
    let left = lookup(&left_name)?;
    let right = lookup(&right_name)?;
    let kind = match &body.from[0].joins[0].join_operator {
        sp::JoinOperator::Join(_) | sp::JoinOperator::Inner(_) => JoinKind::Inner,
        sp::JoinOperator::Left(_) | sp::JoinOperator::LeftOuter(_) => JoinKind::Left,
        sp::JoinOperator::Right(_) | sp::JoinOperator::RightOuter(_) => JoinKind::Right,
        sp::JoinOperator::FullOuter(_) => JoinKind::Full,
        _ => return Err(SqlError::Unsupported("This kind of join is not supported".into())),
    };
    let within = select.within.first().copied().flatten();
    check_join_sources(
        &body.from[0].joins[0].join_operator,
        [(&left_name, &left_alias, &left), (&right_name, &right_alias, &right)],
    )?;
    let type_text = match kind {
        JoinKind::Inner => "[INNER] JOIN",
        JoinKind::Left => "LEFT [OUTER] JOIN",
        JoinKind::Right => "RIGHT [OUTER] JOIN",
        JoinKind::Full => "[FULL] OUTER JOIN",
    };
    let stream_stream = match (left.kind, right.kind) {
        (SourceKind::Stream, SourceKind::Table) => {
            if matches!(kind, JoinKind::Right | JoinKind::Full) {
                return Err(SqlError::plan(format!(
                    "Invalid join type: {} join not supported for stream-table join. Got {left_name} {type_text} {right_name}.",
                    if kind == JoinKind::Full { "full-outer" } else { "right-outer" }
                )));
            }
            if within.is_some() {
                return Err(SqlError::plan(
                    "A window definition was provided for a Stream-Table join. These joins are not windowed. Please drop the window definition (ie. the WITHIN clause) and try to execute your join again.",
                ));
            }
            false
        }
        (SourceKind::Stream, SourceKind::Stream) => {
            if within.is_none() {
                return Err(SqlError::plan(
                    "Stream-Stream joins must have a WITHIN clause specified. None was provided. To learn about how to specify a WITHIN clause with a stream-stream join, please visit: https://docs.confluent.io/current/ksql/docs/syntax-reference.html#create-stream-as-select",
                ));
            }
            true
        }
        (SourceKind::Table, SourceKind::Stream) => {
            return Err(SqlError::plan(format!(
                "Invalid join order: table-stream joins are not supported; only stream-table joins. Got {left_name} {type_text} {right_name}."
            )))
        }
        (SourceKind::Table, SourceKind::Table) => false,
    };
    let table_table = left.kind == SourceKind::Table && right.kind == SourceKind::Table;
    let left_outer = kind == JoinKind::Left;
    let grouped = !matches!(body.group_by, sp::GroupByExpr::Expressions(ref e, _) if e.is_empty());
    if grouped || select.window.is_some() || !select.partition_by.is_empty() {
        return Err(SqlError::Internal("plan_join plans the join alone; plan_joins plans what follows it".into()));
    }
    // ksqlDB's synthetic key: a FULL OUTER join, or one comparing two expressions (neither side a
    // plain column), is keyed by ROWKEY = COALESCE(left, right), which the projection may select.
    let on_sides = match join_on(&body.from[0].joins[0].join_operator) {
        Some(sp::Expr::BinaryOp { left, op: sp::BinaryOperator::Eq, right }) => {
            Some(((**left).clone(), (**right).clone()))
        }
        _ => None,
    };
    let is_column = |e: &sp::Expr| matches!(e, sp::Expr::Identifier(_) | sp::Expr::CompoundIdentifier(_));
    let synthetic = match &on_sides {
        Some((a, b)) if kind == JoinKind::Full || (!is_column(a) && !is_column(b)) => {
            let text = format!("COALESCE({a}, {b})");
            let dialect = sqlparser::dialect::GenericDialect {};
            let parsed = sqlparser::parser::Parser::new(&dialect).try_with_sql(&text).and_then(|mut p| p.parse_expr());
            Some(parsed.map_err(|e| SqlError::Internal(format!("the synthetic key {text}: {e}")))?)
        }
        _ => None,
    };
    // Named ROWKEY, or ROWKEY_<n> with the first n no column of either source uses.
    let taken = |name: &str| left.columns.iter().chain(&right.columns).any(|c| c.name == name);
    let synthetic_name = std::iter::once("ROWKEY".to_string())
        .chain((1..).map(|n| format!("ROWKEY_{n}")))
        .find(|n| !taken(n))
        .unwrap_or_else(|| "ROWKEY".into());
    let key_hint = match (&on_sides, &synthetic) {
        (_, Some(_)) => Some(format!(
            "the join expression {0} in its projection (eg, SELECT {0}...).\n{0} was added as a synthetic key column because the join criteria did not match any source column. This expression must be included in the projection and may be aliased.",
            synthetic_name
        )),
        // Only the sides that are columns can be selected as the key.
        (Some((a, b)), None) => match (is_column(a), is_column(b)) {
            (true, true) => {
                let (a, b) = (ksql_ast_text(a), ksql_ast_text(b));
                Some(format!("the join expressions {a} or {b} in its projection (eg, SELECT {a}...)."))
            }
            (true, false) | (false, true) => {
                let c = ksql_ast_text(if is_column(a) { a } else { b });
                Some(format!("the join expression {c} in its projection (eg, SELECT {c}...)."))
            }
            (false, false) => None,
        },
        _ => None,
    };
    let mut synthetic_names: Vec<String> = Vec::new();
    for item in &body.projection {
        if let sp::SelectItem::ExprWithAlias { alias, .. } = item {
            if PSEUDO_COLUMNS.contains(&alias.value.as_str()) {
                return Err(SqlError::plan(format!(
                    "Reserved column name in select: `{}`. Please remove or alias the column.",
                    alias.value
                )));
            }
        }
    }
    // `*` is every column of both sources, named <ALIAS>_<COLUMN> as in ksqlDB.
    let mut items = Vec::new();
    for item in body.projection.drain(..) {
        let rowkey = |e: &sp::Expr| matches!(e, sp::Expr::Identifier(id) if id.value == synthetic_name);
        if let Some(key) = &synthetic {
            match item {
                sp::SelectItem::UnnamedExpr(ref e) if rowkey(e) => {
                    items.push(sp::SelectItem::ExprWithAlias { expr: key.clone(), alias: quoted(&synthetic_name) });
                    synthetic_names.push(synthetic_name.clone());
                    continue;
                }
                sp::SelectItem::ExprWithAlias { ref expr, ref alias } if rowkey(expr) => {
                    items.push(sp::SelectItem::ExprWithAlias { expr: key.clone(), alias: alias.clone() });
                    synthetic_names.push(alias.value.clone());
                    continue;
                }
                sp::SelectItem::Wildcard(_) => {
                    items.push(sp::SelectItem::ExprWithAlias { expr: key.clone(), alias: quoted(&synthetic_name) });
                    synthetic_names.push(synthetic_name.clone());
                }
                _ => {}
            }
        }
        // A windowed source's window bounds follow its key columns (ksqlDB).
        let expand = |source: &SourceDef, alias: &str, items: &mut Vec<sp::SelectItem>| {
            let bounds = source.window.map(|_| [WINDOWSTART, WINDOWEND]).into_iter().flatten();
            let keys = source.key_columns().map(|c| c.name.as_str());
            for name in keys.chain(bounds).chain(source.value_columns().map(|c| c.name.as_str())) {
                items.push(sp::SelectItem::ExprWithAlias {
                    expr: sp::Expr::CompoundIdentifier(vec![quoted(alias), quoted(name)]),
                    alias: quoted(&format!("{alias}_{name}")),
                });
            }
        };
        match item {
            sp::SelectItem::Wildcard(_) => {
                expand(&left, &left_alias, &mut items);
                expand(&right, &right_alias, &mut items);
            }
            sp::SelectItem::QualifiedWildcard(sp::SelectItemQualifiedWildcardKind::ObjectName(name), _) => {
                let a = name.0.last().and_then(|p| p.as_ident()).map(|i| i.value.clone()).unwrap_or_default();
                if a == left_alias {
                    expand(&left, &left_alias, &mut items);
                } else {
                    expand(&right, &right_alias, &mut items);
                }
            }
            other => items.push(other),
        }
    }
    body.projection = items;
    // A qualified column keeps its name unless both sources have a column of that name.
    let mut shared: Vec<String> = left
        .columns
        .iter()
        .filter(|c| right.columns.iter().any(|r| r.name == c.name))
        .map(|c| c.name.clone())
        .collect();
    shared.extend(
        [rill_engine::source::ROWTIME, rill_engine::source::ROWPARTITION, rill_engine::source::ROWOFFSET]
            .map(String::from),
    );
    // `A.S->*` of either source (rewrite_projection knows only the left one).
    let column = |q: Option<&str>, name: &str| {
        let side = match q {
            Some(q) if q == left_alias || q == left_name => Some(&left),
            Some(q) if q == right_alias || q == right_name => Some(&right),
            _ => None,
        };
        side.and_then(|s| s.columns.iter().find(|c| c.name == name)).map(|c| &c.sql_type)
    };
    body.projection = std::mem::take(&mut body.projection).into_iter().flat_map(|i| struct_all(i, &column)).collect();
    rewrite_projection(&mut body.projection, &left, false, Some(&shared), false);
    string_plus(
        &mut query,
        &[(&[left_name.as_str(), left_alias.as_str()], &left), (&[right_name.as_str(), right_alias.as_str()], &right)],
    );
    ksql_rules(&mut query)?;
    let refs = [(left.name.clone(), left.row_schema()), (right.name.clone(), right.row_schema())];
    for (name, schema) in &refs {
        let reference = TableReference::bare(name.clone());
        let _ = ctx.deregister_table(reference.clone());
        ctx.register_table(reference, Arc::new(MemTable::try_new(schema.clone(), vec![vec![]])?))?;
    }
    let statement = DfStatement::Statement(Box::new(sp::Statement::Query(Box::new(query))));
    let state = ctx.state();
    let plan = state.statement_to_plan(statement).await;
    for (name, _) in &refs {
        let _ = ctx.deregister_table(TableReference::bare(name.clone()));
    }
    let plan = plan?;
    crate::typecheck::check(&plan)?;
    let plan = crate::typecheck::typed_rules(plan)?;
    let source_of = |q: &str| {
        Some(if q == left_alias {
            left_name.clone()
        } else if q == right_alias {
            right_name.clone()
        } else {
            q.into()
        })
    };
    check_join_types(&plan, &source_of)?;
    let plan = simplify(state.analyzer().execute_and_check(plan, state.config_options(), |_, _| {})?);
    let read_columns = referenced_columns(&plan, Some(&[left_name.as_str(), left_alias.as_str()]));
    let LogicalPlan::Projection(projection) = &plan else {
        return Err(SqlError::Internal(format!("expected a projection, planned:\n{}", plan.display_indent())));
    };
    let (where_filter, join) = match projection.input.as_ref() {
        LogicalPlan::Filter(f) => match f.input.as_ref() {
            LogicalPlan::Join(j) => (Some(&f.predicate), j),
            other => {
                return Err(SqlError::Unsupported(format!(
                    "this join shape is not supported yet:\n{}",
                    other.display_indent()
                )))
            }
        },
        LogicalPlan::Join(j) => (None, j),
        other => {
            return Err(SqlError::Unsupported(format!(
                "this join shape is not supported yet:\n{}",
                other.display_indent()
            )))
        }
    };
    // The ON condition: DataFusion's planner leaves `a = b` in the join filter (its optimizer
    // would move it to `on`); either way it must be one equality between the two sides.
    let (a, b) = match (&join.on[..], &join.filter) {
        ([(a, b)], None) => (a.clone(), b.clone()),
        ([], Some(Expr::BinaryExpr(e))) if e.op == datafusion::logical_expr::Operator::Eq => {
            ((*e.left).clone(), (*e.right).clone())
        }
        _ => {
            return Err(SqlError::Unsupported(
                "A join condition must be one equality: <stream expression> = <table key>".into(),
            ))
        }
    };
    let (a_text, b_text) = (a.to_string(), b.to_string());
    let on_right =
        |e: &Expr| e.column_refs().iter().all(|c| join.right.schema().has_column(c)) && !e.column_refs().is_empty();
    let on_left =
        |e: &Expr| e.column_refs().iter().all(|c| join.left.schema().has_column(c)) && !e.column_refs().is_empty();
    let (stream_on, table_on) = if on_left(&a) && on_right(&b) {
        (a, b)
    } else if on_left(&b) && on_right(&a) {
        (b, a)
    } else {
        return Err(SqlError::plan(format!(
            "Invalid comparison expression in join '{a} = {b}'. Each side of the join comparision must contain references from exactly one source."
        )));
    };
    let table_keys: Vec<&str> = right.key_columns().map(|c| c.name.as_str()).collect();
    if table_table {
        let right_key = matches!(&table_on, Expr::Column(c) if table_keys.len() == 1 && c.name == table_keys[0]);
        if !right_key {
            let (x, y) = (&a_text, &b_text);
            return Err(SqlError::plan(format!(
                "Invalid join condition: table-table joins require to join on the primary key of the right input table. Got {x} = {y}."
            )));
        }
    }
    // A table-table join whose left side is not the left table's key is a foreign-key join.
    let left_key_names: Vec<&str> = left.key_columns().map(|c| c.name.as_str()).collect();
    let foreign_key = table_table
        && !matches!(&stream_on, Expr::Column(c) if left_key_names.len() == 1 && c.name == left_key_names[0]);
    if foreign_key && matches!(kind, JoinKind::Right | JoinKind::Full) {
        return Err(SqlError::plan(format!(
            "{} OUTER JOIN on a foreign key is not supported",
            if kind == JoinKind::Right { "RIGHT" } else { "FULL" }
        )));
    }
    match &table_on {
        _ if stream_stream || table_table => {}
        Expr::Column(c) if table_keys.len() == 1 && c.name == table_keys[0] => {}
        _ => {
            return Err(SqlError::plan(format!(
                "Invalid join condition: stream-table joins require to join on the table's primary key. Got {} = {}.",
                stream_on.to_string().replace(&format!("{left_alias}."), &format!("{left_name}.")),
                table_on.to_string().replace(&format!("{right_alias}."), &format!("{right_name}."))
            )))
        }
    }
    let props = ExecutionProps::new();
    let pctx = PhysicalPlanningContext::default();
    let left_schema = join.left.schema();
    let mut stream_key = vec![create_physical_expr(&stream_on, left_schema, &props, &pctx)?];
    // Windowed streams join per key and window: the window is part of the key (as ksqlDB
    // serialises it: a time window by its start, a session by both bounds), and the output keeps
    // the (left) window.
    let windowed = match (left.window, right.window) {
        (Some(kind), Some(_)) if stream_stream => Some(kind),
        _ => None,
    };
    let key_bounds: &[&str] = match windowed {
        Some(WindowKind::Session { .. }) => &[WINDOWSTART, WINDOWEND],
        _ => &[WINDOWSTART],
    };
    let columns_of = |schema: &DFSchema, names: &[&str]| -> Result<Vec<Arc<dyn PhysicalExpr>>> {
        names.iter().map(|w| Ok(Arc::new(PhysColumn::new(w, index_in(schema, w)?)) as Arc<dyn PhysicalExpr>)).collect()
    };
    let window_columns = |schema: &DFSchema| columns_of(schema, key_bounds);
    if windowed.is_some() {
        stream_key.extend(window_columns(left_schema)?);
    }
    let join_schema = join.schema.clone();
    let output_schema: SchemaRef = Arc::new(join_schema.as_arrow().clone());
    let table_schema = right.row_schema();
    let table_delete =
        table_schema.index_of(rill_engine::source::DELETE).map_err(|e| SqlError::Internal(e.to_string()))?;
    let post_physical = |e: &Expr| create_physical_expr(e, &join_schema, &props, &pctx).map_err(SqlError::from);
    let where_filter = where_filter.map(post_physical).transpose()?;
    let (mut exprs, mut columns, mut fields) = output_columns(projection, &post_physical, |_| false)?;
    if foreign_key {
        fk_key_columns(&mut columns, &projection.expr, join.left.schema(), left_key_names.len(), &left_alias)?;
    } else if synthetic.is_some() {
        for c in columns.iter_mut() {
            c.key = synthetic_names.contains(&c.name);
        }
    } else {
        // A projected join expression (compared with its qualifier) is the key.
        for (c, e) in columns.iter_mut().zip(&projection.expr) {
            let e = e.clone().unalias();
            c.key = e == stream_on || e == table_on;
        }
    }
    // One projected join column is the key: the first of the left side's, else the first of
    // the right side's, as ksqlDB chooses.
    // Its value is the join key of whichever side is present: COALESCE(left, right).
    let either = datafusion::logical_expr::when(stream_on.clone().is_not_null(), stream_on.clone())
        .otherwise(table_on.clone())?;
    let join_key = post_physical(&either)?;
    if !foreign_key && synthetic.is_none() {
        let preferred = &stream_on;
        let is = |i: usize, e: &Expr| projection.expr[i].clone().unalias() == *e;
        let candidates: Vec<usize> = (0..columns.len()).filter(|i| columns[*i].key).collect();
        let chosen = candidates.iter().copied().find(|i| is(*i, preferred)).or(candidates.first().copied());
        if let Some(c) = chosen {
            let key_expr = projection.expr[c].clone().unalias();
            let mut copies: Vec<&str> =
                candidates.iter().filter(|i| is(**i, &key_expr)).map(|i| columns[*i].name.as_str()).collect();
            if copies.len() > 1 {
                let first = copies[0].to_string();
                copies.sort_unstable();
                return Err(SqlError::plan(format!(
                    "The projection contains a key column (`{first}`) more than once, aliased as: {}.",
                    and_list(&copies)
                )));
            }
        }
        for (i, c) in columns.iter_mut().enumerate() {
            c.key = Some(i) == chosen;
        }
    }
    for (i, c) in columns.iter().enumerate() {
        if c.key && !foreign_key && exprs[i].data_type(&output_schema)? == join_key.data_type(&output_schema)? {
            exprs[i] = join_key.clone();
        }
    }
    let has_key = columns.iter().any(|c| c.key);
    let ts_index = left_schema
        .index_of_column_by_name(None, rill_engine::source::ROWTIME)
        .ok_or_else(|| SqlError::Internal("stream has no ROWTIME".into()))?;
    if stream_stream || table_table {
        // A joined row's time is the later of its two rows' times (ksqlDB).
        let right_ts = join.left.schema().fields().len()
            + join
                .right
                .schema()
                .index_of_column_by_name(None, rill_engine::source::ROWTIME)
                .ok_or_else(|| SqlError::Internal("stream has no ROWTIME".into()))?;
        let column = |i: usize| Expr::Column(datafusion::common::Column::from(join_schema.qualified_field(i)));
        let greatest = datafusion::execution::FunctionRegistry::udf(ctx, "greatest")?;
        let e = greatest.call(vec![column(ts_index), column(right_ts)]);
        exprs.push(post_physical(&e)?);
    } else {
        exprs.push(Arc::new(PhysColumn::new(HIDDEN_TS, ts_index)));
    }
    fields.push(Field::new(HIDDEN_TS, DataType::Int64, true));
    let mut window_out = None;
    if let Some(kind) = windowed {
        // Hidden window bounds before the time column (the sink writes them into the key).
        let ts = (exprs.pop(), fields.pop());
        let bounds = columns_of(left_schema, &[WINDOWSTART, WINDOWEND])?;
        for (e, name) in bounds.into_iter().zip(["__RILL_WINDOWSTART", "__RILL_WINDOWEND"]) {
            exprs.push(e);
            fields.push(Field::new(name, DataType::Int64, true));
        }
        window_out = Some((fields.len() - 2, fields.len() - 1, kind));
        if let (Some(e), Some(f)) = ts {
            exprs.push(e);
            fields.push(f);
        }
    }
    // Joins write the record headers of the row that produced an output row on it, as Kafka
    // Streams does: a stream's, or in a table-table join either table's, rows are read with
    // their headers (a last column), which the join operator moves after the join's columns (and
    // a table-table join's delete marker), and the output carries them on (before the time
    // column).
    let carries_headers = headers && (left.kind == SourceKind::Stream || table_table);
    let with_headers_of = |s: &SourceDef| carries_headers && (s.kind == SourceKind::Stream || table_table);
    let side_headers = with_headers_of(&right);
    let rows_of = |s: &SourceDef| match with_headers_of(s) {
        true => with_headers(&s.row_schema()),
        false => s.row_schema(),
    };
    let mut headers_column = None;
    let mut operator_schema = output_schema.clone();
    if carries_headers {
        operator_schema = with_headers(&output_schema);
        let ts = (exprs.pop(), fields.pop());
        // After the join's columns come a table-table join's delete marker and a foreign-key
        // join's time.
        let at = output_schema.fields().len() + usize::from(table_table) + usize::from(foreign_key);
        exprs.push(Arc::new(PhysColumn::new(rill_engine::source::HEADERS, at)));
        fields.push(headers_field());
        headers_column = Some(fields.len() - 1);
        exprs.extend(ts.0);
        fields.extend(ts.1);
    }
    let mut rowtime_column = fields.len() - 1;
    let mut schema = Arc::new(Schema::new(fields.clone()));
    // Per stream partition: drop null values (they take no part in joins); tables keep deletes.
    let chain = if left.kind == SourceKind::Table {
        Arc::new(|| Ok(Chain::new(vec![]))) as ChainFactory
    } else {
        drop_null_values(rows_of(&left))?
    };
    let post_schema = schema.clone();
    let table_key_columns = table_keys.len();
    let mut delete_column = None;
    let key_columns: Vec<usize> = (0..columns.len()).filter(|i| columns[*i].key).collect();
    let mut shard_keys = None;
    let (stage, side_chain): (ChainFactory, ChainFactory) = if foreign_key {
        // Rows failing WHERE become deletes; the row's time is the causing change's time.
        let join_len = output_schema.fields().len();
        let time = Arc::new(PhysColumn::new(JOIN_TIME_COLUMN, join_len + 1));
        let (delete_out, time_out) = table_join_columns(&mut exprs, &mut fields, join_len, Some(time))?;
        delete_column = Some(delete_out);
        rowtime_column = time_out;
        schema = Arc::new(Schema::new(fields.clone()));
        let post_schema = schema.clone();
        let (left_rows, right_rows) = (rows_of(&left), rows_of(&right));
        let left_delete = index_of(&left_rows, rill_engine::source::DELETE)?;
        let right_delete = index_of(&right_rows, rill_engine::source::DELETE)?;
        let left_time = index_of(&left_rows, rill_engine::source::ROWTIME)?;
        let right_time = index_of(&right_rows, rill_engine::source::ROWTIME)?;
        let fk = stream_key[0].clone();
        let left_key_columns = left_key_names.len();
        let exprs = exprs.clone();
        let filtered = where_filter.is_some();
        let stage: ChainFactory = Arc::new(move || {
            let join = ForeignKeyJoinOperator::try_new(ForeignKeyJoinConfig {
                left_schema: left_rows.clone(),
                left_key_columns,
                foreign_key: fk.clone(),
                right_schema: right_rows.clone(),
                left_delete,
                right_delete,
                left_time,
                right_time,
                left_outer,
                join_schema: output_schema.clone(),
                headers: carries_headers,
            })?;
            let mut post = CalcOperator::try_new(where_filter.clone(), exprs.clone(), post_schema.clone())?
                .with_table_deletes(join_len, delete_out);
            if filtered {
                post = post.with_emitted_keys(key_columns.clone())?;
            }
            Ok(Chain::new(vec![Box::new(join), Box::new(post)]))
        });
        (stage, Arc::new(|| Ok(Chain::new(vec![]))) as ChainFactory)
    } else if table_table {
        // The operator appends a delete marker after the join columns; pass it through, and
        // make rows failing WHERE deletes (table semantics).
        let join_len = output_schema.fields().len();
        let (delete_out, time_out) = table_join_columns(&mut exprs, &mut fields, join_len, None)?;
        delete_column = Some(delete_out);
        rowtime_column = time_out;
        schema = Arc::new(Schema::new(fields.clone()));
        let post_schema = schema.clone();
        let (left_rows, right_rows) = (rows_of(&left), rows_of(&right));
        let left_delete = index_of(&left_rows, rill_engine::source::DELETE)?;
        let right_delete = index_of(&right_rows, rill_engine::source::DELETE)?;
        let exprs = exprs.clone();
        let stage: ChainFactory = Arc::new(move || {
            let join = TableTableJoinOperator::try_new(TableTableJoinConfig {
                left_schema: left_rows.clone(),
                right_schema: right_rows.clone(),
                key_columns: 1,
                left_delete,
                right_delete,
                kind,
                join_schema: output_schema.clone(),
                headers: carries_headers,
            })?;
            let post = CalcOperator::try_new(where_filter.clone(), exprs.clone(), post_schema.clone())?
                .with_table_deletes(join_len, delete_out)
                .with_emitted_keys(key_columns.clone())?;
            Ok(Chain::new(vec![Box::new(join), Box::new(post)]))
        });
        (stage, Arc::new(|| Ok(Chain::new(vec![]))) as ChainFactory)
    } else if stream_stream {
        let w = within.ok_or_else(|| SqlError::Internal("a stream-stream join without WITHIN".into()))?;
        let right_rows = right.row_schema();
        let mut right_key = vec![create_physical_expr(&table_on, join.right.schema(), &props, &pctx)?];
        if windowed.is_some() {
            right_key.extend(window_columns(join.right.schema())?);
        }
        let right_time =
            right_rows.index_of(rill_engine::source::ROWTIME).map_err(|e| SqlError::Internal(e.to_string()))?;
        let (left_rows, right_rows) = (rows_of(&left), rows_of(&right));
        let grace = w.grace.map(|g| g.millis).unwrap_or(24 * 3_600_000);
        let eager_outer = w.grace.is_none();
        // Rows of different keys never meet: the stage may be split by join key.
        let types =
            stream_key.iter().map(|e| e.data_type(&left_rows)).collect::<datafusion::common::Result<Vec<_>>>()?;
        shard_keys = Some(Arc::new(ShardKeys {
            repartition: vec![
                // The join expression (window bounds, if any, follow it).
                (!partitioned_by(&stream_key[..1], &left)).then_some("Join-left"),
                (!partitioned_by(&right_key[..1], &right)).then_some("Join-right"),
            ],
            inputs: vec![stream_key.clone(), right_key.clone()],
            types,
            time: None,
        }));
        let stage: ChainFactory = Arc::new(move || {
            let join = StreamStreamJoinOperator::try_new(StreamStreamJoinConfig {
                left_key: stream_key.clone(),
                right_key: right_key.clone(),
                left_schema: left_rows.clone(),
                right_schema: right_rows.clone(),
                left_time: ts_index,
                right_time,
                before: w.before.millis,
                after: w.after.millis,
                grace,
                kind,
                eager_outer,
                output_schema: operator_schema.clone(),
                headers: carries_headers,
            })?;
            let post = CalcOperator::try_new(where_filter.clone(), exprs.clone(), post_schema.clone())?;
            Ok(Chain::new(vec![Box::new(join), Box::new(post)]))
        });
        (stage, drop_null_values(rows_of(&right))?)
    } else {
        let stage: ChainFactory = Arc::new(move || {
            let join = StreamTableJoinOperator::try_new(StreamTableJoinConfig {
                stream_key: stream_key.clone(),
                table_schema: table_schema.clone(),
                table_key_columns,
                table_delete,
                left_outer,
                output_schema: operator_schema.clone(),
                stream_headers: carries_headers,
            })?;
            let post = CalcOperator::try_new(where_filter.clone(), exprs.clone(), post_schema.clone())?;
            Ok(Chain::new(vec![Box::new(join), Box::new(post)]))
        });
        (stage, Arc::new(|| Ok(Chain::new(vec![]))))
    };
    Ok(QueryPlan {
        source: left,
        chain,
        stage: Some(stage),
        shard_keys,
        columns,
        schema,
        rowtime_column,
        delete_column,
        window: window_out,
        is_table: table_table,
        rekeyed: true,
        side_sources: vec![(right, side_chain)],
        key_hint: if foreign_key || has_key { None } else { key_hint },
        headers_column,
        side_headers,
        read_columns,
    })
}

/// The ON condition of a join, if it has one.
fn join_on(op: &sp::JoinOperator) -> Option<&sp::Expr> {
    match op {
        sp::JoinOperator::Join(c)
        | sp::JoinOperator::Inner(c)
        | sp::JoinOperator::Left(c)
        | sp::JoinOperator::LeftOuter(c)
        | sp::JoinOperator::Right(c)
        | sp::JoinOperator::RightOuter(c)
        | sp::JoinOperator::FullOuter(c) => match c {
            sp::JoinConstraint::On(e) => Some(e),
            _ => None,
        },
        _ => None,
    }
}

/// ksqlDB's prefix for a message about a place in the statement (`Line: 3, Col: 84: `).
fn at(location: sqlparser::tokenizer::Location) -> String {
    crate::error::Position::of(location).prefix()
}

/// ksqlDB's checks of a join before planning it: no self joins, one equality in ON, each side
/// naming columns of exactly one source, and windowed sources joined only to like-windowed
/// sources on their keys.
fn check_join_sources(op: &sp::JoinOperator, sides: [(&String, &String, &SourceDef); 2]) -> Result<()> {
    let [(left_name, _, left), (right_name, _, right)] = sides;
    if left_name == right_name {
        return Err(SqlError::plan(format!(
            "Can not join '{left_name}' to '{right_name}': self joins are not yet supported."
        )));
    }
    let Some(on) = join_on(op) else { return Ok(()) };
    let (a, b) = match on {
        sp::Expr::BinaryOp { op: sp::BinaryOperator::And, .. } => {
            return Err(SqlError::plan(format!(
                "Invalid join condition: joins on multiple conditions are not yet supported. Got {}.",
                ksql_ast_text(on)
            )))
        }
        sp::Expr::BinaryOp { left, op: sp::BinaryOperator::Eq, right } => (left.as_ref(), right.as_ref()),
        _ => return Ok(()),
    };
    // Which sources a side names (by qualifier), checking each qualified column exists.
    let pseudo = [rill_engine::source::ROWTIME, rill_engine::source::ROWPARTITION, rill_engine::source::ROWOFFSET];
    let mut problem = None;
    let mut refs = |e: &sp::Expr| -> Vec<usize> {
        let mut found = Vec::new();
        let _ = sp::visit_expressions(e, |x: &sp::Expr| {
            if let sp::Expr::CompoundIdentifier(parts) = x {
                if parts.len() == 2 {
                    let (q, c) = (&parts[0].value, &parts[1].value);
                    match sides.iter().position(|s| s.0 == q || s.1 == q) {
                        None => {
                            problem.get_or_insert(format!(
                                "Failed to prepare statement: '{q}' is not a valid stream/table name or alias."
                            ));
                        }
                        Some(i) => {
                            if !sides[i].2.columns.iter().any(|col| &col.name == c) && !pseudo.contains(&c.as_str()) {
                                problem.get_or_insert(format!(
                                    "{}JOIN ON column '{q}.{c}' cannot be resolved.",
                                    at(parts[0].span.start)
                                ));
                            }
                            found.push(i);
                        }
                    }
                }
            } else if matches!(x, sp::Expr::Identifier(_)) {
                found.push(usize::MAX);
            }
            ControlFlow::<()>::Continue(())
        });
        found
    };
    let (ra, rb) = (refs(a), refs(b));
    if let Some(p) = problem {
        return Err(SqlError::plan(p));
    }
    // A join key holding a map (ksqlDB names the join's columns `ALIAS_NAME`).
    for side in [a, b] {
        let sp::Expr::CompoundIdentifier(parts) = side else { continue };
        let [q, c] = &parts[..] else { continue };
        let Some(s) = sides.iter().find(|s| *s.0 == q.value || *s.1 == q.value) else { continue };
        if let Some(col) = s.2.columns.iter().find(|col| col.name == c.value) {
            if col.sql_type.contains_map() {
                return Err(crate::engine::map_key(&format!("{}_{}", q.value, c.value), &col.sql_type));
            }
        }
    }
    // A side that is an unqualified column both sources have.
    for side in [a, b] {
        let sp::Expr::Identifier(id) = side else { continue };
        let owners: Vec<&String> = sides
            .iter()
            .filter(|s| s.2.columns.iter().any(|col| col.name == id.value))
            .map(|s| if s.1.is_empty() { s.0 } else { s.1 })
            .collect();
        if let [l, r] = owners[..] {
            let (place, name) = (at(id.span.start), &id.value);
            return Err(SqlError::plan(format!(
                "Exception while preparing statement: {place}Column '{name}' is ambiguous. Could be {l}.{name} or {r}.{name}."
            )));
        }
    }
    for (side, r) in [(a, &ra), (b, &rb)] {
        if r.is_empty() {
            return Err(SqlError::plan(format!(
                "Invalid comparison expression '{}' in join '{}'. Each side of the join comparision must contain references from exactly one source.",
                ksql_ast_text(side),
                ksql_ast_text(on)
            )));
        }
    }
    // Windowed sources.
    let kind = |s: &SourceDef| s.window_type().unwrap_or("");
    match (left.window, right.window) {
        (None, None) => {}
        (Some(_), None) | (None, Some(_)) => {
            let (w, wn, n) =
                if left.window.is_some() { (left, left_name, right_name) } else { (right, right_name, left_name) };
            return Err(SqlError::plan(format!(
                "Can not join windowed source to non-windowed source.\n`{wn}` is {} windowed\n`{n}` is not windowed",
                kind(w)
            )));
        }
        (Some(l), Some(r)) => {
            let session = |w: WindowKind| matches!(w, WindowKind::Session { .. });
            if session(l) != session(r) {
                return Err(SqlError::plan(format!(
                    "Incompatible windowed sources.\nLeft source: {}\nRight source: {}\nSession windowed sources can only be joined to other session windowed sources, and may still not result in expected behaviour as session bounds must be an exact match for the join to work\nHopping and tumbling windowed sources can only be joined to other hopping and tumbling windowed sources",
                    kind(left),
                    kind(right)
                )));
            }
            let key_of = |e: &sp::Expr, s: &SourceDef| match e {
                sp::Expr::CompoundIdentifier(p) => s.key_columns().any(|k| Some(&k.name) == p.last().map(|i| &i.value)),
                sp::Expr::Identifier(i) => s.key_columns().any(|k| k.name == i.value),
                _ => false,
            };
            let size = |w: WindowKind| match w {
                WindowKind::Tumbling { size } | WindowKind::Hopping { size, .. } => size,
                WindowKind::Session { .. } => 0,
            };
            let tables = left.kind == SourceKind::Table && right.kind == SourceKind::Table;
            let source_of = |r: &[usize]| if r.first() == Some(&0) { left } else { right };
            let one_key = key_of(a, source_of(&ra)) != key_of(b, source_of(&rb));
            if tables && one_key {
                return Err(SqlError::plan("Foreign-key table-table joins are not supported on windowed tables."));
            }
            // Windows of different sizes meet where their keys serialise alike: schema-registry
            // key formats write a time window's start only (ksqlDB repartitions both sides and
            // matches the keys byte for byte); other key formats are refused.
            let registry_keys = left.key_format.kind.uses_registry() && right.key_format.kind.uses_registry();
            let sizes_meet = size(l) == size(r) || registry_keys;
            if !sizes_meet || !(key_of(a, left) && key_of(b, right) || key_of(a, right) && key_of(b, left)) {
                return Err(SqlError::plan(
                    "Implicit repartitioning of windowed sources is not supported. See https://github.com/confluentinc/ksql/issues/4385.",
                ));
            }
        }
    }
    Ok(())
}

/// Both sides of a join condition must have the same type (before DataFusion's coercion), as
/// ksqlDB requires: keys of different types never serialise alike.
fn check_join_types(plan: &LogicalPlan, source_of: &dyn Fn(&str) -> Option<String>) -> Result<()> {
    use datafusion::logical_expr::ExprSchemable;
    let mut node = plan;
    let join = loop {
        match node {
            LogicalPlan::Join(j) => break j,
            other => match other.inputs().first() {
                Some(input) => node = input,
                None => return Ok(()),
            },
        }
    };
    let pairs: Vec<(Expr, Expr)> = match (&join.on[..], &join.filter) {
        (on, _) if !on.is_empty() => on.to_vec(),
        (_, Some(Expr::BinaryExpr(e))) if e.op == datafusion::logical_expr::Operator::Eq => {
            vec![((*e.left).clone(), (*e.right).clone())]
        }
        _ => return Ok(()),
    };
    for (a, b) in pairs {
        let (ta, tb) = (a.get_type(&join.schema)?, b.get_type(&join.schema)?);
        let (sa, sb) = (SqlType::from_arrow(&ta), SqlType::from_arrow(&tb));
        if sa != sb && !(ta.is_null() || tb.is_null()) {
            let show = |t: Option<SqlType>, d: &DataType| t.map(|t| t.to_string()).unwrap_or_else(|| d.to_string());
            return Err(SqlError::plan(format!(
                "Invalid join condition: types don't match. Got {}{{{}}} = {}{{{}}}.",
                crate::exprtext::ksql_text(&a, source_of),
                show(sa, &ta),
                crate::exprtext::ksql_text(&b, source_of),
                show(sb, &tb)
            )));
        }
    }
    Ok(())
}

/// A table join's output: its operator appends a delete marker after the `join_len` join
/// columns; this passes it through before the hidden time column (last in `exprs`/`fields`),
/// whose expression `time` replaces when given. Returns the delete and time columns' indices.
fn table_join_columns(
    exprs: &mut Vec<Arc<dyn PhysicalExpr>>,
    fields: &mut Vec<Field>,
    join_len: usize,
    time: Option<Arc<dyn PhysicalExpr>>,
) -> Result<(usize, usize)> {
    let hidden_ts = exprs.pop().ok_or_else(|| SqlError::Internal("no time column".into()))?;
    let ts_field = fields.pop().ok_or_else(|| SqlError::Internal("no time field".into()))?;
    exprs.push(Arc::new(PhysColumn::new(DELETE_COLUMN, join_len)));
    fields.push(Field::new(DELETE_COLUMN, DataType::Boolean, true));
    let delete_out = fields.len() - 1;
    exprs.push(time.unwrap_or(hidden_ts));
    fields.push(ts_field);
    Ok((delete_out, fields.len() - 1))
}

/// The key of a foreign-key join's output is the left table's key: marks the projected left key
/// columns as keys, each of which must be selected exactly once (ksqlDB's rules).
fn fk_key_columns(
    columns: &mut [OutputColumn],
    projection: &[Expr],
    left: &DFSchema,
    key_count: usize,
    left_alias: &str,
) -> Result<()> {
    let mut missing = Vec::new();
    for k in 0..key_count {
        let key = Expr::Column(datafusion::common::Column::from(left.qualified_field(k)));
        let mut aliases = Vec::new();
        for (c, e) in columns.iter_mut().zip(projection) {
            if e.clone().unalias() == key {
                c.key = true;
                aliases.push(c.name.clone());
            }
        }
        let name = left.field(k).name();
        match aliases.len() {
            0 => missing.push(format!("`{name}`")),
            1 => {}
            _ => {
                aliases.sort();
                return Err(SqlError::plan(format!(
                    "The projection contains a key column (`{left_alias}_{name}`) more than once, aliased as: {}.",
                    aliases.join(" and ")
                )));
            }
        }
    }
    if !missing.is_empty() {
        let plural = if missing.len() > 1 { "s" } else { "" };
        return Err(SqlError::plan(format!(
            "Primary key column{plural} missing in projection. For foreign-key table-table joins, the projection must include all primary key columns from the left input table (`{left_alias}`). Missing column{plural}: {}.",
            missing.join(", ")
        )));
    }
    Ok(())
}

/// Whether rows keyed by `exprs` are partitioned by that key at `source` already: the
/// expressions are exactly its key columns, in order (ksqlDB's rule for needing no repartition
/// topic).
fn partitioned_by(exprs: &[Arc<dyn PhysicalExpr>], source: &SourceDef) -> bool {
    let keys: Vec<&str> = source.key_columns().map(|c| c.name.as_str()).collect();
    let named = |e: &Arc<dyn PhysicalExpr>| e.downcast_ref::<PhysColumn>().map(|c| c.name().to_string());
    let names: Vec<String> = exprs.iter().map_while(named).collect();
    !keys.is_empty() && names.len() == exprs.len() && names == keys
}

/// A per-partition chain that passes a stream's rows through but drops null values
/// (tombstones), which take no part in joins.
fn drop_null_values(rows: SchemaRef) -> Result<ChainFactory> {
    let delete = rows.index_of(rill_engine::source::DELETE).map_err(|e| SqlError::Internal(e.to_string()))?;
    let identity = identity_exprs(&rows);
    let not_deleted: Arc<dyn PhysicalExpr> =
        Arc::new(NotExpr::new(Arc::new(PhysColumn::new(rill_engine::source::DELETE, delete))));
    Ok(Arc::new(move || {
        Ok(Chain::new(vec![Box::new(CalcOperator::try_new(
            Some(not_deleted.clone()),
            identity.clone(),
            rows.clone(),
        )?)]))
    }))
}

/// The index of a column the planner itself added (a missing one is a bug).
fn index_of(schema: &Schema, name: &str) -> Result<usize> {
    schema.index_of(name).map_err(|e| SqlError::Internal(e.to_string()))
}

/// The column of record headers rows carry to their output records.
fn headers_field() -> Field {
    Field::new(rill_engine::source::HEADERS, rill_engine::source::headers_type(), true)
}

/// `rows` followed by the record headers column (see [`rill_engine::source::SourceSpec::carry_headers`]).
fn with_headers(rows: &Schema) -> SchemaRef {
    let mut fields: Vec<Field> = rows.fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.push(headers_field());
    Arc::new(Schema::new(fields))
}

/// One column reference per field: a projection that passes rows through unchanged.
fn identity_exprs(schema: &Schema) -> Vec<Arc<dyn PhysicalExpr>> {
    schema
        .fields()
        .iter()
        .enumerate()
        .map(|(i, f)| Arc::new(PhysColumn::new(f.name(), i)) as Arc<dyn PhysicalExpr>)
        .collect()
}

/// DataFusion's expression simplifier over the whole plan: constant folding, and rewrites some
/// functions need before they can be evaluated (COALESCE becomes CASE).
/// When simplification fails (constant folding can meet an error that evaluation would only
/// meet on some rows), the plan is used as it is.
fn simplify(plan: LogicalPlan) -> LogicalPlan {
    use datafusion::common::tree_node::TreeNode;
    use datafusion::optimizer::simplify_expressions::SimplifyExpressions;
    use datafusion::optimizer::{OptimizerContext, OptimizerRule};
    let rule = SimplifyExpressions::new();
    let config = OptimizerContext::new();
    match plan.clone().transform_up(|p| rule.rewrite(p, &config)) {
        Ok(t) => t.data,
        Err(_) => plan,
    }
}

fn contains_aggregate(plan: &LogicalPlan) -> bool {
    matches!(plan, LogicalPlan::Aggregate(_) | LogicalPlan::Window(_))
        || plan.inputs().iter().any(|p| contains_aggregate(p))
}

/// Finds `Filter? → TableScan` under the projection, through aliases.
fn filter_over_scan(plan: &LogicalPlan) -> Result<(Option<&Expr>, &DFSchema)> {
    match plan {
        LogicalPlan::Filter(f) => {
            let (inner, schema) = filter_over_scan(&f.input)?;
            if inner.is_some() {
                return Err(SqlError::Unsupported("nested filters are not supported".into()));
            }
            Ok((Some(&f.predicate), schema))
        }
        LogicalPlan::SubqueryAlias(a) => {
            let (f, _) = filter_over_scan(&a.input)?;
            Ok((f, a.schema.as_ref()))
        }
        LogicalPlan::TableScan(t) if t.projection.is_none() && t.filters.is_empty() => {
            Ok((None, t.projected_schema.as_ref()))
        }
        other => {
            Err(SqlError::Unsupported(format!("this query shape is not supported yet:\n{}", other.display_indent())))
        }
    }
}

/// ksqlDB's projection rules: `*` means key and value columns (not pseudo columns), and an
/// expression without an alias is named `KSQL_COL_<i>`.
/// `s->*`: one item per field of the struct `s` (a column, or a field of one), named as the
/// field; other items as they are. `column` gives the type of a column by qualifier and name.
fn struct_all<'a>(
    item: sp::SelectItem,
    column: &dyn Fn(Option<&str>, &str) -> Option<&'a SqlType>,
) -> Vec<sp::SelectItem> {
    fn type_of<'a>(e: &sp::Expr, column: &dyn Fn(Option<&str>, &str) -> Option<&'a SqlType>) -> Option<&'a SqlType> {
        match e {
            sp::Expr::Identifier(id) => column(None, &id.value),
            sp::Expr::CompoundIdentifier(ids) => match &ids[..] {
                [q, c] => column(Some(&q.value), &c.value),
                _ => None,
            },
            sp::Expr::Nested(inner) => type_of(inner, column),
            sp::Expr::BinaryOp { left, op: sp::BinaryOperator::Arrow, right } => {
                let (SqlType::Struct(fields), sp::Expr::Identifier(f)) = (type_of(left, column)?, right.as_ref())
                else {
                    return None;
                };
                fields.iter().find(|(n, _)| n.eq_ignore_ascii_case(&f.value)).map(|(_, t)| t)
            }
            _ => None,
        }
    }
    let sp::SelectItem::UnnamedExpr(sp::Expr::BinaryOp { left, op: sp::BinaryOperator::Arrow, right }) = &item else {
        return vec![item];
    };
    if !matches!(right.as_ref(), sp::Expr::Identifier(id) if id.value == crate::parser::STRUCT_ALL) {
        return vec![item];
    }
    let Some(SqlType::Struct(fields)) = type_of(left, column) else { return vec![item] };
    fields
        .iter()
        .map(|(name, _)| sp::SelectItem::ExprWithAlias {
            expr: sp::Expr::BinaryOp {
                left: left.clone(),
                op: sp::BinaryOperator::Arrow,
                right: Box::new(sp::Expr::Identifier(quoted(name))),
            },
            alias: quoted(name),
        })
        .collect()
}

fn rewrite_projection(
    items: &mut Vec<sp::SelectItem>,
    source: &SourceDef,
    values_first: bool,
    join: Option<&[String]>,
    window_columns: bool,
) {
    let mut out = Vec::with_capacity(items.len());
    let mut generated = 0usize;
    let taken: std::collections::HashSet<String> = source.columns.iter().map(|c| c.name.clone()).collect();
    let mut fields = std::collections::HashSet::new();
    // (One source: a qualifier can only name it, by name or alias. Joins expand first.)
    let column = |_: Option<&str>, name: &str| source.columns.iter().find(|c| c.name == name).map(|c| &c.sql_type);
    for item in std::mem::take(items).into_iter().flat_map(|i| struct_all(i, &column)) {
        match item {
            sp::SelectItem::Wildcard(_) | sp::SelectItem::QualifiedWildcard(_, _) => {
                // After PARTITION BY the old key columns follow the value columns, as in ksqlDB.
                let mut cols: Vec<&str> = if values_first {
                    source.value_columns().chain(source.key_columns()).map(|c| c.name.as_str()).collect()
                } else {
                    source.key_columns().chain(source.value_columns()).map(|c| c.name.as_str()).collect()
                };
                if source.window.is_some() && window_columns {
                    // A windowed source's window bounds are key columns, after the key.
                    let at = source.key_columns().count();
                    cols.splice(at..at, [WINDOWSTART, WINDOWEND]);
                }
                for c in cols {
                    out.push(sp::SelectItem::UnnamedExpr(sp::Expr::Identifier(quoted(c))));
                }
            }
            sp::SelectItem::UnnamedExpr(e) => match e {
                sp::Expr::Identifier(_) => out.push(sp::SelectItem::UnnamedExpr(e)),
                sp::Expr::CompoundIdentifier(ref parts) => {
                    // In a join, `a.x` is named A_X (ksqlDB); otherwise X.
                    let last = parts.last().map(|p| p.value.clone()).unwrap_or_default();
                    let name = match (join, parts.len()) {
                        (Some(shared), n) if n >= 2 && shared.contains(&last) => {
                            format!("{}_{last}", parts[n - 2].value)
                        }
                        _ => last,
                    };
                    out.push(sp::SelectItem::ExprWithAlias { expr: e, alias: quoted(&name) });
                }
                // `s->f` is named after the field; `F_1`, `F_2`... when a source column or an
                // earlier field is named so (ksqlDB's rule).
                sp::Expr::BinaryOp { op: sp::BinaryOperator::Arrow, ref right, .. }
                    if matches!(right.as_ref(), sp::Expr::Identifier(_)) =>
                {
                    let sp::Expr::Identifier(field) = right.as_ref() else { continue };
                    let mut alias = field.clone();
                    let mut n = 0;
                    while taken.contains(&alias.value) || fields.contains(&alias.value) {
                        n += 1;
                        alias.value = format!("{}_{n}", field.value);
                    }
                    fields.insert(alias.value.clone());
                    out.push(sp::SelectItem::ExprWithAlias { expr: e, alias });
                }
                other => {
                    while taken.contains(&format!("KSQL_COL_{generated}")) {
                        generated += 1;
                    }
                    let alias = quoted(&format!("KSQL_COL_{generated}"));
                    generated += 1;
                    out.push(sp::SelectItem::ExprWithAlias { expr: other, alias });
                }
            },
            other => out.push(other),
        }
    }
    *items = out;
}

/// ksqlDB reserves the pseudo column names: they cannot be aliases, and window bounds can only
/// be selected from windowed aggregations.
fn check_reserved_names(items: &[sp::SelectItem], windowed: bool, persistent: bool) -> Result<()> {
    const RESERVED: [&str; 5] = PSEUDO_COLUMNS;
    let reserved_in_select = |name: &str| {
        SqlError::plan(format!("Reserved column name in select: `{name}`. Please remove or alias the column."))
    };
    for item in items {
        match item {
            // A persistent query cannot write a pseudo column under its own name.
            sp::SelectItem::UnnamedExpr(sp::Expr::Identifier(id))
                if persistent && RESERVED[..3].contains(&id.value.as_str()) =>
            {
                return Err(reserved_in_select(&id.value));
            }
            sp::SelectItem::ExprWithAlias { alias, .. } if RESERVED.contains(&alias.value.as_str()) => {
                return Err(SqlError::plan(format!(
                    "`{}` is a reserved column name. You cannot use it as an alias for a column.",
                    alias.value
                )));
            }
            sp::SelectItem::UnnamedExpr(sp::Expr::Identifier(id))
                if !windowed && (id.value == WINDOWSTART || id.value == WINDOWEND) =>
            {
                return Err(SqlError::plan(format!(
                    "Reserved column name in select: `{}`. Please remove or alias the column.",
                    id.value
                )));
            }
            _ => {}
        }
    }
    Ok(())
}

/// A call of the function `name` with `args`.
/// A call's arguments when they are all plain expressions (no names, no `*`).
fn plain_args(f: &sp::Function) -> Option<Vec<sp::Expr>> {
    let sp::FunctionArguments::List(list) = &f.args else { return None };
    list.args
        .iter()
        .map(|a| match a {
            sp::FunctionArg::Unnamed(sp::FunctionArgExpr::Expr(x)) => Some(x.clone()),
            _ => None,
        })
        .collect()
}

/// `CASE WHEN condition THEN then ELSE otherwise END`.
fn case_when(condition: sp::Expr, then: sp::Expr, otherwise: sp::Expr) -> sp::Expr {
    sp::Expr::Case {
        case_token: sp::helpers::attached_token::AttachedToken::empty(),
        end_token: sp::helpers::attached_token::AttachedToken::empty(),
        operand: None,
        conditions: vec![sp::CaseWhen { condition, result: then }],
        else_result: Some(Box::new(otherwise)),
    }
}

/// The untyped `NULL` literal.
fn is_null_literal(e: &sp::Expr) -> bool {
    matches!(e, sp::Expr::Value(v) if v.value == sp::Value::Null)
}

/// A function call's name, upper-cased (None for a qualified or quoted-odd name).
pub(crate) fn function_name(f: &sp::Function) -> Option<String> {
    f.name.0.last().and_then(|p| p.as_ident()).map(|i| i.value.to_uppercase())
}

fn call(name: &str, args: Vec<sp::Expr>) -> sp::Expr {
    sp::Expr::Function(sp::Function {
        name: sp::ObjectName::from(vec![sp::Ident::new(name)]),
        uses_odbc_syntax: false,
        parameters: sp::FunctionArguments::None,
        args: sp::FunctionArguments::List(sp::FunctionArgumentList {
            duplicate_treatment: None,
            args: args.into_iter().map(|a| sp::FunctionArg::Unnamed(sp::FunctionArgExpr::Expr(a))).collect(),
            clauses: vec![],
        }),
        filter: None,
        null_treatment: None,
        over: None,
        within_group: vec![],
    })
}

/// ksqlDB's comparisons are two-valued: comparing with a null is false, not null (`A = B` with
/// `A` null is false; so `NOT (A = B)` is true). Wraps comparisons in `coalesce(.., false)` in the
/// projection, and in WHERE and HAVING below anything but AND and OR (a null and a false filter
/// a row out alike there, so top-level comparisons stay as they are and keep their speed).
pub fn two_valued_comparisons(query: &mut sp::Query) {
    let sp::SetExpr::Select(body) = query.body.as_mut() else { return };
    for item in &mut body.projection {
        if let sp::SelectItem::UnnamedExpr(e) | sp::SelectItem::ExprWithAlias { expr: e, .. } = item {
            false_for_null(e);
        }
    }
    for filter in [&mut body.selection, &mut body.having].into_iter().flatten() {
        below_connectives(filter);
    }
}

fn below_connectives(e: &mut sp::Expr) {
    match e {
        sp::Expr::BinaryOp { left, op: sp::BinaryOperator::And | sp::BinaryOperator::Or, right } => {
            below_connectives(left);
            below_connectives(right);
        }
        sp::Expr::Nested(inner) => below_connectives(inner),
        sp::Expr::BinaryOp { left, op, right } if is_comparison(op) => {
            false_for_null(left);
            false_for_null(right);
        }
        other => false_for_null(other),
    }
}

fn is_comparison(op: &sp::BinaryOperator) -> bool {
    use sp::BinaryOperator as B;
    matches!(op, B::Eq | B::NotEq | B::Lt | B::LtEq | B::Gt | B::GtEq)
}

fn false_for_null(e: &mut sp::Expr) {
    let _ = sp::visit_expressions_mut(e, |e| {
        let compares = match e {
            sp::Expr::BinaryOp { op, .. } => is_comparison(op),
            sp::Expr::Between { .. } => true,
            _ => false,
        };
        if compares {
            let compared = std::mem::replace(e, sp::Expr::Value(sp::Value::Null.into()));
            *e = call("coalesce", vec![compared, sp::Expr::Value(sp::Value::Boolean(false).into())]);
        }
        ControlFlow::<()>::Continue(())
    });
}

/// ksqlDB expression rules that differ from DataFusion's:
/// * an integer literal that fits 32 bits is an INT (DataFusion would make it BIGINT);
/// * `struct->field` dereferences a STRUCT field;
/// * SUBSTRING counts positions as ksqlDB does (the `substring` UDF).
pub fn ksql_expressions<V: sp::VisitMut>(node: &mut V) {
    let _ = sp::visit_expressions_mut(node, |e| {
        match e {
            sp::Expr::Value(v) => {
                if let sp::Value::Number(n, false) = &v.value {
                    if n.parse::<i32>().is_ok() {
                        let literal = std::mem::replace(e, sp::Expr::Value(sp::Value::Null.into()));
                        *e = sp::Expr::Cast {
                            kind: sp::CastKind::Cast,
                            expr: Box::new(literal),
                            data_type: sp::DataType::Int(None),
                            array: false,
                            format: None,
                        };
                    }
                }
            }
            // DataFusion plans the elements of an `ARRAY[...]` literal without the enclosing
            // lambda's parameters; `make_array(...)` is the same function, planned with them.
            sp::Expr::Array(array) => *e = call("make_array", std::mem::take(&mut array.elem)),
            // ksqlDB's TRIM is Java's: every character up to the space (tabs, line breaks...).
            sp::Expr::Trim { expr, trim_where: None, trim_what: None, trim_characters: None } => {
                let java_space: String = ('\u{0}'..=' ').collect();
                let chars = sp::Expr::Value(sp::Value::SingleQuotedString(java_space).into());
                *e = call("btrim", vec![expr.as_ref().clone(), chars]);
            }
            sp::Expr::Substring { expr, substring_from, substring_for, .. } => {
                // ksqlDB counts SUBSTRING's positions its own way (the `substring` UDF).
                let mut args = vec![expr.as_ref().clone()];
                args.extend(substring_from.as_deref().cloned());
                args.extend(substring_for.as_deref().cloned());
                *e = call("substring", args);
            }
            sp::Expr::Function(f) => {
                let name = function_name(f);
                let args = plain_args(f);
                // DATEADD(DAYS, n, d) and the like: the unit keyword is passed as text.
                if name.as_deref().is_some_and(|n| crate::datefns::WITH_UNIT.contains(&n)) {
                    if let sp::FunctionArguments::List(list) = &mut f.args {
                        if let Some(sp::FunctionArg::Unnamed(sp::FunctionArgExpr::Expr(first))) = list.args.first_mut()
                        {
                            if let sp::Expr::Identifier(id) = first {
                                if id.quote_style.is_none() && crate::datefns::is_unit(&id.value) {
                                    *first = sp::Expr::Value(sp::Value::SingleQuotedString(id.value.clone()).into());
                                }
                            }
                        }
                    }
                    return ControlFlow::Continue(());
                }
                // ksqlDB's one-argument LOG is the natural logarithm (DataFusion's is base 10);
                // its two-argument LOG is NaN for bases DataFusion's computes something for.
                if name.as_deref() == Some("LOG") && args.as_ref().is_some_and(|a| a.len() == 1) {
                    f.name = sp::ObjectName::from(vec![sp::Ident::new("ln")]);
                    return ControlFlow::Continue(());
                }
                if name.as_deref() == Some("LOG") && args.as_ref().is_some_and(|a| a.len() == 2) {
                    f.name = sp::ObjectName::from(vec![sp::Ident::new("ksql_log")]);
                    return ControlFlow::Continue(());
                }
                // ksqlDB's LPAD/RPAD are null for a negative length or an empty padding.
                if matches!(name.as_deref(), Some("LPAD" | "RPAD")) {
                    if let Some([_, len, pad]) = args.as_deref() {
                        let zero = || sp::Expr::Value(sp::Value::Number("0".into(), false).into());
                        let invalid = sp::Expr::BinaryOp {
                            left: Box::new(sp::Expr::BinaryOp {
                                left: Box::new(sp::Expr::Nested(Box::new(len.clone()))),
                                op: sp::BinaryOperator::Lt,
                                right: Box::new(zero()),
                            }),
                            op: sp::BinaryOperator::Or,
                            right: Box::new(sp::Expr::BinaryOp {
                                left: Box::new(sp::Expr::Nested(Box::new(pad.clone()))),
                                op: sp::BinaryOperator::Eq,
                                right: Box::new(sp::Expr::Value(sp::Value::SingleQuotedString(String::new()).into())),
                            }),
                        };
                        *e = case_when(invalid, sp::Expr::Value(sp::Value::Null.into()), e.clone());
                        return ControlFlow::Continue(());
                    }
                }
                // ksqlDB's ARRAY_JOIN writes nulls as `null`, joins with `,` by default and with
                // nothing for a null delimiter, and takes arrays of any primitive type.
                if name.as_deref() == Some("ARRAY_JOIN") {
                    if let Some(args) = args.filter(|a| (1..=2).contains(&a.len())) {
                        let text = |t: &str| sp::Expr::Value(sp::Value::SingleQuotedString(t.into()).into());
                        let strings = sp::Expr::Cast {
                            kind: sp::CastKind::Cast,
                            expr: Box::new(args[0].clone()),
                            data_type: sp::DataType::Array(sp::ArrayElemTypeDef::SquareBracket(
                                Box::new(sp::DataType::Varchar(None)),
                                None,
                            )),
                            array: false,
                            format: None,
                        };
                        let delimiter = match args.get(1) {
                            Some(d) => call("coalesce", vec![d.clone(), text("")]),
                            None => text(","),
                        };
                        *e = call("array_to_string", vec![strings, delimiter, text("null")]);
                        return ControlFlow::Continue(());
                    }
                }
                // ksqlDB's CORRELATION of fewer than two rows is NaN, its STDDEV_SAMP of one row
                // is 0.0, its SUM of no (or only null) values is 0; DataFusion's corr/stddev/sum
                // give NULL there.
                let fallback = match name.as_deref() {
                    Some("CORRELATION") => Some(("NaN", true)),
                    Some("STDDEV_SAMP" | "STDDEV_SAMPLE") => Some(("0", true)),
                    Some("SUM") => Some(("0", false)),
                    _ => None,
                };
                ksql_function(f);
                if let Some((v, double)) = fallback {
                    let inner = std::mem::replace(e, sp::Expr::Value(sp::Value::Null.into()));
                    let default = match double {
                        true => sp::Expr::Cast {
                            kind: sp::CastKind::Cast,
                            expr: Box::new(sp::Expr::Value(sp::Value::SingleQuotedString(v.into()).into())),
                            data_type: sp::DataType::Double(sp::ExactNumberInfo::None),
                            array: false,
                            format: None,
                        },
                        // (Coerced to the sum's own type.)
                        false => sp::Expr::Value(sp::Value::Number(v.into(), false).into()),
                    };
                    *e = call("coalesce", vec![inner, default]);
                    return ControlFlow::Continue(());
                }
            }
            // `S.B->C` parsed as a field access on `S.B`: DataFusion resolves `S.B.C` (a qualified
            // column, then its field), not a name after a qualified column.
            sp::Expr::CompoundFieldAccess { root, access_chain }
                if matches!(root.as_ref(), sp::Expr::CompoundIdentifier(_))
                    && matches!(access_chain.first(), Some(sp::AccessExpr::Dot(sp::Expr::Identifier(_)))) =>
            {
                let sp::Expr::CompoundIdentifier(ids) = root.as_mut() else { return ControlFlow::Continue(()) };
                while let Some(sp::AccessExpr::Dot(sp::Expr::Identifier(field))) = access_chain.first() {
                    ids.push(field.clone());
                    access_chain.remove(0);
                }
                if access_chain.is_empty() {
                    *e = std::mem::replace(root.as_mut(), sp::Expr::Value(sp::Value::Null.into()));
                }
            }
            sp::Expr::BinaryOp { op: sp::BinaryOperator::Arrow, right, .. }
                if matches!(right.as_ref(), sp::Expr::Identifier(_)) =>
            {
                let sp::Expr::BinaryOp { left, right, .. } =
                    std::mem::replace(e, sp::Expr::Value(sp::Value::Null.into()))
                else {
                    return ControlFlow::Continue(());
                };
                *e = arrow_access(*left, *right);
            }
            // `A->B[1]` parses as `A -> (B[1])` (a subscript binds tighter than an operator):
            // the field, then the subscript, `(A->B)[1]`.
            sp::Expr::BinaryOp { op: sp::BinaryOperator::Arrow, right, .. }
                if matches!(right.as_ref(), sp::Expr::CompoundFieldAccess { root, .. }
                    if matches!(root.as_ref(), sp::Expr::Identifier(_))) =>
            {
                let sp::Expr::BinaryOp { left, right, .. } =
                    std::mem::replace(e, sp::Expr::Value(sp::Value::Null.into()))
                else {
                    return ControlFlow::Continue(());
                };
                let sp::Expr::CompoundFieldAccess { root: field, access_chain: rest } = *right else {
                    return ControlFlow::Continue(());
                };
                *e = match arrow_access(*left, *field) {
                    sp::Expr::CompoundFieldAccess { root, mut access_chain } => {
                        access_chain.extend(rest);
                        sp::Expr::CompoundFieldAccess { root, access_chain }
                    }
                    other => sp::Expr::CompoundFieldAccess { root: Box::new(other), access_chain: rest },
                };
            }
            _ => {}
        }
        ControlFlow::<()>::Continue(())
    });
}

/// `left->right` (a field name) as DataFusion field access.
fn arrow_access(left: sp::Expr, right: sp::Expr) -> sp::Expr {
    // DataFusion takes a field named by an identifier only right after a (qualified) column
    // name; after a subscript (`H[1]->KEY`), a field named by a string, or on a computed value
    // (`EXPLODE(a)->F1`) it takes one named by a string. A column's own field is named by a
    // string too: `S->S` is field S of column S even where a source is called S (DataFusion reads
    // `S.S` as column S of source S).
    let (root, mut access_chain, by_string) = match left {
        sp::Expr::CompoundFieldAccess { root, access_chain } => {
            let by_string = access_chain
                .iter()
                .any(|a| matches!(a, sp::AccessExpr::Subscript(_) | sp::AccessExpr::Dot(sp::Expr::Value(_))))
                || !matches!(root.as_ref(), sp::Expr::Identifier(_) | sp::Expr::CompoundIdentifier(_));
            (root, access_chain, by_string)
        }
        root @ sp::Expr::Nested(_) => (Box::new(root), vec![], false),
        root => (Box::new(root), vec![], true),
    };
    access_chain.push(match right {
        sp::Expr::Identifier(f) if by_string => {
            sp::AccessExpr::Dot(sp::Expr::Value(sp::Value::SingleQuotedString(f.value).into()))
        }
        other => sp::AccessExpr::Dot(other),
    });
    sp::Expr::CompoundFieldAccess { root, access_chain }
}

/// Turns arguments `a := b` into the two arguments `left(a), b`.
fn flatten_assignments(f: &mut sp::Function, left: impl Fn(sp::Expr) -> sp::Expr) {
    let sp::FunctionArguments::List(list) = &mut f.args else { return };
    let mut flat = Vec::with_capacity(list.args.len() * 2);
    for arg in list.args.drain(..) {
        match arg {
            sp::FunctionArg::Unnamed(sp::FunctionArgExpr::Expr(sp::Expr::BinaryOp {
                left: l,
                op: sp::BinaryOperator::Assignment,
                right,
            })) => {
                flat.push(sp::FunctionArg::Unnamed(sp::FunctionArgExpr::Expr(left(*l))));
                flat.push(sp::FunctionArg::Unnamed(sp::FunctionArgExpr::Expr(*right)));
            }
            other => flat.push(other),
        }
    }
    list.args = flat;
}

/// ksqlDB aggregate spellings of DataFusion aggregates with options:
/// `COUNT_DISTINCT(x)` is `count(DISTINCT x)` (`COLLECT_SET` is a UDAF keeping insertion order),
/// `LATEST_BY_OFFSET(x)`/`EARLIEST_BY_OFFSET(x)` are `last_value`/`first_value` ignoring nulls.
fn ksql_function(f: &mut sp::Function) {
    let Some(name) = function_name(f) else { return };
    if name == "EXPLODE" {
        // DataFusion plans `unnest(list)` in a projection as an Unnest node.
        f.name = sp::ObjectName::from(vec![sp::Ident::new("unnest")]);
        return;
    }
    if name == "GENERATE_SERIES" {
        // ksqlDB counts down from a start above the end (DataFusion's default step is 1).
        if let Some([start, end]) = plain_args(f).as_deref() {
            let number = |n: &str| sp::Expr::Value(sp::Value::Number(n.into(), false).into());
            let descending = sp::Expr::BinaryOp {
                left: Box::new(start.clone()),
                op: sp::BinaryOperator::Gt,
                right: Box::new(end.clone()),
            };
            let step = case_when(descending, number("-1"), number("1"));
            if let sp::Expr::Function(g) = call("generate_series", vec![start.clone(), end.clone(), step]) {
                *f = g;
            }
        }
        return;
    }
    if name == "CUBE_EXPLODE" {
        // A row per combination of the elements (see `crate::textfns`).
        if let Some(args) = plain_args(f) {
            *f = match call("unnest", vec![call("cube_combinations", args)]) {
                sp::Expr::Function(g) => g,
                _ => return,
            };
        }
        return;
    }
    if name == "ARRAY_SORT" {
        // ksqlDB puts nulls last in either direction.
        if let sp::FunctionArguments::List(list) = &mut f.args {
            let text = |s: &str| {
                sp::FunctionArg::Unnamed(sp::FunctionArgExpr::Expr(sp::Expr::Value(
                    sp::Value::SingleQuotedString(s.into()).into(),
                )))
            };
            if list.args.len() == 1 {
                list.args.push(text("ASC"));
            }
            if list.args.len() == 2 {
                list.args.push(text("NULLS LAST"));
            }
        }
        return;
    }
    if name == "STRUCT" && matches!(&f.args, sp::FunctionArguments::List(l) if l.args.is_empty()) {
        f.name = sp::ObjectName::from(vec![sp::Ident::new("empty_struct")]);
        return;
    }
    if name == "STRUCT" {
        // ksqlDB's STRUCT(name := value, ...) is DataFusion's named_struct('NAME', value, ...).
        flatten_assignments(f, |name| {
            let name = match name {
                sp::Expr::Identifier(id) => id.value,
                other => other.to_string(),
            };
            sp::Expr::Value(sp::Value::SingleQuotedString(name).into())
        });
        f.name = sp::ObjectName::from(vec![sp::Ident::new("named_struct")]);
        return;
    }
    if name == "MAP" {
        // ksqlDB's MAP(k := v, ...) is DataFusion's map(k, v, ...).
        flatten_assignments(f, |key| key);
        return;
    }
    if name == "REGEXP_REPLACE" {
        // ksqlDB replaces every match; DataFusion only the first unless told 'g'.
        if let sp::FunctionArguments::List(list) = &mut f.args {
            if list.args.len() == 3 {
                let g = sp::Expr::Value(sp::Value::SingleQuotedString("g".into()).into());
                list.args.push(sp::FunctionArg::Unnamed(sp::FunctionArgExpr::Expr(g)));
            }
        }
        return;
    }
    if name == "COUNT" {
        // COUNT(), COUNT(1) and COUNT(*) all count rows: one aggregate (DataFusion names
        // COUNT(*) as it names COUNT(1), and two aggregates of one name cannot be planned).
        if let sp::FunctionArguments::List(list) = &mut f.args {
            // (Integer literals may already be cast to INT, as ksqlDB types them.)
            let literal = match &list.args[..] {
                [sp::FunctionArg::Unnamed(sp::FunctionArgExpr::Expr(e))] => match e {
                    sp::Expr::Cast { expr, .. } => {
                        matches!(expr.as_ref(), sp::Expr::Value(v) if !matches!(v.value, sp::Value::Null))
                    }
                    sp::Expr::Value(v) => !matches!(v.value, sp::Value::Null),
                    _ => false,
                },
                _ => false,
            };
            if list.args.is_empty() || literal {
                list.args = vec![sp::FunctionArg::Unnamed(sp::FunctionArgExpr::Wildcard)];
            }
        }
        return;
    }
    let (target, distinct, ignore_nulls) = match name.as_str() {
        "COUNT_DISTINCT" => ("count", true, false),
        "LATEST_BY_OFFSET" => ("last_value", false, true),
        "EARLIEST_BY_OFFSET" => ("first_value", false, true),
        _ => return,
    };
    let mut ignore_nulls = ignore_nulls;
    if let sp::FunctionArguments::List(list) = &mut f.args {
        // LATEST/EARLIEST_BY_OFFSET(col, n [, ignoreNulls]): the last/first n values, an array.
        // (Integer literals may already be `CAST(n AS INT)`, see `ksql_expressions`.)
        let is_number = |e: &sp::Expr| match e {
            sp::Expr::Value(v) => matches!(v.value, sp::Value::Number(..)),
            sp::Expr::Cast { expr, .. } => {
                matches!(expr.as_ref(), sp::Expr::Value(v) if matches!(v.value, sp::Value::Number(..)))
            }
            _ => false,
        };
        let counted =
            matches!(list.args.get(1), Some(sp::FunctionArg::Unnamed(sp::FunctionArgExpr::Expr(e))) if is_number(e));
        if ignore_nulls && counted && list.args.len() <= 3 {
            if list.args.len() == 2 {
                list.args.push(sp::FunctionArg::Unnamed(sp::FunctionArgExpr::Expr(sp::Expr::Value(
                    sp::Value::Boolean(true).into(),
                ))));
            }
            let target = if name == "LATEST_BY_OFFSET" { "latest_by_offset_n" } else { "earliest_by_offset_n" };
            f.name = sp::ObjectName::from(vec![sp::Ident::new(target)]);
            return;
        }
        // LATEST/EARLIEST_BY_OFFSET(col, ignoreNulls)
        if list.args.len() == 2 && ignore_nulls {
            if let sp::FunctionArg::Unnamed(sp::FunctionArgExpr::Expr(sp::Expr::Value(v))) = &list.args[1] {
                if let sp::Value::Boolean(b) = v.value {
                    ignore_nulls = b;
                    list.args.pop();
                }
            }
        }
        if list.args.len() != 1 {
            return;
        }
        if distinct {
            list.duplicate_treatment = Some(sp::DuplicateTreatment::Distinct);
        }
    }
    if ignore_nulls {
        f.null_treatment = Some(sp::NullTreatment::IgnoreNulls);
    }
    f.name = sp::ObjectName::from(vec![sp::Ident::new(target)]);
}

/// A push query over a stream shows only records with a value: a null value (a tombstone) is
/// skipped, as in ksqlDB; persistent queries pass it on as a row of nulls.
fn skip_stream_tombstones(body: &mut sp::Select) {
    let valid = sp::Expr::IsNotTrue(Box::new(sp::Expr::Identifier(quoted(rill_engine::source::DELETE))));
    body.selection = Some(match body.selection.take() {
        Some(w) => sp::Expr::BinaryOp {
            left: Box::new(sp::Expr::Nested(Box::new(w))),
            op: sp::BinaryOperator::And,
            right: Box::new(valid),
        },
        None => valid,
    });
}

fn quoted(name: &str) -> sp::Ident {
    sp::Ident::with_quote('"', name)
}
