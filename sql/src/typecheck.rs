//! ksqlDB's type rules for comparisons and predicates, checked on DataFusion's plan before its
//! analyzer adds coercions: DataFusion would cast `'100'` to a number to compare it with a
//! BIGINT, ksqlDB refuses the statement, and so does Rill, with ksqlDB's messages.

use std::collections::HashMap;

use arrow::datatypes::DataType;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{plan_err, Column, DFSchema};
use datafusion::logical_expr::{Expr, ExprSchemable, LogicalPlan, Operator};
use datafusion::scalar::ScalarValue;

use crate::exprtext::ksql_text;
use crate::types::SqlType;
use crate::{Result, SqlError};

const TIMES: [&str; 3] = ["ROWTIME", "WINDOWSTART", "WINDOWEND"];

/// Checks every WHERE and HAVING predicate (boolean, comparisons of comparable types, no
/// comparison with NULL) and every projected expression (no comparison or arithmetic with NULL).
pub fn check(plan: &LogicalPlan) -> Result<()> {
    let join = plan.exists(|p| Ok(matches!(p, LogicalPlan::Join(_)))).unwrap_or(false);
    let mut error = None;
    let _ = plan.apply(|node| {
        let found = match node {
            LogicalPlan::Filter(f) => {
                let (clause, outputs, int_sums) = match f.input.as_ref() {
                    LogicalPlan::Aggregate(a) => {
                        let int_sums = crate::planner::typed_sums(a).map(|(ints, _)| ints).unwrap_or_default();
                        ("HAVING", aggregate_outputs(a), int_sums)
                    }
                    _ => ("WHERE", HashMap::new(), Vec::new()),
                };
                let names = Names { join, outputs, int_sums };
                predicate(&f.predicate, f.input.schema(), clause, &names)
            }
            LogicalPlan::Projection(p) => {
                let names = Names { join, outputs: HashMap::new(), int_sums: Vec::new() };
                p.expr.iter().find_map(|e| comparisons(e, p.input.schema(), &names, None))
            }
            _ => None,
        };
        Ok(match found {
            Some(e) => {
                error = Some(e);
                TreeNodeRecursion::Stop
            }
            None => TreeNodeRecursion::Continue,
        })
    });
    error.map_or(Ok(()), Err)
}

/// How to write expressions in messages: join columns as `ALIAS_NAME` (ksqlDB's names for
/// them), columns that hold an aggregate's result as the aggregate call.
struct Names {
    join: bool,
    outputs: HashMap<String, Expr>,
    /// Output columns of SUMs of INT values, which ksqlDB types INT (DataFusion's are BIGINT).
    int_sums: Vec<String>,
}

impl Names {
    /// The ksqlDB type name of `e`, of type `t`.
    fn type_name(&self, e: &Expr, t: &DataType) -> String {
        match crate::planner::is_sum_of(e, &self.int_sums) {
            true => "INTEGER".into(),
            false => type_name(e, t),
        }
    }

    fn text(&self, e: &Expr) -> String {
        let rewritten = e
            .clone()
            .transform(|e| {
                Ok(match e {
                    Expr::Column(c) if self.outputs.contains_key(&c.name) => {
                        Transformed::yes(self.outputs[&c.name].clone())
                    }
                    // Rill writes ksqlDB's SUM of nothing (0) as COALESCE(SUM(x), 0): print SUM(x).
                    Expr::ScalarFunction(f)
                        if f.func.name() == "coalesce"
                            && f.args.len() == 2
                            && matches!(&f.args[1], Expr::Literal(..))
                            && matches!(&f.args[0], Expr::AggregateFunction(_)) =>
                    {
                        Transformed::yes(f.args[0].clone())
                    }
                    // Rill types integer literals as ksqlDB does with a cast; print the literal.
                    Expr::Cast(c)
                        if c.field.data_type() == &DataType::Int32
                            && matches!(c.expr.as_ref(), Expr::Literal(ScalarValue::Int64(_), _)) =>
                    {
                        Transformed::yes(*c.expr)
                    }
                    other => Transformed::no(other),
                })
            })
            .and_then(|t| {
                t.data.transform(|e| {
                    Ok(match e {
                        Expr::Column(c) => {
                            let name = match (&c.relation, self.join) {
                                (Some(r), true) => format!("{}_{}", r.table(), c.name),
                                _ => c.name.clone(),
                            };
                            Transformed::yes(Expr::Column(Column::new_unqualified(name)))
                        }
                        other => Transformed::no(other),
                    })
                })
            })
            .map(|t| t.data)
            .unwrap_or_else(|_| e.clone());
        ksql_text(&rewritten, &|_| None)
    }
}

/// An aggregate's output column names and the expressions that compute them.
fn aggregate_outputs(a: &datafusion::logical_expr::Aggregate) -> HashMap<String, Expr> {
    let exprs = a.group_expr.iter().chain(&a.aggr_expr);
    a.schema.fields().iter().zip(exprs).map(|(f, e)| (f.name().clone(), e.clone().unalias())).collect()
}

fn predicate(p: &Expr, schema: &DFSchema, clause: &str, names: &Names) -> Option<SqlError> {
    if let Some(e) = comparisons(p, schema, names, Some(clause)) {
        return Some(e);
    }
    match p.get_type(schema) {
        Ok(DataType::Boolean | DataType::Null) | Err(_) => None,
        Ok(other) => {
            let text = names.text(p);
            Some(SqlError::plan(format!(
                "Type error in {clause} expression: Should evaluate to boolean but is {text} ({}) instead.\nStatement: {text}",
                type_name(p, &other),
            )))
        }
    }
}

/// The first comparison in `e` of incomparable types or with NULL, or arithmetic with NULL.
fn comparisons(e: &Expr, schema: &DFSchema, names: &Names, clause: Option<&str>) -> Option<SqlError> {
    let mut found = None;
    let wrap = |m: String| {
        SqlError::plan(match clause {
            Some(c) => format!("Error in {c} expression: {m}\nStatement: {}", names.text(e)),
            None => m,
        })
    };
    let _ = e.apply(|x| {
        // `x BETWEEN a AND b` compares as `x >= a AND x <= b` (ksqlDB's message for it is
        // an invalid expression, whatever the clause).
        if let Expr::Between(between) = x {
            for (bound, op) in [(&between.low, Operator::GtEq), (&between.high, Operator::LtEq)] {
                let (Ok(lt), Ok(rt)) = (between.expr.get_type(schema), bound.get_type(schema)) else { continue };
                if lt != DataType::Null && rt != DataType::Null && !comparable(&lt, &rt) {
                    found = Some(SqlError::plan(format!(
                        "Invalid expression: Cannot compare {} ({}) to {} ({}) with {}.",
                        names.text(&between.expr),
                        type_name(&between.expr, &lt),
                        names.text(bound),
                        type_name(bound, &rt),
                        ksql_operator(&op).unwrap_or_default()
                    )));
                    return Ok(TreeNodeRecursion::Stop);
                }
            }
        }
        let Expr::BinaryExpr(b) = x else { return Ok(TreeNodeRecursion::Continue) };
        let (Ok(lt), Ok(rt)) = (b.left.get_type(schema), b.right.get_type(schema)) else {
            return Ok(TreeNodeRecursion::Continue);
        };
        if b.op.is_numerical_operators() && (lt == DataType::Null || rt == DataType::Null) {
            let name = |e: &Expr, t: &DataType| if *t == DataType::Null { "null".into() } else { type_name(e, t) };
            let m = format!(
                "Error processing expression: {}. Arithmetic on types {} and {} are not supported.",
                names.text(x),
                name(&b.left, &lt),
                name(&b.right, &rt)
            );
            found = Some(SqlError::plan(m));
            return Ok(TreeNodeRecursion::Stop);
        }
        let Some(op) = ksql_operator(&b.op) else { return Ok(TreeNodeRecursion::Continue) };
        // ROWTIME and the window bounds compare with strings, which ksqlDB reads as times.
        if [&b.left, &b.right].iter().any(|s| matches!(s.as_ref(), Expr::Column(c) if TIMES.contains(&c.name.as_str())))
        {
            return Ok(TreeNodeRecursion::Continue);
        }
        let (ln, rn) = (names.type_name(&b.left, &lt), names.type_name(&b.right, &rt));
        let message = if lt == DataType::Null || rt == DataType::Null {
            let symbol = if b.op == Operator::NotEq { "<>".to_string() } else { b.op.to_string() };
            Some(format!(
                "Comparison with NULL not supported: {ln} {symbol} {rn}\nUse 'IS NULL' or 'IS NOT NULL' instead."
            ))
        } else if !comparable(&lt, &rt) {
            Some(format!("Cannot compare {} ({ln}) to {} ({rn}) with {op}.", names.text(&b.left), names.text(&b.right)))
        } else {
            None
        };
        Ok(match message {
            Some(m) => {
                found = Some(wrap(m));
                TreeNodeRecursion::Stop
            }
            None => TreeNodeRecursion::Continue,
        })
    });
    found
}

fn ksql_operator(op: &Operator) -> Option<&'static str> {
    Some(match op {
        Operator::Eq => "EQUAL",
        Operator::NotEq => "NOT_EQUAL",
        Operator::Lt => "LESS_THAN",
        Operator::LtEq => "LESS_THAN_OR_EQUAL",
        Operator::Gt => "GREATER_THAN",
        Operator::GtEq => "GREATER_THAN_OR_EQUAL",
        _ => return None,
    })
}

#[derive(PartialEq)]
enum Kind {
    Number,
    Text,
    Boolean,
    Other,
}

fn kind(t: &DataType) -> Kind {
    match SqlType::from_arrow(t) {
        Some(s) if s.is_numeric() => Kind::Number,
        Some(SqlType::String) => Kind::Text,
        Some(SqlType::Boolean) => Kind::Boolean,
        _ => Kind::Other,
    }
}

/// ksqlDB compares numbers with numbers, strings with strings (and with times, which it
/// parses), booleans with booleans; Rill refuses only the mixes of those three.
fn comparable(a: &DataType, b: &DataType) -> bool {
    let (a, b) = (kind(a), kind(b));
    a == b || a == Kind::Other || b == Kind::Other
}

/// The ksqlDB type of an expression for messages: integer literals that fit 32 bits are
/// INTEGER, untyped NULL is NULL.
fn type_name(e: &Expr, t: &DataType) -> String {
    match (e, t) {
        (_, DataType::Null) => "NULL".into(),
        (Expr::Literal(ScalarValue::Int64(Some(v)), _), _) if i32::try_from(*v).is_ok() => "INTEGER".into(),
        _ => SqlType::from_arrow(t).map_or_else(|| t.to_string(), |s| s.to_string()),
    }
}

/// ksqlDB's rules that need the expressions' types, applied to the plan after [`check`]:
/// GREATEST and LEAST resolved as ksqlDB's overloads ([`extreme`]), and STRUCT or MAP cast to
/// STRING written as Java writes them ([`java_text_cast`]).
pub fn typed_rules(plan: LogicalPlan) -> Result<LogicalPlan> {
    let out = plan.transform_up(|node| {
        let Some(input) = node.inputs().first().map(|i| i.schema().clone()) else {
            return Ok(Transformed::no(node));
        };
        let mapped = node.map_expressions(|e| {
            e.transform_up(|e| {
                java_text_cast(e, &input)?
                    .transform_data(|e| partial_date_cast(e, &input))?
                    .transform_data(|e| extreme(e, &input))?
                    .transform_data(|e| constructor_literals(e, &input))?
                    .transform_data(|e| map_null_keys(e, &input))
            })
        })?;
        if mapped.transformed {
            mapped.map_data(|p| p.recompute_schema())
        } else {
            Ok(mapped)
        }
    })?;
    Ok(out.data)
}

/// `MAP(k := v, ...)` with a STRING key that is null: ksqlDB keeps the entry, its key written
/// `"null"` (Java's text for it); Arrow maps have no null keys, so the key becomes that text.
fn map_null_keys(e: Expr, schema: &DFSchema) -> datafusion::common::Result<Transformed<Expr>> {
    let mut f = match e {
        Expr::ScalarFunction(f) if f.func.name() == "map" && f.args.len() == 2 => f,
        other => return Ok(Transformed::no(other)),
    };
    let Expr::ScalarFunction(keys) = &mut f.args[0] else { return Ok(Transformed::no(Expr::ScalarFunction(f))) };
    if keys.func.name() != "make_array" {
        return Ok(Transformed::no(Expr::ScalarFunction(f)));
    }
    let mut changed = false;
    for k in keys.args.iter_mut() {
        let nullable_text = match &*k {
            Expr::Literal(v, _) => v.is_null() && matches!(v.data_type(), DataType::Utf8 | DataType::Null),
            other => matches!(other.get_type(schema)?, DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8),
        };
        if nullable_text {
            let text = Expr::Literal(ScalarValue::Utf8(Some("null".into())), None);
            let key = std::mem::replace(k, text.clone());
            *k = datafusion::functions::core::expr_fn::coalesce(vec![key, text]);
            changed = true;
        }
    }
    Ok(if changed { Transformed::yes(Expr::ScalarFunction(f)) } else { Transformed::no(Expr::ScalarFunction(f)) })
}

/// ksqlDB's `ARRAY[...]` (and `MAP(...)`'s keys and values, each an array here): text literals
/// beside numbers are numbers of their type, read as ksqlDB reads them (`'2e1'` beside integers
/// is 20); one that does not read so refuses the statement ("invalid input syntax for type
/// INTEGER"). (Text beside booleans cannot be planned yet: DataFusion refuses to unify them
/// before these rules run.)
fn constructor_literals(e: Expr, schema: &DFSchema) -> datafusion::common::Result<Transformed<Expr>> {
    let mut f = match e {
        Expr::ScalarFunction(f) if f.func.name() == "make_array" => f,
        other => return Ok(Transformed::no(other)),
    };
    let text = |e: &Expr| match e {
        Expr::Literal(
            ScalarValue::Utf8(Some(t)) | ScalarValue::LargeUtf8(Some(t)) | ScalarValue::Utf8View(Some(t)),
            _,
        ) => Some(t.clone()),
        _ => None,
    };
    let mut others = Vec::new();
    for a in f.args.iter().filter(|a| text(a).is_none()) {
        match a.get_type(schema)? {
            DataType::Null => {}
            t => others.push(t),
        }
    }
    let target = if !others.is_empty() && others.iter().all(|t| t.is_integer()) {
        if others.iter().all(|t| matches!(t, DataType::Int8 | DataType::Int16 | DataType::Int32)) {
            DataType::Int32
        } else {
            DataType::Int64
        }
    } else if !others.is_empty() && others.iter().all(|t| t.is_integer() || t.is_floating()) {
        DataType::Float64
    } else {
        return Ok(Transformed::no(Expr::ScalarFunction(f)));
    };
    let mut changed = false;
    for a in f.args.iter_mut() {
        let Some(t) = text(a) else { continue };
        let v = t.trim();
        let invalid = |name: &str| plan_err!("invalid input syntax for type {name}: \"{t}\".");
        let value = match &target {
            DataType::Float64 => match v.parse::<f64>() {
                Ok(x) => ScalarValue::Float64(Some(x)),
                Err(_) => return invalid("DOUBLE"),
            },
            int => {
                let name = if *int == DataType::Int32 { "INTEGER" } else { "BIGINT" };
                // As a decimal number first ('2e1' is 20), then an integer of the type.
                let whole = v.parse::<i64>().ok().or_else(|| {
                    v.parse::<f64>()
                        .ok()
                        .filter(|x| x.is_finite() && x.fract() == 0.0 && x.abs() < 9.2e18)
                        .map(|x| x as i64)
                });
                match (whole, int) {
                    (Some(n), DataType::Int32) => match i32::try_from(n) {
                        Ok(n) => ScalarValue::Int32(Some(n)),
                        Err(_) => return invalid(name),
                    },
                    (Some(n), _) => ScalarValue::Int64(Some(n)),
                    (None, _) => return invalid(name),
                }
            }
        };
        *a = Expr::Literal(value, None);
        changed = true;
    }
    let e = Expr::ScalarFunction(f);
    Ok(if changed { Transformed::yes(e) } else { Transformed::no(e) })
}

/// `CAST(s AS DATE)` of a STRING `s` reads partial dates as ksqlDB does (see
/// [`crate::castfn::PARTIAL_DATE`]).
fn partial_date_cast(e: Expr, schema: &DFSchema) -> datafusion::common::Result<Transformed<Expr>> {
    let mut c = match e {
        Expr::Cast(c) if c.field.data_type() == &DataType::Date32 => c,
        other => return Ok(Transformed::no(other)),
    };
    // Once only, should the rules run over the plan again.
    let read = matches!(c.expr.as_ref(), Expr::ScalarFunction(f) if f.func.name() == crate::castfn::PARTIAL_DATE);
    if read || !matches!(c.expr.get_type(schema)?, DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8) {
        return Ok(Transformed::no(Expr::Cast(c)));
    }
    let udf = std::sync::Arc::new(crate::castfn::partial_date_udf());
    c.expr =
        Box::new(Expr::ScalarFunction(datafusion::logical_expr::expr::ScalarFunction::new_udf(udf, vec![*c.expr])));
    Ok(Transformed::yes(Expr::Cast(c)))
}

/// `CAST(x AS STRING)` of a STRUCT or MAP `x` is [`crate::castfn::java_text_udf`] of `x`.
fn java_text_cast(e: Expr, schema: &DFSchema) -> datafusion::common::Result<Transformed<Expr>> {
    let c = match e {
        Expr::Cast(c) if matches!(c.field.data_type(), DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8) => c,
        other => return Ok(Transformed::no(other)),
    };
    if !matches!(c.expr.get_type(schema)?, DataType::Struct(_) | DataType::Map(..)) {
        return Ok(Transformed::no(Expr::Cast(c)));
    }
    let udf = std::sync::Arc::new(crate::castfn::java_text_udf());
    Ok(Transformed::yes(Expr::ScalarFunction(datafusion::logical_expr::expr::ScalarFunction::new_udf(
        udf,
        vec![*c.expr],
    ))))
}

/// ksqlDB's `GREATEST` and `LEAST` are Java overloads (INT, BIGINT, DOUBLE, DECIMAL, STRING,
/// BYTES, DATE, TIME, TIMESTAMP varargs): arguments of one numeric type keep it; numbers of
/// several types are DOUBLEs when one of them is (the only overload taking them all), and
/// otherwise ambiguous; numbers never mix with text; NULLs alone match every overload.
/// Integer literals take any numeric type; the DOUBLE casts are made here.
fn extreme(e: Expr, schema: &DFSchema) -> datafusion::common::Result<Transformed<Expr>> {
    let mut f = match e {
        Expr::ScalarFunction(f) if matches!(f.func.name(), "greatest" | "least") => f,
        other => return Ok(Transformed::no(other)),
    };
    let name = f.func.name().to_string();
    let types = f.args.iter().map(|a| a.get_type(schema)).collect::<datafusion::common::Result<Vec<_>>>()?;
    let listed = || {
        let names: Vec<String> = types
            .iter()
            .map(|t| match t {
                DataType::Null => "null".to_string(),
                t => SqlType::from_arrow(t).map_or_else(|| t.to_string(), |s| s.to_string()),
            })
            .collect();
        names.join(", ")
    };
    let literal = |a: &Expr| match a {
        Expr::Literal(..) => true,
        Expr::Cast(c) => matches!(c.expr.as_ref(), Expr::Literal(..)),
        _ => false,
    };
    let typed: Vec<&DataType> = types
        .iter()
        .zip(&f.args)
        .filter(|(t, a)| **t != DataType::Null && !(t.is_integer() && literal(a)))
        .map(|(t, _)| t)
        .collect();
    if types.iter().all(|t| *t == DataType::Null) {
        return plan_err!("Function '{name}' cannot be resolved due to ambiguous method parameters ({}).", listed());
    }
    let numeric = |t: &DataType| t.is_numeric();
    if typed.iter().any(|t| numeric(t)) && typed.iter().any(|t| !numeric(t)) {
        return plan_err!("Function '{name}' does not accept parameters ({}).", listed());
    }
    let class = |t: &DataType| match t {
        DataType::Decimal128(..) | DataType::Decimal256(..) => DataType::Decimal128(1, 0),
        other => other.clone(),
    };
    let mixed = typed.windows(2).any(|w| class(w[0]) != class(w[1]));
    if !mixed || !typed.iter().all(|t| numeric(t)) {
        return Ok(Transformed::no(Expr::ScalarFunction(f)));
    }
    if !typed.contains(&&DataType::Float64) {
        return plan_err!("Function '{name}' cannot be resolved due to ambiguous method parameters ({}).", listed());
    }
    f.args = std::mem::take(&mut f.args)
        .into_iter()
        .zip(&types)
        .map(|(a, t)| {
            if *t == DataType::Float64 || *t == DataType::Null {
                a
            } else {
                datafusion::logical_expr::cast(a, DataType::Float64)
            }
        })
        .collect();
    Ok(Transformed::yes(Expr::ScalarFunction(f)))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::datatypes::{Field, Schema};
    use datafusion::catalog::MemTable;
    use datafusion::prelude::SessionContext;

    use super::*;

    async fn verdict(sql: &str) -> String {
        let ctx = SessionContext::new();
        let schema = Arc::new(Schema::new(vec![
            Field::new("ID", DataType::Int32, true),
            Field::new("NAME", DataType::Utf8, true),
            Field::new("ROWTIME", DataType::Int64, true),
        ]));
        let table = Arc::new(MemTable::try_new(schema, vec![vec![]]).unwrap());
        ctx.register_table(datafusion::common::TableReference::bare("T"), table).unwrap();
        let plan = ctx.state().create_logical_plan(sql).await.unwrap();
        match check(&plan) {
            Ok(()) => "ok".into(),
            Err(e) => e.to_string(),
        }
    }

    #[tokio::test]
    async fn comparisons_follow_ksqldb_types() {
        assert_eq!(verdict(r#"SELECT * FROM "T" WHERE "ID" >= 3 AND "NAME" = 'a'"#).await, "ok");
        assert_eq!(verdict(r#"SELECT * FROM "T" WHERE "ROWTIME" >= '2018'"#).await, "ok", "times compare with strings");
        let got = verdict(r#"SELECT * FROM "T" WHERE "NAME" = 'a' AND "ID" >= 'x'"#).await;
        assert!(
            got.contains(
                "Error in WHERE expression: Cannot compare ID (INTEGER) to 'x' (STRING) with GREATER_THAN_OR_EQUAL."
            ),
            "{got}"
        );
        let got = verdict(r#"SELECT "ID" FROM "T" GROUP BY "ID" HAVING SUM("ID") > '100'"#).await;
        assert!(
            got.contains("Error in HAVING expression: Cannot compare SUM(ID) (INTEGER) to '100' (STRING)"),
            "{got}"
        );
        let got = verdict(r#"SELECT * FROM "T" WHERE "NAME" BETWEEN 10 AND 'b'"#).await;
        assert!(got.contains("Cannot compare NAME (STRING) to 10 (INTEGER) with GREATER_THAN_OR_EQUAL."), "{got}");
        assert_eq!(verdict(r#"SELECT * FROM "T" WHERE "NAME" BETWEEN 'a' AND 'b'"#).await, "ok");
        let got = verdict(r#"SELECT NULL <> NULL FROM "T""#).await;
        assert!(got.contains("Comparison with NULL not supported: NULL <> NULL"), "{got}");
        let got = verdict(r#"SELECT 1 + NULL FROM "T""#).await;
        assert!(got.contains("Error processing expression: (1 + null). Arithmetic on types INTEGER and null"), "{got}");
        let got = verdict(r#"SELECT * FROM "T" WHERE "ID" = NULL"#).await;
        assert!(got.contains("Comparison with NULL not supported: INTEGER = NULL"), "{got}");
    }

    /// The constructor's elements after [`typed_rules`] (types and values), or its error.
    async fn constructed(sql: &str) -> String {
        let ctx = SessionContext::new();
        let schema =
            Arc::new(Schema::new(vec![Field::new("A", DataType::Int32, true), Field::new("B", DataType::Int64, true)]));
        let table = Arc::new(MemTable::try_new(schema, vec![vec![]]).unwrap());
        ctx.register_table(datafusion::common::TableReference::bare("T"), table).unwrap();
        let plan = ctx.state().create_logical_plan(sql).await.unwrap();
        match typed_rules(plan) {
            Ok(p) => {
                let LogicalPlan::Projection(p) = p else { panic!("a projection") };
                p.expr.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; ")
            }
            Err(e) => e.to_string(),
        }
    }

    /// A STRING cast to DATE takes a year, or a year and month, as their first day.
    #[tokio::test]
    async fn partial_dates_cast_to_their_first_day() {
        let ctx = SessionContext::new();
        let sql = "SELECT CAST(column1 AS DATE) AS d FROM (VALUES ('1970-01'), ('1971'), ('1970-01-10'))";
        let plan = typed_rules(ctx.state().create_logical_plan(sql).await.unwrap()).unwrap();
        let batches = ctx.execute_logical_plan(plan).await.unwrap().collect().await.unwrap();
        let days: Vec<i32> = batches
            .iter()
            .flat_map(|b| {
                arrow::array::AsArray::as_primitive::<arrow::datatypes::Date32Type>(b.column(0)).values().to_vec()
            })
            .collect();
        assert_eq!(days, vec![0, 365, 9]);
    }

    #[tokio::test]
    async fn text_literals_in_constructors_take_the_other_elements_type() {
        let got = constructed(r#"SELECT make_array(NULL, "A", '2e1', "B") FROM "T""#).await;
        assert!(got.contains("make_array(NULL, T.A, Int64(20), T.B)"), "{got}");
        let got = constructed(r#"SELECT make_array("A", 1.5, '2.25') FROM "T""#).await;
        assert!(got.contains("make_array(T.A, Float64(1.5), Float64(2.25))"), "{got}");
        let got = constructed(r#"SELECT make_array("A", 'hello') FROM "T""#).await;
        assert!(got.contains(r#"invalid input syntax for type INTEGER: "hello"."#), "{got}");
        // Text among text stays text.
        let got = constructed(r#"SELECT make_array('x', 'y') FROM "T""#).await;
        assert!(got.contains(r#"make_array(Utf8("x"), Utf8("y"))"#), "{got}");
    }
}
