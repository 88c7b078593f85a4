//! ksqlDB's `CHR` and `INITCAP`, and the combinations behind `CUBE_EXPLODE`:
//! * `CHR(code)`: the character of a Unicode code point given as a number, or as text of UTF-16
//!   escapes (`'\u004b'`, a surrogate pair `'\ud820\udeb8'`); null for anything else;
//! * `INITCAP(s)`: each word (delimited by white space) capitalised, the rest lower case;
//! * `CUBE_EXPLODE(array)` is `unnest(cube_combinations(array))` (see the planner): every
//!   combination of the elements and nulls in their places, in ksqlDB's order (the first element
//!   is the most significant: `[null, null], [null, b], [a, null], [a, b]`), without repeats (a
//!   null element gives the same combination kept or not);
//! * `like_escape(pattern, c)`: a LIKE pattern with escape character `c` (`x LIKE p ESCAPE '!'`)
//!   rewritten with DataFusion's escape character, the backslash.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, ListArray, StringBuilder, UInt32Array};
use arrow::buffer::OffsetBuffer;
use arrow::datatypes::{DataType, Field, Int64Type};
use datafusion::common::{exec_err, Result};
use datafusion::logical_expr::{ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Chr,
    Initcap,
    Cube,
    LikeEscape,
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct TextFn {
    kind: Kind,
    signature: Signature,
}

/// `CHR` of text: one or two `\uXXXX` escapes making one character.
fn chr_of_escapes(text: &str) -> Option<String> {
    let mut units = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let hex = rest.strip_prefix("\\u")?;
        let unit = hex.get(..4).filter(|h| h.chars().all(|c| c.is_ascii_hexdigit()))?;
        units.push(u16::from_str_radix(unit, 16).ok()?);
        rest = &hex[4..];
    }
    let s = String::from_utf16(&units).ok()?;
    (s.chars().count() == 1).then_some(s)
}

fn initcap(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut start = true;
    for c in s.chars() {
        if start {
            out.extend(c.to_uppercase());
        } else {
            out.extend(c.to_lowercase());
        }
        start = c.is_whitespace();
    }
    out
}

/// `pattern` with `escape` as its escape character, rewritten with the backslash.
fn like_escape(pattern: &str, escape: char) -> String {
    let mut out = String::with_capacity(pattern.len() + 4);
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        if c == escape {
            out.push('\\');
            out.push(chars.next().unwrap_or(escape));
        } else if c == '\\' {
            out.push_str("\\\\");
        } else {
            out.push(c);
        }
    }
    out
}

/// Every combination of each row's elements (see the module's comment).
fn cube(list: &ListArray) -> Result<ArrayRef> {
    let values = list.values();
    let mut picks: Vec<Option<u32>> = Vec::new();
    let mut inner_lengths = Vec::new();
    let mut outer_lengths = Vec::with_capacity(list.len());
    for row in 0..list.len() {
        if list.is_null(row) {
            outer_lengths.push(0);
            continue;
        }
        let (start, end) = (list.value_offsets()[row] as usize, list.value_offsets()[row + 1] as usize);
        let n = end - start;
        if n > 16 {
            return exec_err!("CUBE_EXPLODE of {n} elements would make {} rows; at most 16 elements", 1u64 << n);
        }
        let mut combinations = 0;
        for mask in 0u32..(1 << n) {
            let bit = |j: usize| mask & (1 << (n - 1 - j)) != 0;
            // Keeping a null element repeats the combination without it.
            if (0..n).any(|j| bit(j) && values.is_null(start + j)) {
                continue;
            }
            picks.extend((0..n).map(|j| bit(j).then_some((start + j) as u32)));
            inner_lengths.push(n);
            combinations += 1;
        }
        outer_lengths.push(combinations);
    }
    let taken = arrow::compute::take(values.as_ref(), &UInt32Array::from(picks), None)?;
    let item = Arc::new(Field::new("item", values.data_type().clone(), true));
    let inner = ListArray::try_new(item.clone(), OffsetBuffer::from_lengths(inner_lengths), taken, None)?;
    let outer_item = Arc::new(Field::new("item", DataType::List(item), true));
    Ok(Arc::new(ListArray::try_new(outer_item, OffsetBuffer::from_lengths(outer_lengths), Arc::new(inner), None)?))
}

impl ScalarUDFImpl for TextFn {
    fn name(&self) -> &str {
        match self.kind {
            Kind::Chr => "chr",
            Kind::Initcap => "initcap",
            Kind::Cube => "cube_combinations",
            Kind::LikeEscape => "like_escape",
        }
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        Ok(match (self.kind, arg_types) {
            (Kind::Cube, [t @ DataType::List(_)]) => DataType::List(Arc::new(Field::new("item", t.clone(), true))),
            (Kind::Cube, [t]) => return exec_err!("CUBE_EXPLODE expects an ARRAY, got {t}"),
            _ => DataType::Utf8,
        })
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let a = &arrays[0];
        let rows = a.len();
        let out: ArrayRef = match self.kind {
            Kind::Cube => match a.as_list_opt::<i32>() {
                Some(list) => cube(list)?,
                None => return exec_err!("CUBE_EXPLODE expects an ARRAY"),
            },
            Kind::Chr if a.data_type().is_integer() => {
                let codes = arrow::compute::cast(a, &DataType::Int64)?;
                let codes = codes.as_primitive::<Int64Type>();
                let mut b = StringBuilder::with_capacity(rows, rows * 2);
                for code in codes.iter() {
                    let c = code.and_then(|c| u32::try_from(c).ok()).and_then(char::from_u32);
                    b.append_option(c.map(String::from));
                }
                Arc::new(b.finish())
            }
            Kind::LikeEscape => {
                // The escape is a literal: any row's (none without rows).
                let escapes = arrow::compute::cast(&arrays[1], &DataType::Utf8)?;
                let escape = escapes.as_string::<i32>().iter().flatten().next().and_then(|e| e.chars().next());
                let escape = escape.unwrap_or('\\');
                let texts = arrow::compute::cast(a, &DataType::Utf8)?;
                let texts = texts.as_string::<i32>();
                let mut b = StringBuilder::with_capacity(rows, rows * 8);
                for t in texts.iter() {
                    b.append_option(t.map(|t| like_escape(t, escape)));
                }
                Arc::new(b.finish())
            }
            Kind::Chr | Kind::Initcap => {
                let texts = arrow::compute::cast(a, &DataType::Utf8)?;
                let texts = texts.as_string::<i32>();
                let mut b = StringBuilder::with_capacity(rows, rows * 8);
                for t in texts.iter() {
                    b.append_option(t.and_then(|t| match self.kind {
                        Kind::Chr => chr_of_escapes(t),
                        _ => Some(initcap(t)),
                    }));
                }
                Arc::new(b.finish())
            }
        };
        Ok(ColumnarValue::Array(out))
    }
}

/// The functions, for registration (CHR and INITCAP replace DataFusion's).
pub fn all() -> Vec<ScalarUDF> {
    [Kind::Chr, Kind::Initcap, Kind::Cube, Kind::LikeEscape]
        .into_iter()
        .map(|kind| {
            let arguments = if kind == Kind::LikeEscape { 2 } else { 1 };
            ScalarUDF::new_from_impl(TextFn { kind, signature: Signature::any(arguments, Volatility::Immutable) })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use arrow::datatypes::Int32Type;

    use super::*;

    #[test]
    fn chr_reads_code_points_and_utf16_escapes() {
        assert_eq!(chr_of_escapes("\\u004b").as_deref(), Some("K"));
        assert_eq!(chr_of_escapes("\\ud820\\udeb8").as_deref(), Some("\u{182b8}"));
        for bad in ["75", "004b", "bogus", "", "\\u004b\\u004b", "\\ud820"] {
            assert_eq!(chr_of_escapes(bad), None, "{bad}");
        }
    }

    #[test]
    fn like_patterns_take_the_backslash_as_escape() {
        // `!%` is a literal percent sign; a backslash of the pattern is a literal backslash.
        assert_eq!(like_escape("!%a%\\", '!'), "\\%a%\\\\");
        assert_eq!(like_escape("a!!b!", '!'), "a\\!b\\!");
    }

    #[test]
    fn initcap_capitalises_words_between_white_space() {
        assert_eq!(initcap("some_string wITH\twords"), "Some_string With\tWords");
    }

    #[test]
    fn cube_lists_each_combination_once() {
        let list = ListArray::from_iter_primitive::<Int32Type, _, _>(vec![
            Some(vec![Some(1), Some(2)]),
            Some(vec![Some(1), None]),
        ]);
        let out = cube(&list).unwrap();
        let rows: Vec<String> = (0..2)
            .map(|r| {
                let combos = out.as_list::<i32>().value(r);
                let combos = combos.as_list::<i32>();
                (0..combos.len())
                    .map(|c| format!("{:?}", combos.value(c).as_primitive::<Int32Type>().iter().collect::<Vec<_>>()))
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect();
        assert_eq!(rows[0], "[None, None] [None, Some(2)] [Some(1), None] [Some(1), Some(2)]");
        assert_eq!(rows[1], "[None, None] [Some(1), None]");
    }
}
