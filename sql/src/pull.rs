//! ksqlDB's rules for pull queries, checked on the statement as written, before planning.
//! (`LIMIT` needs `ksql.query.pull.limit.clause.enabled`, on by default.)
//!
//! A pull query reads the current state of a materialised table (a `CREATE TABLE AS SELECT`
//! result or a `CREATE SOURCE TABLE`) or the records of a stream. Always: no `ROWPARTITION` /
//! `ROWOFFSET`, no window bounds on unwindowed tables, and key `IN` lists of the key's type
//! without NULLs. With `ksql.query.pull.table.scan.enabled=false` a table may only be read by
//! key: every disjunct of the WHERE clause must pin every key column with one `=` or `IN`
//! (a single STRING key may instead take one range, when `ksql.query.pull.range.scan.enabled`).

use sqlparser::ast as sp;

use crate::ast::SourceKind;
use crate::catalog::{Column, SourceDef};
use crate::engine::Properties;
use crate::types::SqlType;
use crate::{Result, SqlError};

const PSEUDO: [&str; 2] = ["ROWPARTITION", "ROWOFFSET"];
const WINDOW_BOUNDS: [&str; 2] = ["WINDOWSTART", "WINDOWEND"];

/// Checks a pull query on `source` against ksqlDB's rules (see the module docs).
pub fn check(body: &sp::Select, limit: Option<u64>, source: &SourceDef, props: &Properties) -> Result<()> {
    if limit.is_some() && !enabled(props, "ksql.query.pull.limit.clause.enabled") {
        return Err(SqlError::plan(
            "LIMIT clause in pull queries is currently disabled. You can enable them by setting ksql.query.pull.limit.clause.enabled=true. See https://cnfl.io/queries for more info.\nAdd EMIT CHANGES if you intended to issue a push query.",
        ));
    }
    if source.kind == SourceKind::Table && !source.read_only && source.written_by.is_empty() {
        return Err(SqlError::plan(format!(
            "The `{0}` table isn't queryable. To derive a queryable table, you can do 'CREATE TABLE QUERYABLE_{0} AS SELECT * FROM {0}'. See https://cnfl.io/queries for more info.",
            source.name
        )));
    }
    let mut selected = Vec::new();
    for item in &body.projection {
        match item {
            sp::SelectItem::UnnamedExpr(e) | sp::SelectItem::ExprWithAlias { expr: e, .. } => {
                names(e, &mut selected);
            }
            _ => {}
        }
    }
    pseudo_columns(&selected, "SELECT")?;
    let Some(selection) = &body.selection else { return Ok(()) };
    let mut filtered = Vec::new();
    names(selection, &mut filtered);
    pseudo_columns(&filtered, "WHERE")?;
    if source.kind == SourceKind::Stream {
        return Ok(());
    }
    if source.window.is_none() {
        if let Some(bound) = filtered.iter().find(|n| WINDOW_BOUNDS.contains(&n.as_str())) {
            return Err(SqlError::plan(format!("WHERE column '{bound}' cannot be resolved.")));
        }
    }
    let keys: Vec<&Column> = source.key_columns().collect();
    key_in_lists(selection, &keys)?;
    let scans = enabled(props, "ksql.query.pull.table.scan.enabled");
    like_conditions(selection, &source.columns, scans)?;
    if !scans {
        let range_scans = enabled(props, "ksql.query.pull.range.scan.enabled");
        by_key_only_with(selection, &keys, source.window.is_some(), range_scans)?;
    }
    Ok(())
}

/// `C LIKE pattern`: `C` must be a STRING column; without table scans (a LIKE is no key
/// lookup) the left side must be a column at all.
fn like_conditions(selection: &sp::Expr, columns: &[Column], scans: bool) -> Result<()> {
    let mut problem = None;
    let _ = sp::visit_expressions(selection, |e: &sp::Expr| {
        let (sp::Expr::Like { expr, .. } | sp::Expr::ILike { expr, .. }) = e else {
            return std::ops::ControlFlow::Continue(());
        };
        let column = column_name(expr).and_then(|n| columns.iter().find(|c| c.name.eq_ignore_ascii_case(n)));
        problem = match column {
            Some(c) if c.sql_type != SqlType::String => {
                Some(format!("The column type for Like condition must be VARCHAR. The column type is {}", c.sql_type))
            }
            None if !scans => Some("Like condition must be between strings".to_string()),
            _ => None,
        };
        if problem.is_some() {
            std::ops::ControlFlow::Break(())
        } else {
            std::ops::ControlFlow::Continue(())
        }
    });
    problem.map_or(Ok(()), |m| Err(SqlError::plan(m)))
}

/// A boolean property, `true` unless set to something else.
fn enabled(props: &Properties, name: &str) -> bool {
    props.get(name).is_none_or(|v| v.trim().eq_ignore_ascii_case("true"))
}

fn pseudo_columns(names: &[String], clause: &str) -> Result<()> {
    let used: Vec<String> = PSEUDO.iter().filter(|p| names.iter().any(|n| n == *p)).map(|p| format!("`{p}`")).collect();
    if used.is_empty() {
        return Ok(());
    }
    Err(SqlError::plan(format!(
        "Pull queries don't support the following columns in {clause} clauses: {}",
        used.join(", ")
    )))
}

/// The (upper-cased, unqualified) names of the columns an expression refers to.
fn names(e: &sp::Expr, out: &mut Vec<String>) {
    let _ = sp::visit_expressions(e, |e: &sp::Expr| {
        match e {
            sp::Expr::Identifier(id) => out.push(id.value.to_uppercase()),
            sp::Expr::CompoundIdentifier(ids) => {
                out.extend(ids.last().map(|id| id.value.to_uppercase()));
            }
            _ => {}
        }
        std::ops::ControlFlow::<()>::Continue(())
    });
}

/// The column an expression is, if it is just one (`C`, `T.C`, `(C)`).
pub(crate) fn column_name(e: &sp::Expr) -> Option<&str> {
    match e {
        sp::Expr::Identifier(id) => Some(&id.value),
        sp::Expr::CompoundIdentifier(ids) => ids.last().map(|id| id.value.as_str()),
        sp::Expr::Nested(inner) => column_name(inner),
        _ => None,
    }
}

fn key_named<'a>(e: &sp::Expr, keys: &[&'a Column]) -> Option<&'a Column> {
    let name = column_name(e)?;
    keys.iter().copied().find(|k| k.name.eq_ignore_ascii_case(name))
}

/// `KEY IN (...)`: literals must convert to the key's type and must not be NULL.
fn key_in_lists(selection: &sp::Expr, keys: &[&Column]) -> Result<()> {
    let mut error = None;
    let _ = sp::visit_expressions(selection, |e: &sp::Expr| {
        if let sp::Expr::InList { expr, list, negated: false } = e {
            if let Some(key) = key_named(expr, keys) {
                for item in list {
                    let sp::Expr::Value(v) = item else { continue };
                    let problem = match &v.value {
                        sp::Value::Null => Some(format!("Primary key columns can not be NULL: ({} = null)", key.name)),
                        sp::Value::SingleQuotedString(s) if key.sql_type.is_numeric() => Some(format!(
                            "'{s}' can not be converted to the type of the key column: {} {} KEY",
                            key.name, key.sql_type
                        )),
                        _ => None,
                    };
                    if problem.is_some() {
                        error = problem;
                        return std::ops::ControlFlow::Break(());
                    }
                }
            }
        }
        std::ops::ControlFlow::Continue(())
    });
    error.map_or(Ok(()), |m| Err(SqlError::plan(m)))
}

/// What one comparison in a disjunct says about a key column.
enum Bound {
    Equal,
    Range,
}

/// The rules when tables may not be scanned (see the module docs).
fn by_key_only_with(selection: &sp::Expr, keys: &[&Column], windowed: bool, range_scans: bool) -> Result<()> {
    let mut disjuncts = Vec::new();
    split(selection, sp::BinaryOperator::Or, &mut disjuncts);
    let needs_scan = || {
        SqlError::plan("Query requires table scan to be enabled. Table scans can be enabled by setting ksql.query.pull.table.scan.enabled=true")
    };
    for disjunct in &disjuncts {
        let mut conjuncts = Vec::new();
        split(disjunct, sp::BinaryOperator::And, &mut conjuncts);
        let mut bounds: Vec<(&Column, Bound)> = Vec::new();
        let mut mentioned = false;
        for c in &conjuncts {
            let mut used = Vec::new();
            names(c, &mut used);
            if !used.iter().any(|n| keys.iter().any(|k| k.name.eq_ignore_ascii_case(n))) {
                continue;
            }
            mentioned = true;
            for (key, bound) in key_bounds(c, keys)? {
                if bounds.iter().any(|(k, _)| k.name == key.name) {
                    return Err(SqlError::plan(
                        "A comparison condition on the key column cannot be combined with other comparisons such as an IN predicate.",
                    ));
                }
                bounds.push((key, bound));
            }
        }
        if keys.len() > 1 && (mentioned || !bounds.is_empty()) && bounds.len() < keys.len() {
            return Err(SqlError::plan("Multi-column sources must specify every key in the WHERE clause."));
        }
        if bounds.is_empty() {
            return Err(SqlError::plan(format!(
                "WHERE clause missing key column for disjunct: {}",
                crate::planner::ksql_ast_text(disjunct)
            )));
        }
        if bounds.iter().any(|(_, b)| matches!(b, Bound::Range)) {
            let string_key = keys.len() == 1 && keys[0].sql_type == SqlType::String;
            if !range_scans || !string_key || windowed || disjuncts.len() > 1 {
                return Err(needs_scan());
            }
        }
    }
    Ok(())
}

/// The key bounds one conjunct sets: `KEY = lit`, `KEY IN (lits)`, `KEY <op> lit`,
/// `KEY BETWEEN lit AND lit`; anything else that mentions a key is refused.
fn key_bounds<'a>(c: &sp::Expr, keys: &[&'a Column]) -> Result<Vec<(&'a Column, Bound)>> {
    let resolvable = |e: &sp::Expr| {
        let mut used = Vec::new();
        names(e, &mut used);
        used.is_empty()
    };
    let not_resolvable = || SqlError::plan("A comparison must be between a key column and a resolvable expression.");
    match c {
        sp::Expr::Nested(inner) => key_bounds(inner, keys),
        sp::Expr::BinaryOp { left, op, right } => {
            let (key, other) = match (key_named(left, keys), key_named(right, keys)) {
                (Some(k), _) => (k, right),
                (None, Some(k)) => (k, left),
                (None, None) => return Err(SqlError::plan("A comparison must directly reference a key column.")),
            };
            if !resolvable(other) {
                return Err(not_resolvable());
            }
            let bound = match op {
                sp::BinaryOperator::Eq => Bound::Equal,
                sp::BinaryOperator::Lt
                | sp::BinaryOperator::LtEq
                | sp::BinaryOperator::Gt
                | sp::BinaryOperator::GtEq => Bound::Range,
                _ => {
                    return Err(SqlError::plan(format!(
                        "Bound on key columns '[`{}` {} KEY]' must currently be '='. ",
                        key.name, key.sql_type
                    )))
                }
            };
            Ok(vec![(key, bound)])
        }
        sp::Expr::InList { expr, list, negated: false } => match key_named(expr, keys) {
            Some(key) if list.iter().all(resolvable) => Ok(vec![(key, Bound::Equal)]),
            Some(_) => Err(not_resolvable()),
            None => Err(SqlError::plan("A comparison must directly reference a key column.")),
        },
        sp::Expr::Between { expr, low, high, negated: false } => match key_named(expr, keys) {
            Some(key) if resolvable(low) && resolvable(high) => Ok(vec![(key, Bound::Range)]),
            Some(_) => Err(not_resolvable()),
            None => Err(SqlError::plan("A comparison must directly reference a key column.")),
        },
        _ => Err(SqlError::plan("Query requires table scan to be enabled. Table scans can be enabled by setting ksql.query.pull.table.scan.enabled=true")),
    }
}

/// Flattens nested `op` (AND or OR) into its operands.
fn split<'a>(e: &'a sp::Expr, op: sp::BinaryOperator, out: &mut Vec<&'a sp::Expr>) {
    match e {
        sp::Expr::BinaryOp { left, op: o, right } if *o == op => {
            split(left, op.clone(), out);
            split(right, op, out);
        }
        sp::Expr::Nested(inner) if matches!(inner.as_ref(), sp::Expr::BinaryOp { op: o, .. } if *o == op) => {
            split(inner, op, out)
        }
        other => out.push(other),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The WHERE clause of `SELECT * FROM t WHERE <sql>`.
    pub(crate) fn where_clause(sql: &str) -> sp::Expr {
        let dialect = sqlparser::dialect::GenericDialect {};
        let stmt = sqlparser::parser::Parser::parse_sql(&dialect, &format!("SELECT * FROM t WHERE {sql}")).unwrap();
        let sp::Statement::Query(q) = &stmt[0] else { panic!("not a query") };
        let sp::SetExpr::Select(s) = q.body.as_ref() else { panic!("not a select") };
        s.selection.clone().unwrap()
    }

    fn key(name: &str, sql_type: SqlType) -> Column {
        Column { name: name.into(), sql_type, key: true, header: None }
    }

    /// The message `by_key_only` gives for `sql` on a table keyed by `keys`, or "ok".
    fn verdict(sql: &str, keys: &[Column], windowed: bool, range_scans: bool) -> String {
        let keys: Vec<&Column> = keys.iter().collect();
        let check = || -> Result<()> {
            let e = where_clause(sql);
            by_key_only_with(&e, &keys, windowed, range_scans)
        };
        match check() {
            Ok(()) => "ok".into(),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn like_takes_a_string_column() {
        let columns = [key("ID", SqlType::Int), Column { key: false, ..key("V", SqlType::String) }];
        let like = |sql: &str, scans: bool| match like_conditions(&where_clause(sql), &columns, scans) {
            Ok(()) => "ok".to_string(),
            Err(e) => e.to_string(),
        };
        assert_eq!(like("V LIKE 'a%'", false), "ok");
        assert!(like("ID LIKE 12", true)
            .contains("The column type for Like condition must be VARCHAR. The column type is INTEGER"));
        assert!(like("'12' LIKE '12'", false).contains("Like condition must be between strings"));
        assert_eq!(like("'12' LIKE '12'", true), "ok", "a scan evaluates it");
    }

    #[test]
    fn without_table_scans_every_disjunct_pins_every_key() {
        let id = [key("ID", SqlType::String)];
        let ok = |sql: &str| assert_eq!(verdict(sql, &id, false, true), "ok", "{sql}");
        ok("ID = 'a'");
        ok("ID IN ('a', 'b') AND V > 3");
        ok("ID = 'a' OR ID = 'b'");
        ok("ID <= 'b'");
        let fails = |sql: &str, keys: &[Column], windowed: bool, wanted: &str| {
            let got = verdict(sql, keys, windowed, true);
            assert!(got.contains(wanted), "{sql}: {got}");
        };
        fails("V = 1", &id, false, "WHERE clause missing key column for disjunct: (V = 1)");
        fails("ID != 'a'", &id, false, "Bound on key columns '[`ID` STRING KEY]' must currently be '='.");
        fails("ID >= 'a' AND ID < 'c'", &id, false, "cannot be combined with other comparisons");
        fails("ID = V", &id, false, "between a key column and a resolvable expression");
        fails("ID || 'x' = 'ax'", &id, false, "must directly reference a key column");
        fails("ID <= 'a' OR ID >= 'c'", &id, false, "Query requires table scan to be enabled");
        fails("ID <= 'a'", &id, true, "Query requires table scan to be enabled");
        let n = [key("ID", SqlType::Int)];
        fails("ID >= 12", &n, false, "Query requires table scan to be enabled");
        let two = [key("A", SqlType::String), key("B", SqlType::Int)];
        fails("A = 'x'", &two, false, "Multi-column sources must specify every key");
        assert_eq!(verdict("A = 'x' AND B = 1", &two, false, true), "ok");
        assert!(verdict("ID <= 'b'", &id, false, false).contains("table scan"), "range scans off");
    }
}
