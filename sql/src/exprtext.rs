//! DataFusion expressions written the way ksqlDB writes them in its messages:
//! `(T.A + 1)`, `CAST(T.B AS STRING)`, `SUBSTRING(T.C, 0, 1)`, upper-case names.

use datafusion::logical_expr::Expr;
use datafusion::scalar::ScalarValue;

use crate::types::SqlType;

/// `expr` as ksqlDB prints it; `qualifier` maps a column's relation (e.g. an alias) to the
/// qualifier to print, or `None` to print the column alone.
pub fn ksql_text(expr: &Expr, qualifier: &dyn Fn(&str) -> Option<String>) -> String {
    let text = |e: &Expr| ksql_text(e, qualifier);
    match expr {
        Expr::Column(c) => match c.relation.as_ref().and_then(|r| qualifier(r.table())) {
            Some(q) => format!("{q}.{}", c.name),
            None => c.name.clone(),
        },
        Expr::Alias(a) => text(&a.expr),
        Expr::Literal(v, _) => match v {
            ScalarValue::Utf8(Some(s)) | ScalarValue::LargeUtf8(Some(s)) | ScalarValue::Utf8View(Some(s)) => {
                format!("'{}'", s.replace('\'', "''"))
            }
            v if v.is_null() => "null".into(),
            v => v.to_string(),
        },
        Expr::Cast(c) => match SqlType::from_arrow(c.field.data_type()) {
            Some(t) => format!("CAST({} AS {t})", text(&c.expr)),
            None => text(&c.expr),
        },
        Expr::TryCast(c) => text(&c.expr),
        Expr::BinaryExpr(b) => format!("({} {} {})", text(&b.left), b.op, text(&b.right)),
        Expr::Not(e) => format!("(NOT {})", text(e)),
        Expr::Negative(e) => format!("-{}", text(e)),
        Expr::IsNull(e) => format!("({} IS NULL)", text(e)),
        Expr::IsNotNull(e) => format!("({} IS NOT NULL)", text(e)),
        Expr::ScalarFunction(f) => {
            format!("{}({})", f.func.name().to_uppercase(), f.args.iter().map(text).collect::<Vec<_>>().join(", "))
        }
        Expr::AggregateFunction(f) => format!(
            "{}({})",
            f.func.name().to_uppercase(),
            f.params.args.iter().map(text).collect::<Vec<_>>().join(", ")
        ),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use datafusion::common::Column;
    use datafusion::logical_expr::{cast, lit};

    use super::*;

    #[test]
    fn writes_expressions_as_ksqldb_does() {
        let c = Expr::Column(Column::new(Some(datafusion::common::TableReference::bare("L")), "FOREIGN_KEY"));
        let upper = |q: &str| Some(if q == "L" { "LEFT_TABLE".to_string() } else { q.to_string() });
        assert_eq!(
            ksql_text(&cast(c.clone(), arrow::datatypes::DataType::Utf8), &upper),
            "CAST(LEFT_TABLE.FOREIGN_KEY AS STRING)"
        );
        assert_eq!(ksql_text(&(c + lit(1i64)), &|_| None), "(FOREIGN_KEY + 1)");
        assert_eq!(ksql_text(&Expr::Column(Column::new_unqualified("X")).eq(lit("a'b")), &|_| None), "(X = 'a''b')");
    }
}
