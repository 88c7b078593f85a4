//! ksqlDB's `ROUND` of a DOUBLE: half up (towards positive infinity, as Java's `Math.round`),
//! `ROUND(d)` a BIGINT, `ROUND(d, n)` a DOUBLE rounded to `n` decimal places (`n` may be
//! negative). Other argument types (integers, DECIMAL) go to DataFusion's `round`, whose
//! signature and coercions this function shares.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Float64Array, Int64Array};
use arrow::datatypes::{DataType, Field, FieldRef, Float64Type, Int64Type};
use datafusion::common::Result;
use datafusion::logical_expr::{
    ColumnarValue, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
};

#[derive(Debug, PartialEq, Eq, Hash)]
struct KsqlRound {
    inner: ScalarUDF,
}

fn is_double(t: &DataType) -> bool {
    matches!(t, DataType::Float64 | DataType::Float32)
}

/// `x` rounded half up to `places` decimal places (never `-0.0`).
fn round_half_up(x: f64, places: i64) -> f64 {
    let places = places.clamp(-308, 308) as i32;
    let rounded = if places >= 0 {
        let scale = 10f64.powi(places);
        (x * scale + 0.5).floor() / scale
    } else {
        let scale = 10f64.powi(-places);
        (x / scale + 0.5).floor() * scale
    };
    rounded + 0.0
}

impl ScalarUDFImpl for KsqlRound {
    fn name(&self) -> &str {
        "round"
    }
    fn signature(&self) -> &Signature {
        self.inner.signature()
    }
    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        self.inner.coerce_types(arg_types)
    }
    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        self.inner.return_type(arg_types)
    }
    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        match args.arg_fields {
            [x] if is_double(x.data_type()) => Ok(Arc::new(Field::new("round", DataType::Int64, true))),
            [x, _] if is_double(x.data_type()) => Ok(Arc::new(Field::new("round", DataType::Float64, true))),
            _ => self.inner.return_field_from_args(args),
        }
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        if !args.arg_fields.first().is_some_and(|f| is_double(f.data_type())) {
            return self.inner.invoke_with_args(args);
        }
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let x = arrow::compute::cast(&arrays[0], &DataType::Float64)?;
        let x = x.as_primitive::<Float64Type>();
        let out: ArrayRef = match arrays.get(1) {
            None => Arc::new(x.iter().map(|v| v.map(|v| (v + 0.5).floor() as i64)).collect::<Int64Array>()),
            Some(places) => {
                let places = arrow::compute::cast(places, &DataType::Int64)?;
                let places = places.as_primitive::<Int64Type>();
                let rounded: Float64Array = x
                    .iter()
                    .zip(places.iter())
                    .map(|(v, p)| match (v, p) {
                        (Some(v), Some(p)) => Some(round_half_up(v, p)),
                        _ => None,
                    })
                    .collect();
                Arc::new(rounded)
            }
        };
        debug_assert_eq!(out.len(), args.number_rows);
        Ok(ColumnarValue::Array(out))
    }
}

/// The UDF (replaces DataFusion's `round` by name).
pub fn udf(inner: ScalarUDF) -> ScalarUDF {
    ScalarUDF::new_from_impl(KsqlRound { inner })
}

#[cfg(test)]
mod tests {
    use super::round_half_up;

    #[test]
    fn rounds_half_up_as_ksqldb() {
        assert_eq!(round_half_up(-1.5, 0), -1.0);
        assert_eq!(round_half_up(1.5, 0), 2.0);
        assert_eq!(round_half_up(12345.678, 2), 12345.68);
        assert_eq!(round_half_up(-12345.678, -1), -12350.0);
        assert_eq!(round_half_up(1.234567, 10), 1.234567);
        assert_eq!(round_half_up(-1.5, -1).to_bits(), 0.0f64.to_bits(), "never -0.0");
    }
}
