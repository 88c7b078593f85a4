//! ksqlDB function names that DataFusion spells differently, registered as aliases of
//! DataFusion's own implementations.

use datafusion::execution::FunctionRegistry;
use datafusion::prelude::SessionContext;

use crate::Result;

/// (ksqlDB name, DataFusion function) pairs with identical semantics.
const SCALAR_ALIASES: &[(&str, &str)] = &[
    ("ucase", "upper"),
    ("lcase", "lower"),
    ("len", "character_length"),
    ("ifnull", "coalesce"),
    ("ceil", "ceil"),
    ("sign", "signum"),
    // 1-based, inclusive bounds in both.
    ("slice", "array_slice"),
];

/// (ksqlDB name, DataFusion aggregate) pairs with identical semantics.
const AGGREGATE_ALIASES: &[(&str, &str)] =
    &[("collect_list", "array_agg"), ("stddev_samp", "stddev"), ("correlation", "corr"), ("stddev_sample", "stddev")];

/// Registers ksqlDB's names for DataFusion functions.
pub fn register(ctx: &SessionContext) -> Result<()> {
    let state = ctx.state();
    for (alias, target) in SCALAR_ALIASES {
        if alias == target {
            continue;
        }
        if let Ok(udf) = state.udf(target) {
            ctx.register_udf(udf.as_ref().clone().with_aliases([*alias]));
        }
    }
    if let Ok(round) = state.udf("round") {
        ctx.register_udf(crate::roundfn::udf(round.as_ref().clone()));
    }
    for udf in crate::udfs::all()
        .into_iter()
        .chain(crate::bytefns::all())
        .chain(crate::urlfns::all())
        .chain(crate::parsetime::all())
        .chain(crate::datefns::all())
        .chain(crate::jsonfns::all())
        .chain(crate::textfns::all())
        .chain(crate::regexfns::all())
        .chain(crate::regexfns::splits())
        .chain(crate::udfs::elt_field())
        .chain([crate::udfs::instr_fn(), crate::castfn::udf(), crate::castfn::java_text_udf()])
    {
        ctx.register_udf(udf);
    }
    for hof in crate::lambdas::all() {
        ctx.register_higher_order_function(hof);
    }
    for udaf in crate::udafs::all() {
        ctx.register_udaf(udaf);
    }
    for (alias, target) in AGGREGATE_ALIASES {
        if let Ok(udaf) = state.udaf(target) {
            ctx.register_udaf(udaf.as_ref().clone().with_aliases([*alias]));
        }
    }
    Ok(())
}
