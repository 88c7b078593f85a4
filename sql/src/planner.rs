//! Planning a SELECT: ksqlDB rewrites on the AST, DataFusion's SQL planner for types,
//! functions and coercion, then the logical plan is cut into Rill operators.

use std::ops::ControlFlow;
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::MemTable;
use datafusion::common::{DFSchema, TableReference};
use datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion::logical_expr::{Expr, LogicalPlan};
use datafusion::physical_expr::execution_props::ExecutionProps;
use datafusion::physical_expr::{create_physical_expr, expressions::Column as PhysColumn, PhysicalExpr};
use datafusion::prelude::SessionContext;
use datafusion::sql::parser::Statement as DfStatement;
use sqlparser::ast as sp;

use crate::ast::Select;
use crate::catalog::{Catalog, SourceDef};
use crate::error::{Result, SqlError};
use crate::types::SqlType;

/// Name of the hidden last column carrying each output row's record timestamp.
pub const HIDDEN_TS: &str = "__RILL_ROWTIME";

/// A column of a query's output.
#[derive(Clone, Debug, PartialEq)]
pub struct OutputColumn {
    /// Name.
    pub name: String,
    /// Type.
    pub sql_type: SqlType,
    /// Whether it is a key column of the output.
    pub key: bool,
}

/// A stream-to-stream query: filter and projection over one source.
pub struct StatelessPlan {
    /// The source read.
    pub source: SourceDef,
    /// WHERE, compiled.
    pub filter: Option<Arc<dyn PhysicalExpr>>,
    /// One expression per output column, then the hidden timestamp.
    pub projection: Vec<Arc<dyn PhysicalExpr>>,
    /// The visible output columns.
    pub columns: Vec<OutputColumn>,
    /// Schema of output batches (visible columns + hidden timestamp).
    pub schema: SchemaRef,
}

/// Plans `select` over the catalog's sources.
pub async fn plan_select(ctx: &SessionContext, catalog: &Catalog, select: &Select) -> Result<StatelessPlan> {
    let mut query = select.query.clone();
    let sp::SetExpr::Select(body) = query.body.as_mut() else {
        return Err(SqlError::Unsupported("Only simple SELECT statements are supported".into()));
    };
    if body.from.len() != 1 {
        return Err(SqlError::plan("A query must read FROM exactly one source (use JOIN to combine sources)"));
    }
    if !body.from[0].joins.is_empty() {
        return Err(SqlError::Unsupported("JOIN is not supported yet".into()));
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
    if !matches!(body.group_by, sp::GroupByExpr::Expressions(ref e, _) if e.is_empty()) || body.having.is_some() {
        return Err(SqlError::Unsupported("GROUP BY is not supported yet".into()));
    }
    if select.window.is_some() {
        return Err(SqlError::Unsupported("WINDOW is not supported yet".into()));
    }
    if !select.partition_by.is_empty() {
        return Err(SqlError::Unsupported("PARTITION BY is not supported yet".into()));
    }
    rewrite_projection(&mut body.projection, &source, alias.as_ref().map(|a| a.name.value.as_str()));
    ksql_expressions(&mut query);

    // Plan with DataFusion against the source's row schema.
    let table = MemTable::try_new(source.row_schema(), vec![vec![]])?;
    let reference = TableReference::bare(source.name.clone());
    let _ = ctx.deregister_table(reference.clone());
    ctx.register_table(reference.clone(), Arc::new(table))?;
    let statement = DfStatement::Statement(Box::new(sp::Statement::Query(Box::new(query))));
    let state = ctx.state();
    let plan = state.statement_to_plan(statement).await;
    let _ = ctx.deregister_table(reference);
    // The analyzer adds DataFusion's type coercions (casts) to the plan.
    let plan = state.analyzer().execute_and_check(plan?, state.config_options(), |_, _| {})?;
    if contains_aggregate(&plan) {
        return Err(SqlError::Unsupported("Aggregate functions are not supported yet".into()));
    }
    let LogicalPlan::Projection(projection) = &plan else {
        return Err(SqlError::Internal(format!("expected a projection, planned:\n{}", plan.display_indent())));
    };
    let (filter, scan_schema) = filter_over_scan(&projection.input)?;
    let props = ExecutionProps::new();
    let pctx = PhysicalPlanningContext::default();
    let physical = |e: &Expr| create_physical_expr(e, scan_schema, &props, &pctx).map_err(SqlError::from);
    let filter = filter.map(physical).transpose()?;
    let mut exprs = Vec::new();
    let mut columns = Vec::new();
    let mut fields = Vec::new();
    let key_names: Vec<&str> = source.key_columns().map(|c| c.name.as_str()).collect();
    for (e, (_, field)) in projection.expr.iter().zip(projection.schema.iter()) {
        exprs.push(physical(e)?);
        let sql_type = SqlType::from_arrow(field.data_type()).ok_or_else(|| {
            SqlError::plan(format!("Column {} has type {} which Rill cannot write", field.name(), field.data_type()))
        })?;
        let key = match e.clone().unalias() {
            Expr::Column(c) => key_names.contains(&c.name.as_str()),
            _ => false,
        };
        fields.push(Field::new(field.name(), sql_type.to_arrow(), true));
        columns.push(OutputColumn { name: field.name().clone(), sql_type, key });
    }
    let ts_index = scan_schema.index_of_column_by_name(None, rill_engine::source::ROWTIME).ok_or_else(|| {
        SqlError::Internal("source schema has no ROWTIME".into())
    })?;
    exprs.push(Arc::new(PhysColumn::new(rill_engine::source::ROWTIME, ts_index)));
    fields.push(Field::new(HIDDEN_TS, DataType::Int64, true));
    Ok(StatelessPlan { source, filter, projection: exprs, columns, schema: Arc::new(Schema::new(fields)) })
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
        other => Err(SqlError::Unsupported(format!("this query shape is not supported yet:\n{}", other.display_indent()))),
    }
}

/// ksqlDB's projection rules: `*` means key and value columns (not pseudo columns), and an
/// expression without an alias is named `KSQL_COL_<i>`.
fn rewrite_projection(items: &mut Vec<sp::SelectItem>, source: &SourceDef, _alias: Option<&str>) {
    let mut out = Vec::with_capacity(items.len());
    let mut generated = 0usize;
    let taken: std::collections::HashSet<String> = source.columns.iter().map(|c| c.name.clone()).collect();
    for item in items.drain(..) {
        match item {
            sp::SelectItem::Wildcard(_) | sp::SelectItem::QualifiedWildcard(_, _) => {
                for c in source.key_columns().chain(source.value_columns()) {
                    out.push(sp::SelectItem::UnnamedExpr(sp::Expr::Identifier(quoted(&c.name))));
                }
            }
            sp::SelectItem::UnnamedExpr(e) => match e {
                sp::Expr::Identifier(_) => out.push(sp::SelectItem::UnnamedExpr(e)),
                sp::Expr::CompoundIdentifier(ref parts) => {
                    let last = parts.last().cloned().unwrap_or_else(|| quoted("?"));
                    out.push(sp::SelectItem::ExprWithAlias { expr: e, alias: last });
                }
                // `s->f` is named after the field.
                sp::Expr::BinaryOp { op: sp::BinaryOperator::Arrow, ref right, .. }
                    if matches!(right.as_ref(), sp::Expr::Identifier(_)) =>
                {
                    let sp::Expr::Identifier(field) = right.as_ref() else { continue };
                    let alias = field.clone();
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

/// ksqlDB expression rules that differ from DataFusion's:
/// * an integer literal that fits 32 bits is an INT (DataFusion would make it BIGINT);
/// * `struct->field` dereferences a STRUCT field.
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
            sp::Expr::BinaryOp { op: sp::BinaryOperator::Arrow, right, .. }
                if matches!(right.as_ref(), sp::Expr::Identifier(_)) =>
            {
                let sp::Expr::BinaryOp { left, right, .. } = std::mem::replace(e, sp::Expr::Value(sp::Value::Null.into())) else {
                    return ControlFlow::Continue(());
                };
                let field = sp::AccessExpr::Dot(*right);
                *e = match *left {
                    sp::Expr::CompoundFieldAccess { root, mut access_chain } => {
                        access_chain.push(field);
                        sp::Expr::CompoundFieldAccess { root, access_chain }
                    }
                    root => sp::Expr::CompoundFieldAccess { root: Box::new(root), access_chain: vec![field] },
                };
            }
            _ => {}
        }
        ControlFlow::<()>::Continue(())
    });
}

fn quoted(name: &str) -> sp::Ident {
    sp::Ident::with_quote('"', name)
}
