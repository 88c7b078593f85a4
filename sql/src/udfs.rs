//! ksqlDB scalar functions DataFusion does not have: `EXTRACTJSONFIELD`, `TO_JSON_STRING`, `ELT`, `FIELD`, `INSTR`,
//! `GEO_DISTANCE`, `TIMESTAMPTOSTRING`, `FORMAT_TIMESTAMP`, `FORMAT_DATE`, `FORMAT_TIME`, `DATETOSTRING`,
//! `MAP_UNION`, `ENTRIES`, `ARRAY_REMOVE`.

use serde_json::value::RawValue;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, Float64Array, ListArray, MapArray, StringBuilder, StructArray, UInt32Array,
};
use arrow::buffer::{NullBuffer, OffsetBuffer};
use arrow::datatypes::{DataType, Field, Fields, Float64Type};
use arrow::row::{RowConverter, SortField};
use arrow_json::writer::{make_encoder, EncoderOptions};
use datafusion::common::{exec_err, Result};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, TypeSignature, Volatility,
};

/// `EXTRACTJSONFIELD(json, '$.a.b[0]')`: the field at a JSONPath in a JSON string, as a string
/// (strings unquoted, other values as JSON text); null when absent or when the JSON is invalid.
#[derive(Debug, PartialEq, Eq, Hash)]
struct ExtractJsonField {
    signature: Signature,
}

/// Steps of a simple JSONPath: `$`, `.name`, `['name']`, `[index]`.
fn parse_path(path: &str) -> Option<Vec<Result<String, usize>>> {
    let mut steps = Vec::new();
    let rest = path.trim().strip_prefix('$')?;
    let mut chars = rest.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '.' => {
                let mut name = String::new();
                while let Some(&n) = chars.peek() {
                    if n == '.' || n == '[' {
                        break;
                    }
                    name.push(n);
                    chars.next();
                }
                steps.push(Ok(name));
            }
            '[' => {
                let mut inner = String::new();
                for n in chars.by_ref() {
                    if n == ']' {
                        break;
                    }
                    inner.push(n);
                }
                let inner = inner.trim();
                match inner.strip_prefix(['\'', '"']).and_then(|s| s.strip_suffix(['\'', '"'])) {
                    Some(name) => steps.push(Ok(name.to_string())),
                    None => steps.push(Err(inner.parse().ok()?)),
                }
            }
            _ => return None,
        }
    }
    Some(steps)
}

impl ScalarUDFImpl for ExtractJsonField {
    fn name(&self) -> &str {
        "extractjsonfield"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let json = arrow::compute::cast(&arrays[0], &DataType::Utf8)?;
        let paths = arrow::compute::cast(&arrays[1], &DataType::Utf8)?;
        let (json, paths) = (json.as_string::<i32>(), paths.as_string::<i32>());
        let mut out = StringBuilder::with_capacity(json.len(), 0);
        for i in 0..json.len() {
            if json.is_null(i) || paths.is_null(i) {
                out.append_null();
                continue;
            }
            // A JSON parser (serde_json) reads the document; only the path walk is ours. As
            // ksqlDB's reader, it reads the first value and ignores what follows it. Values are
            // walked as raw text, so a number comes back as written (`1.23450`).
            let value: Option<&RawValue> =
                serde_json::Deserializer::from_str(json.value(i)).into_iter().next().and_then(|v| v.ok());
            let found = value.zip(parse_path(paths.value(i))).and_then(|(v, steps)| {
                steps.iter().try_fold(v, |v, step| match step {
                    Ok(name) => {
                        serde_json::from_str::<std::collections::HashMap<String, &RawValue>>(v.get()).ok()?.remove(name)
                    }
                    Err(index) => serde_json::from_str::<Vec<&RawValue>>(v.get()).ok()?.get(*index).copied(),
                })
            });
            let text = found.map(|v| v.get().trim());
            match text.and_then(|t| t.chars().next()) {
                None | Some('n') => out.append_null(),
                Some('"') => match serde_json::from_str::<String>(text.unwrap_or_default()) {
                    Ok(s) => out.append_value(s),
                    Err(_) => out.append_null(),
                },
                // Objects and arrays as compact JSON text.
                Some('{' | '[') => match serde_json::from_str::<serde_json::Value>(text.unwrap_or_default()) {
                    Ok(v) => out.append_value(v.to_string()),
                    Err(_) => out.append_null(),
                },
                Some(_) => out.append_value(text.unwrap_or_default()),
            }
        }
        Ok(ColumnarValue::Array(Arc::new(out.finish())))
    }
}

/// `TO_JSON_STRING(value)`: the value as JSON text, written by arrow-json's encoders.
#[derive(Debug, PartialEq, Eq, Hash)]
struct ToJsonString {
    signature: Signature,
}

impl ScalarUDFImpl for ToJsonString {
    fn name(&self) -> &str {
        "to_json_string"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let array: &ArrayRef = &arrays[0];
        // ksqlDB writes TIMESTAMPs with milliseconds, BYTES in base64.
        let options =
            EncoderOptions::default().with_explicit_nulls(true).with_timestamp_format("%Y-%m-%dT%H:%M:%S%.3f".into());
        let array = &rill_connectors::format::bytes_as_base64(array)
            .map_err(|e| datafusion::error::DataFusionError::Execution(e.to_string()))?;
        let field = Arc::new(Field::new("v", array.data_type().clone(), true));
        let mut encoder = make_encoder(&field, array.as_ref(), &options)?;
        let mut out = StringBuilder::with_capacity(array.len(), array.len() * 8);
        let mut buf = Vec::new();
        for i in 0..array.len() {
            buf.clear();
            if encoder.is_null(i) {
                buf.extend_from_slice(b"null");
            } else {
                encoder.encode(i, &mut buf);
            }
            out.append_value(String::from_utf8_lossy(&buf));
        }
        Ok(ColumnarValue::Array(Arc::new(out.finish())))
    }
}

/// `GEO_DISTANCE(lat1, lon1, lat2, lon2[, 'KM' | 'MI'])`: great-circle distance (haversine).
#[derive(Debug, PartialEq, Eq, Hash)]
struct GeoDistance {
    signature: Signature,
}

impl ScalarUDFImpl for GeoDistance {
    fn name(&self) -> &str {
        "geo_distance"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        // The coordinates are numbers: ksqlDB does not read a string as one.
        if arg_types.iter().take(4).any(|t| !(t.is_numeric() || *t == DataType::Null)) {
            let names: Vec<String> = arg_types
                .iter()
                .map(|t| crate::types::SqlType::from_arrow(t).map_or_else(|| t.to_string(), |s| s.to_string()))
                .collect();
            return exec_err!("Function 'geo_distance' does not accept parameters ({}).", names.join(", "));
        }
        Ok(DataType::Float64)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let coords = arrays[..4]
            .iter()
            .map(|a| Ok(arrow::compute::cast(a, &DataType::Float64)?))
            .collect::<Result<Vec<ArrayRef>>>()?;
        let radius = match arrays.get(4) {
            None => vec![6371.0; args.number_rows],
            Some(unit) => {
                let unit = arrow::compute::cast(unit, &DataType::Utf8)?;
                let unit = unit.as_string::<i32>();
                let mut r = Vec::with_capacity(unit.len());
                for u in unit.iter() {
                    r.push(match u.map(|u| u.to_ascii_lowercase()) {
                        None => 6371.0,
                        Some(u) if u.starts_with("mi") => 3959.0,
                        Some(u) if u.starts_with("km") || u.starts_with("kilomet") => 6371.0,
                        Some(u) => return exec_err!("GEO_DISTANCE: unknown unit '{u}', use KM or MI"),
                    });
                }
                r
            }
        };
        let c: Vec<_> = coords.iter().map(|a| a.as_primitive::<Float64Type>()).collect();
        let out: Float64Array = (0..args.number_rows)
            .map(|i| {
                if c.iter().any(|a| a.is_null(i)) {
                    return None;
                }
                let (lat1, lon1, lat2, lon2) = (
                    c[0].value(i).to_radians(),
                    c[1].value(i).to_radians(),
                    c[2].value(i).to_radians(),
                    c[3].value(i).to_radians(),
                );
                let h =
                    ((lat2 - lat1) / 2.0).sin().powi(2) + lat1.cos() * lat2.cos() * ((lon2 - lon1) / 2.0).sin().powi(2);
                Some(2.0 * radius[i] * h.sqrt().asin())
            })
            .collect();
        Ok(ColumnarValue::Array(Arc::new(out)))
    }
}

/// `AS_VALUE(x)`: `x`, as a value column (a key column copied into the value). A function of its
/// own, so that the planner does not fold it into a reference to the key column.
#[derive(Debug, PartialEq, Eq, Hash)]
struct AsValue {
    signature: Signature,
}

impl ScalarUDFImpl for AsValue {
    fn name(&self) -> &str {
        "as_value"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        match arg_types.first() {
            Some(t) => Ok(t.clone()),
            None => exec_err!("AS_VALUE takes one argument"),
        }
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        match args.args.into_iter().next() {
            Some(v) => Ok(v),
            None => exec_err!("AS_VALUE takes one argument"),
        }
    }
}

/// `MAP_UNION(m1, m2, ...)`: every map's entries, a later map's value winning for a key several
/// have (in the place the key first appeared); null maps are skipped, null when all are.
#[derive(Debug, PartialEq, Eq, Hash)]
struct MapUnion {
    signature: Signature,
}

impl ScalarUDFImpl for MapUnion {
    fn name(&self) -> &str {
        "map_union"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        match arg_types {
            [first @ DataType::Map(..), rest @ ..] if rest.iter().all(|t| t == first) => Ok(first.clone()),
            _ => exec_err!("MAP_UNION takes maps of one type, got {arg_types:?}"),
        }
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let rows = args.number_rows;
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let maps: Vec<&MapArray> = arrays.iter().filter_map(|a| a.as_map_opt()).collect();
        let (Some(first), true) = (maps.first(), maps.len() == arrays.len()) else {
            return exec_err!("MAP_UNION takes maps");
        };
        let DataType::Map(field, sorted) = first.data_type() else { return exec_err!("MAP_UNION takes maps") };
        // Every map's entries one after another; `bases[i]`: where map i's start.
        let entries: Vec<&dyn Array> = maps.iter().map(|m| m.entries() as &dyn Array).collect();
        let all = arrow::compute::concat(&entries)?;
        let bases: Vec<usize> =
            maps.iter().scan(0, |n, m| Some(std::mem::replace(n, *n + m.entries().len()))).collect();
        let keys = all.as_struct().column(0).clone();
        let converter = RowConverter::new(vec![SortField::new(keys.data_type().clone())])?;
        let keys = converter.convert_columns(&[keys])?;
        let (mut picks, mut lengths, mut valid) = (Vec::new(), Vec::with_capacity(rows), Vec::with_capacity(rows));
        for row in 0..rows {
            let mut order: Vec<usize> = Vec::new();
            let mut any = false;
            for (m, base) in maps.iter().zip(&bases) {
                if m.is_null(row) {
                    continue;
                }
                any = true;
                let offsets = m.value_offsets();
                for i in offsets[row] as usize..offsets[row + 1] as usize {
                    let at = base + i;
                    match order.iter().position(|&j| keys.row(j) == keys.row(at)) {
                        Some(p) => order[p] = at,
                        None => order.push(at),
                    }
                }
            }
            valid.push(any);
            lengths.push(order.len());
            picks.extend(order.into_iter().map(|i| i as u32));
        }
        let taken = arrow::compute::take(&all, &UInt32Array::from(picks), None)?;
        let map = MapArray::try_new(
            field.clone(),
            OffsetBuffer::from_lengths(lengths),
            taken.as_struct().clone(),
            Some(NullBuffer::from(valid)),
            *sorted,
        )?;
        Ok(ColumnarValue::Array(Arc::new(map)))
    }
}

/// ksqlDB's `STRUCT()`: a struct of no fields (the planner names it `empty_struct`).
#[derive(Debug, PartialEq, Eq, Hash)]
struct EmptyStruct {
    signature: Signature,
}

impl ScalarUDFImpl for EmptyStruct {
    fn name(&self) -> &str {
        "empty_struct"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Struct(Fields::empty()))
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        Ok(ColumnarValue::Array(Arc::new(arrow::array::StructArray::new_empty_fields(args.number_rows, None))))
    }
}

/// `AS_MAP(keys, values)`: a map of each key to the value at its position (null past the end of
/// `values`), a later duplicate key winning in the place the key first appeared; null keys are
/// skipped; null when either list is.
#[derive(Debug, PartialEq, Eq, Hash)]
struct AsMap {
    signature: Signature,
}

impl ScalarUDFImpl for AsMap {
    fn name(&self) -> &str {
        "as_map"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        match arg_types {
            [DataType::List(k), DataType::List(v)] if matches!(k.data_type(), DataType::Utf8 | DataType::Null) => {
                Ok(crate::types::map_type(DataType::Utf8, v.data_type().clone()))
            }
            _ => exec_err!("AS_MAP takes an ARRAY<STRING> of keys and an ARRAY of values, got {arg_types:?}"),
        }
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let rows = args.number_rows;
        let DataType::Map(field, sorted) = args.return_field.data_type().clone() else {
            return exec_err!("AS_MAP returns a map");
        };
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let (Some(keys), Some(values)) = (arrays[0].as_list_opt::<i32>(), arrays[1].as_list_opt::<i32>()) else {
            return exec_err!("AS_MAP takes two arrays");
        };
        let key_strings = arrow::compute::cast(keys.values(), &DataType::Utf8)?;
        let key_strings = key_strings.as_string::<i32>();
        // Value positions to take (None: null), keys by entry, per row the entry count.
        let (mut picks, mut names, mut lengths, mut valid) =
            (Vec::<Option<u32>>::new(), Vec::<String>::new(), Vec::with_capacity(rows), Vec::with_capacity(rows));
        for row in 0..rows {
            if keys.is_null(row) || values.is_null(row) {
                valid.push(false);
                lengths.push(0);
                continue;
            }
            valid.push(true);
            let (ko, vo) = (keys.value_offsets(), values.value_offsets());
            let (k0, k1, v0, v1) = (ko[row] as usize, ko[row + 1] as usize, vo[row] as usize, vo[row + 1] as usize);
            let start = names.len();
            for (i, k) in (k0..k1).enumerate() {
                if key_strings.is_null(k) {
                    continue;
                }
                let value = (v0 + i < v1).then_some((v0 + i) as u32);
                let name = key_strings.value(k);
                match names[start..].iter().position(|n| n == name) {
                    Some(p) => picks[start + p] = value,
                    None => {
                        names.push(name.to_string());
                        picks.push(value);
                    }
                }
            }
            lengths.push(names.len() - start);
        }
        let DataType::Struct(kv) = field.data_type() else { return exec_err!("AS_MAP returns a map") };
        let taken = arrow::compute::take(values.values(), &UInt32Array::from(picks), None)?;
        let taken = arrow::compute::cast(&taken, kv[1].data_type())?;
        let entries = arrow::array::StructArray::try_new(
            kv.clone(),
            vec![Arc::new(arrow::array::StringArray::from(names)) as ArrayRef, taken],
            None,
        )?;
        let map = MapArray::try_new(
            field,
            OffsetBuffer::from_lengths(lengths),
            entries,
            Some(NullBuffer::from(valid)),
            sorted,
        )?;
        Ok(ColumnarValue::Array(Arc::new(map)))
    }
}

/// `ENTRIES(map, sorted)`: a map's entries as an array of `STRUCT<K, V>`, in key order when
/// `sorted` is true (else in the map's order).
#[derive(Debug, PartialEq, Eq, Hash)]
struct Entries {
    signature: Signature,
}

impl Entries {
    fn fields(map: &DataType) -> Result<Fields> {
        match map {
            DataType::Map(entries, _) => match entries.data_type() {
                DataType::Struct(kv) if kv.len() == 2 => Ok(Fields::from(vec![
                    Field::new("K", kv[0].data_type().clone(), true),
                    Field::new("V", kv[1].data_type().clone(), true),
                ])),
                _ => exec_err!("ENTRIES takes a map"),
            },
            other => exec_err!("ENTRIES takes a map, got {other}"),
        }
    }
}

impl ScalarUDFImpl for Entries {
    fn name(&self) -> &str {
        "entries"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        let fields = Self::fields(&arg_types[0])?;
        Ok(DataType::List(Arc::new(Field::new("item", DataType::Struct(fields), true))))
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let Some(map) = arrays[0].as_map_opt() else { return exec_err!("ENTRIES takes a map") };
        let sorted = arrays[1].as_boolean_opt().and_then(|b| b.iter().flatten().next()).unwrap_or(false);
        let entries = map.entries();
        let keys = RowConverter::new(vec![SortField::new(entries.column(0).data_type().clone())])?
            .convert_columns(&[entries.column(0).clone()])?;
        let offsets = map.value_offsets();
        let mut picks: Vec<u32> = Vec::with_capacity(entries.len());
        for row in 0..map.len() {
            let start = picks.len();
            picks.extend(offsets[row] as u32..offsets[row + 1] as u32);
            if sorted {
                picks[start..].sort_by(|&a, &b| keys.row(a as usize).cmp(&keys.row(b as usize)));
            }
        }
        let taken = arrow::compute::take(entries, &UInt32Array::from(picks), None)?;
        let fields = Self::fields(map.data_type())?;
        let item = StructArray::try_new(fields.clone(), taken.as_struct().columns().to_vec(), None)?;
        let lengths = (0..map.len()).map(|r| (offsets[r + 1] - offsets[r]) as usize);
        let list = ListArray::try_new(
            Arc::new(Field::new("item", DataType::Struct(fields), true)),
            OffsetBuffer::from_lengths(lengths),
            Arc::new(item),
            map.nulls().cloned(),
        )?;
        Ok(ColumnarValue::Array(Arc::new(list)))
    }
}

/// `ARRAY_REMOVE(array, x)`: the array without every element equal to `x` (nested values
/// compared whole; maps entry by entry in their order); a null `x` removes the null elements.
/// (DataFusion's `array_remove_all` gives null for a null `x` and cannot compare maps.)
#[derive(Debug, PartialEq, Eq, Hash)]
struct ArrayRemove {
    signature: Signature,
}

impl ScalarUDFImpl for ArrayRemove {
    fn name(&self) -> &str {
        "array_remove"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        match &arg_types[0] {
            t @ (DataType::List(_) | DataType::Null) => Ok(t.clone()),
            other => exec_err!("ARRAY_REMOVE takes an array, got {other}"),
        }
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let Some(list) = arrays[0].as_list_opt::<i32>() else { return Ok(ColumnarValue::Array(arrays[0].clone())) };
        let values = list.values();
        let removed = match arrays[1].data_type() {
            DataType::Null => arrays[1].clone(),
            _ => arrow::compute::cast(&arrays[1], values.data_type())?,
        };
        let same = match removed.data_type() {
            DataType::Null => None,
            _ => Some(arrow::array::make_comparator(values.as_ref(), removed.as_ref(), Default::default())?),
        };
        let offsets = list.value_offsets();
        let (mut picks, mut lengths) = (Vec::new(), Vec::with_capacity(list.len()));
        for row in 0..list.len() {
            let before = picks.len();
            for i in offsets[row] as usize..offsets[row + 1] as usize {
                let remove = match (&same, removed.is_null(row)) {
                    (Some(same), false) => values.is_valid(i) && same(i, row).is_eq(),
                    _ => values.is_null(i),
                };
                if !remove {
                    picks.push(i as u32);
                }
            }
            lengths.push(picks.len() - before);
        }
        let kept = arrow::compute::take(values.as_ref(), &UInt32Array::from(picks), None)?;
        let DataType::List(item) = list.data_type() else { return exec_err!("ARRAY_REMOVE takes an array") };
        let out = ListArray::try_new(item.clone(), OffsetBuffer::from_lengths(lengths), kept, list.nulls().cloned())?;
        Ok(ColumnarValue::Array(Arc::new(out)))
    }
}

/// `SUBSTRING(s, pos[, len])` as ksqlDB counts: `pos` is 1-based, 0 means the start, a negative
/// `pos` counts from the end; positions beyond the string clamp to it. (SQL's SUBSTRING counts
/// position 0 as before the first character.) The planner rewrites SUBSTRING syntax to calls of
/// this function.
#[derive(Debug, PartialEq, Eq, Hash)]
struct Substring {
    signature: Signature,
}

impl ScalarUDFImpl for Substring {
    fn name(&self) -> &str {
        "substring"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let text = arrow::compute::cast(&arrays[0], &DataType::Utf8)?;
        let text = text.as_string::<i32>();
        let number = |i: usize| -> Result<Option<arrow::array::Int64Array>> {
            arrays
                .get(i)
                .map(|a| {
                    Ok(arrow::compute::cast(a, &DataType::Int64)?.as_primitive::<arrow::datatypes::Int64Type>().clone())
                })
                .transpose()
        };
        let (pos, len) = (number(1)?, number(2)?);
        let Some(pos) = pos else { return exec_err!("SUBSTRING takes a string, a position and an optional length") };
        let mut out = arrow::array::StringBuilder::with_capacity(text.len(), 0);
        for i in 0..text.len() {
            let length = len.as_ref().map(|l| l.is_valid(i).then(|| l.value(i)));
            if text.is_null(i) || pos.is_null(i) || length == Some(None) {
                out.append_null();
                continue;
            }
            let s = text.value(i);
            let chars = s.chars().count() as i64;
            let p = pos.value(i);
            let start = if p < 0 { (chars + p).max(0) } else { (p - 1).clamp(0, chars) };
            let end = match length.flatten() {
                Some(l) => (start + l).min(chars).max(start),
                None => chars,
            };
            let byte = |c: i64| s.char_indices().nth(c as usize).map_or(s.len(), |(b, _)| b);
            out.append_value(&s[byte(start)..byte(end)]);
        }
        Ok(ColumnarValue::Array(Arc::new(out.finish())))
    }
}

/// The scalar functions of this module.
/// `TIMESTAMPTOSTRING(epoch_ms, 'pattern'[, 'zone'])` and `FORMAT_TIMESTAMP(ts, 'pattern'[, 'zone'])`:
/// a time as text in a Java `DateTimeFormatter` pattern, in a zone (IANA name; UTC by default).
/// `FORMAT_DATE(date, 'pattern')`, `DATETOSTRING(days, 'pattern')` and `FORMAT_TIME(time,
/// 'pattern')` format dates and times of day the same way. Patterns may differ from row to row.
#[derive(Debug, PartialEq, Eq, Hash)]
struct FormatTimestamp {
    name: &'static str,
    /// The first argument counts days (DATETOSTRING's INT), not milliseconds.
    days: bool,
    signature: Signature,
}

impl ScalarUDFImpl for FormatTimestamp {
    fn name(&self) -> &str {
        self.name
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let day_ms = |a: &ArrayRef| -> Result<ArrayRef> {
            let days = arrow::compute::cast(a, &DataType::Int64)?;
            Ok(Arc::new(
                days.as_primitive::<arrow::datatypes::Int64Type>()
                    .unary::<_, arrow::datatypes::Int64Type>(|d| d * 86_400_000),
            ))
        };
        let millis = match arrays[0].data_type() {
            DataType::Date32 => day_ms(&arrays[0])?,
            _ if self.days => day_ms(&arrays[0])?,
            _ => arrow::compute::cast(&arrays[0], &DataType::Int64)?,
        };
        let millis = millis.as_primitive::<arrow::datatypes::Int64Type>();
        let texts = |i: usize| -> Result<Option<ArrayRef>> {
            arrays.get(i).map(|a| arrow::compute::cast(a, &DataType::Utf8)).transpose().map_err(Into::into)
        };
        let Some(patterns) = texts(1)? else { return exec_err!("{}: the format must be a string", self.name) };
        let patterns = patterns.as_string::<i32>();
        let zones = texts(2)?;
        let zones = zones.as_ref().map(|z| z.as_string::<i32>());
        let mut formats: std::collections::HashMap<&str, String> = std::collections::HashMap::new();
        let mut tzs: std::collections::HashMap<&str, chrono_tz::Tz> = std::collections::HashMap::new();
        let mut out = StringBuilder::with_capacity(millis.len(), millis.len() * 24);
        for i in 0..millis.len() {
            let time = millis.is_valid(i).then(|| chrono::DateTime::from_timestamp_millis(millis.value(i))).flatten();
            let (Some(t), false) = (time, patterns.is_null(i)) else {
                out.append_null();
                continue;
            };
            let pattern = patterns.value(i);
            if !formats.contains_key(pattern) {
                match crate::timefmt::java_to_chrono(pattern) {
                    Ok(f) => formats.insert(pattern, f),
                    Err(e) => return exec_err!("{}: {e}", self.name),
                };
            }
            let zone = match zones.filter(|z| z.is_valid(i)).map(|z| z.value(i)) {
                None => chrono_tz::UTC,
                Some(z) => match tzs.get(z) {
                    Some(tz) => *tz,
                    None => match z.parse::<chrono_tz::Tz>() {
                        Ok(tz) => *tzs.entry(z).or_insert(tz),
                        Err(_) => return exec_err!("Unknown time zone: '{z}'"),
                    },
                },
            };
            out.append_value(t.with_timezone(&zone).format(&formats[pattern]).to_string());
        }
        Ok(ColumnarValue::Array(Arc::new(out.finish())))
    }
}

/// ksqlDB's math functions where DataFusion's differ, as Java computes them (DOUBLEs):
/// `SQRT(x)` is NaN for a negative number (DataFusion's fails the whole expression);
/// `LOG(base, x)` is `ln(x) / ln(base)`, NaN for a base of 0 or less or of 1 (the planner renames
/// the two-argument LOG to `ksql_log`).
#[derive(Debug, PartialEq, Eq, Hash)]
struct JavaMath {
    name: &'static str,
    signature: Signature,
}

impl ScalarUDFImpl for JavaMath {
    fn name(&self) -> &str {
        self.name
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Float64)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let doubles = arrays
            .iter()
            .map(|a| arrow::compute::cast(a, &DataType::Float64))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let arg = |i: usize| doubles[i].as_primitive::<Float64Type>();
        let out: Float64Array = match self.name {
            "sqrt" => arg(0).unary(f64::sqrt),
            _ => arrow::compute::kernels::arity::binary(arg(0), arg(1), |b, v| {
                if b <= 0.0 || b == 1.0 {
                    f64::NAN
                } else {
                    v.ln() / b.ln()
                }
            })?,
        };
        Ok(ColumnarValue::Array(Arc::new(out)))
    }
}

pub fn all() -> Vec<ScalarUDF> {
    let two_or_three = || Signature::one_of(vec![TypeSignature::Any(2), TypeSignature::Any(3)], Volatility::Immutable);
    vec![
        ScalarUDF::from(JavaMath {
            name: "sqrt",
            signature: Signature::uniform(1, vec![DataType::Float64], Volatility::Immutable),
        }),
        ScalarUDF::from(JavaMath {
            name: "ksql_log",
            signature: Signature::uniform(2, vec![DataType::Float64], Volatility::Immutable),
        }),
        ScalarUDF::from(FormatTimestamp { name: "timestamptostring", days: false, signature: two_or_three() }),
        ScalarUDF::from(FormatTimestamp { name: "format_timestamp", days: false, signature: two_or_three() }),
        ScalarUDF::from(FormatTimestamp {
            name: "format_date",
            days: false,
            signature: Signature::any(2, Volatility::Immutable),
        }),
        ScalarUDF::from(FormatTimestamp {
            name: "format_time",
            days: false,
            signature: Signature::any(2, Volatility::Immutable),
        }),
        ScalarUDF::from(FormatTimestamp {
            name: "datetostring",
            days: true,
            signature: Signature::any(2, Volatility::Immutable),
        }),
        ScalarUDF::from(ExtractJsonField { signature: Signature::any(2, Volatility::Immutable) }),
        ScalarUDF::from(ToJsonString { signature: Signature::any(1, Volatility::Immutable) }),
        ScalarUDF::from(AsValue { signature: Signature::any(1, Volatility::Immutable) }),
        ScalarUDF::from(MapUnion { signature: Signature::variadic_any(Volatility::Immutable) }),
        ScalarUDF::from(Entries { signature: Signature::any(2, Volatility::Immutable) }),
        ScalarUDF::from(AsMap { signature: Signature::any(2, Volatility::Immutable) }),
        ScalarUDF::from(EmptyStruct { signature: Signature::nullary(Volatility::Immutable) }),
        ScalarUDF::from(ArrayRemove { signature: Signature::any(2, Volatility::Immutable) }),
        ScalarUDF::from(Substring { signature: two_or_three() }),
        ScalarUDF::from(GeoDistance {
            signature: Signature::one_of(vec![TypeSignature::Any(4), TypeSignature::Any(5)], Volatility::Immutable),
        }),
    ]
}

/// `ELT(n, s1, s2, ...)`: the n-th string (from 1), null out of range; `FIELD(s, s1, s2, ...)`:
/// the position (from 1) of the first `si` equal to `s`, 0 if none (or if `s` is null).
#[derive(Debug, PartialEq, Eq, Hash)]
struct EltField {
    field: bool,
    signature: Signature,
}

impl ScalarUDFImpl for EltField {
    fn name(&self) -> &str {
        if self.field {
            "field"
        } else {
            "elt"
        }
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(if self.field { DataType::Int32 } else { DataType::Utf8 })
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        if arrays.len() < 2 {
            return exec_err!("{} needs at least two arguments", self.name().to_uppercase());
        }
        let strings: Vec<ArrayRef> = arrays[1..]
            .iter()
            .map(|a| arrow::compute::cast(a, &DataType::Utf8))
            .collect::<std::result::Result<_, _>>()?;
        let strings: Vec<&arrow::array::StringArray> = strings.iter().map(|a| a.as_string::<i32>()).collect();
        fn value(s: &arrow::array::StringArray, i: usize) -> Option<&str> {
            (!s.is_null(i)).then(|| s.value(i))
        }
        let rows = arrays[0].len();
        let out: ArrayRef = if self.field {
            let wanted = arrow::compute::cast(&arrays[0], &DataType::Utf8)?;
            let wanted = wanted.as_string::<i32>();
            Arc::new(
                (0..rows)
                    .map(|i| {
                        let w = value(wanted, i);
                        let pos = strings.iter().position(|s| w.is_some() && value(s, i) == w);
                        Some(pos.map_or(0, |p| p as i32 + 1))
                    })
                    .collect::<arrow::array::Int32Array>(),
            )
        } else {
            let n = arrow::compute::cast(&arrays[0], &DataType::Int64)?;
            let n = n.as_primitive::<arrow::datatypes::Int64Type>();
            Arc::new(
                (0..rows)
                    .map(|i| {
                        let k = (!n.is_null(i)).then(|| n.value(i)).filter(|k| *k >= 1)?;
                        strings.get(k as usize - 1).and_then(|s| value(s, i))
                    })
                    .collect::<arrow::array::StringArray>(),
            )
        };
        Ok(ColumnarValue::Array(out))
    }
}

/// `ELT` and `FIELD`.
pub fn elt_field() -> Vec<ScalarUDF> {
    [false, true]
        .into_iter()
        .map(|field| ScalarUDF::from(EltField { field, signature: Signature::variadic_any(Volatility::Immutable) }))
        .collect()
}

/// `INSTR(s, sub [, position [, occurrence]])`: the position (from 1) of the occurrence-th `sub`
/// in `s` searching forward from `position`, or backward from the `-position`-th character from
/// the end when it is negative; 0 when there is none.
#[derive(Debug, PartialEq, Eq, Hash)]
struct Instr {
    signature: Signature,
}

fn instr(s: &str, sub: &str, position: i64, occurrence: i64) -> i32 {
    let chars: Vec<char> = s.chars().collect();
    let needle: Vec<char> = sub.chars().collect();
    let n = chars.len() as i64;
    if occurrence < 1 || position == 0 || needle.len() as i64 > n {
        return 0;
    }
    let at = |i: i64| chars[i as usize..].starts_with(&needle);
    let last = n - needle.len() as i64;
    let starts: Box<dyn Iterator<Item = i64>> =
        if position > 0 { Box::new((position - 1)..=last) } else { Box::new((0..=(n + position).min(last)).rev()) };
    starts.filter(|i| at(*i)).nth(occurrence as usize - 1).map_or(0, |i| i as i32 + 1)
}

impl ScalarUDFImpl for Instr {
    fn name(&self) -> &str {
        "instr"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Int32)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let text = |i: usize| arrow::compute::cast(&arrays[i], &DataType::Utf8);
        let int = |i: usize| arrays.get(i).map(|a| arrow::compute::cast(a, &DataType::Int64)).transpose();
        let (s, sub, pos, occ) = (text(0)?, text(1)?, int(2)?, int(3)?);
        let (s, sub) = (s.as_string::<i32>(), sub.as_string::<i32>());
        let get = |a: &Option<ArrayRef>, i: usize, default: i64| match a {
            Some(a) if a.is_null(i) => None,
            Some(a) => Some(a.as_primitive::<arrow::datatypes::Int64Type>().value(i)),
            None => Some(default),
        };
        let out: arrow::array::Int32Array = (0..s.len())
            .map(|i| {
                if s.is_null(i) || sub.is_null(i) {
                    return None;
                }
                Some(instr(s.value(i), sub.value(i), get(&pos, i, 1)?, get(&occ, i, 1)?))
            })
            .collect();
        Ok(ColumnarValue::Array(Arc::new(out)))
    }
}

/// `INSTR`.
pub fn instr_fn() -> ScalarUDF {
    ScalarUDF::from(Instr {
        signature: Signature::one_of(
            vec![TypeSignature::Any(2), TypeSignature::Any(3), TypeSignature::Any(4)],
            Volatility::Immutable,
        ),
    })
}

#[cfg(test)]
mod tests {
    use datafusion::common::ScalarValue;

    use super::*;

    #[test]
    fn substring_counts_positions_as_ksqldb() {
        let udf = ScalarUDF::from(Substring { signature: Signature::any(3, Volatility::Immutable) });
        let run = |pos: i64, len: Option<i64>| {
            let mut args = vec![
                ColumnarValue::Scalar(ScalarValue::Utf8(Some("héllo".into()))),
                ColumnarValue::Scalar(ScalarValue::Int64(Some(pos))),
            ];
            args.extend(len.map(|l| ColumnarValue::Scalar(ScalarValue::Int64(Some(l)))));
            let arg_fields = args.iter().map(|a| Arc::new(Field::new("a", a.data_type(), true))).collect();
            let out = udf
                .invoke_with_args(ScalarFunctionArgs {
                    args,
                    arg_fields,
                    number_rows: 1,
                    return_field: Arc::new(Field::new("r", DataType::Utf8, true)),
                    config_options: Arc::new(Default::default()),
                })
                .unwrap();
            let ColumnarValue::Array(a) = out else { panic!("scalar") };
            a.as_string::<i32>().value(0).to_string()
        };
        assert_eq!(run(0, Some(2)), "hé");
        assert_eq!(run(1, Some(2)), "hé");
        assert_eq!(run(2, None), "éllo");
        assert_eq!(run(-3, Some(2)), "ll");
        assert_eq!(run(9, Some(2)), "");
        assert_eq!(run(-9, Some(1)), "h");
    }

    /// Keys pair with the values at their positions (null past the end); a duplicate key keeps
    /// its first place with the later value; null keys are skipped; a null list gives null.
    #[test]
    fn as_map_pairs_keys_with_values() {
        use arrow::array::{Int32Array, StringArray};
        let udf = ScalarUDF::from(AsMap { signature: Signature::any(2, Volatility::Immutable) });
        let list = |values: ArrayRef, offsets: Vec<i32>, nulls: Option<Vec<bool>>| -> ArrayRef {
            let field = Arc::new(Field::new("item", values.data_type().clone(), true));
            Arc::new(ListArray::new(field, OffsetBuffer::new(offsets.into()), values, nulls.map(NullBuffer::from)))
        };
        let keys = list(
            Arc::new(StringArray::from(vec![Some("a"), Some("b"), Some("a"), None, Some("c"), Some("x")])),
            vec![0, 5, 6],
            None,
        );
        let values = list(Arc::new(Int32Array::from(vec![1, 2, 3, 4])), vec![0, 4, 4], Some(vec![true, false]));
        let types = [keys.data_type().clone(), values.data_type().clone()];
        let return_type = udf.return_type(&types).unwrap();
        let args = vec![ColumnarValue::Array(keys), ColumnarValue::Array(values)];
        let arg_fields = args.iter().map(|a| Arc::new(Field::new("a", a.data_type(), true))).collect();
        let out = udf
            .invoke_with_args(ScalarFunctionArgs {
                args,
                arg_fields,
                number_rows: 2,
                return_field: Arc::new(Field::new("r", return_type, true)),
                config_options: Arc::new(Default::default()),
            })
            .unwrap();
        let ColumnarValue::Array(a) = out else { panic!("scalar") };
        let map = a.as_map();
        assert!(map.is_valid(0) && map.is_null(1));
        let entries = map.value(0);
        let keys: Vec<&str> = entries.column(0).as_string::<i32>().iter().map(|k| k.unwrap()).collect();
        let values: Vec<Option<i32>> = entries.column(1).as_primitive::<arrow::datatypes::Int32Type>().iter().collect();
        assert_eq!(keys, ["a", "b", "c"]);
        assert_eq!(values, [Some(3), Some(2), None]);
    }

    #[test]
    fn instr_searches_forward_or_back() {
        assert_eq!(instr("corporate floor", "or", 1, 1), 2);
        assert_eq!(instr("corporate floor", "or", 4, 2), 14);
        assert_eq!(instr("corporate floor", "or", -4, 1), 5);
        assert_eq!(instr("corporate floor", "or", -4, 2), 2);
        assert_eq!(instr("short", "or", 4, 1), 0);
        assert_eq!(instr("no substring", "or", 1, 1), 0);
    }

    #[test]
    fn json_paths() {
        assert_eq!(parse_path("$.a.b[0]"), Some(vec![Ok("a".into()), Ok("b".into()), Err(0)]));
        assert_eq!(parse_path("$['x y']"), Some(vec![Ok("x y".into())]));
        assert_eq!(parse_path("a.b"), None);
    }
}
