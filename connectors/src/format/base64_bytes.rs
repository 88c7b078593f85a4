//! BYTES in text formats: ksqlDB writes them base64-encoded (JSON strings, DELIMITED fields).
//!
//! The text decoders read BYTES columns (also inside arrays, maps and structs) as strings; this
//! wrapper turns them into bytes, sending a record whose string is not base64 to the dead-letter
//! topic. Encoding goes the other way before the text encoder runs.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BinaryArray, BooleanArray, ListArray, MapArray, RecordBatch, StringArray, StructArray,
};
use arrow::datatypes::{DataType, Field, FieldRef, Fields, Schema, SchemaRef};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use bytes::Bytes;

use super::{Decoded, Decoder, Encoder};
use crate::Result;

/// Whether `dt` is or holds BYTES.
pub(crate) fn has_bytes(dt: &DataType) -> bool {
    match dt {
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => true,
        DataType::List(f) | DataType::LargeList(f) | DataType::Map(f, _) => has_bytes(f.data_type()),
        DataType::Struct(fs) => fs.iter().any(|f| has_bytes(f.data_type())),
        _ => false,
    }
}

/// `dt` with every BYTES replaced by STRING.
fn as_text(dt: &DataType) -> DataType {
    let field = |f: &FieldRef| Arc::new(f.as_ref().clone().with_data_type(as_text(f.data_type())));
    match dt {
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => DataType::Utf8,
        DataType::List(f) => DataType::List(field(f)),
        DataType::Map(f, sorted) => DataType::Map(field(f), *sorted),
        DataType::Struct(fs) => DataType::Struct(fs.iter().map(field).collect()),
        other => other.clone(),
    }
}

/// `schema` as the text decoder reads it (BYTES as STRING).
pub(crate) fn text_schema(schema: &Schema) -> SchemaRef {
    let fields: Vec<Field> =
        schema.fields().iter().map(|f| f.as_ref().clone().with_data_type(as_text(f.data_type()))).collect();
    Arc::new(Schema::new(fields))
}

/// A text decoder whose BYTES columns come out as base64 strings, decoded here.
pub(crate) struct Base64Decoder {
    pub(crate) inner: Box<dyn Decoder>,
    pub(crate) schema: SchemaRef,
}

impl Decoder for Base64Decoder {
    fn decode(&mut self, values: &[&[u8]]) -> Result<Decoded> {
        let decoded = self.inner.decode(values)?;
        let rows = decoded.batch.num_rows();
        let mut bad = vec![false; rows];
        let mut columns = Vec::with_capacity(decoded.batch.num_columns());
        for (column, field) in decoded.batch.columns().iter().zip(self.schema.fields()) {
            let (column, column_bad) = from_text(column, field.data_type())?;
            bad.iter_mut().zip(column_bad).for_each(|(b, c)| *b |= c);
            columns.push(column);
        }
        let batch = RecordBatch::try_new_with_options(
            self.schema.clone(),
            columns,
            &arrow::array::RecordBatchOptions::new().with_row_count(Some(rows)),
        )?;
        if !bad.contains(&true) {
            return Ok(Decoded { batch, ..decoded });
        }
        let input = |r: usize| decoded.good.as_ref().map_or(r, |g| g[r] as usize);
        let mut errors = decoded.errors;
        errors.extend(
            (0..rows)
                .filter(|r| bad[*r])
                .map(|r| (input(r), "Failed to deserialize: BYTES must be base64".to_string())),
        );
        errors.sort_by_key(|(i, _)| *i);
        let keep = BooleanArray::from(bad.iter().map(|b| !b).collect::<Vec<_>>());
        let good: Vec<u32> = (0..rows).filter(|r| !bad[*r]).map(|r| input(r) as u32).collect();
        Ok(Decoded { batch: arrow::compute::filter_record_batch(&batch, &keep)?, good: Some(good), errors })
    }
}

/// `array` (read with BYTES as strings) as `target`; per element, whether it was not base64.
fn from_text(array: &ArrayRef, target: &DataType) -> Result<(ArrayRef, Vec<bool>)> {
    if !has_bytes(target) {
        return Ok((array.clone(), vec![false; array.len()]));
    }
    Ok(match (array.data_type(), target) {
        (DataType::Utf8, _) => {
            let text = array.as_string::<i32>();
            let mut bad = vec![false; text.len()];
            let bytes: BinaryArray = text
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    v.and_then(|s| {
                        let decoded = STANDARD.decode(s).ok();
                        bad[i] = decoded.is_none();
                        decoded
                    })
                })
                .collect();
            (Arc::new(bytes), bad)
        }
        (DataType::List(_), DataType::List(f)) => {
            let list = array.as_list::<i32>();
            let (values, value_bad) = from_text(list.values(), f.data_type())?;
            let bad = per_parent(list.value_offsets(), &value_bad);
            let list = ListArray::try_new(f.clone(), list.offsets().clone(), values, list.nulls().cloned())?;
            (Arc::new(list), bad)
        }
        (DataType::Map(_, _), DataType::Map(f, sorted)) => {
            let map = array.as_map();
            let entries: ArrayRef = Arc::new(map.entries().clone());
            let (entries, entry_bad) = from_text(&entries, f.data_type())?;
            let bad = per_parent(map.value_offsets(), &entry_bad);
            let map = MapArray::try_new(
                f.clone(),
                map.offsets().clone(),
                entries.as_struct().clone(),
                map.nulls().cloned(),
                *sorted,
            )?;
            (Arc::new(map), bad)
        }
        (DataType::Struct(_), DataType::Struct(fields)) => {
            let s = array.as_struct();
            let mut bad = vec![false; s.len()];
            let mut children = Vec::with_capacity(fields.len());
            for (child, field) in s.columns().iter().zip(fields) {
                let (child, child_bad) = from_text(child, field.data_type())?;
                bad.iter_mut().zip(child_bad).for_each(|(b, c)| *b |= c);
                children.push(child);
            }
            (Arc::new(StructArray::try_new(fields.clone(), children, s.nulls().cloned())?), bad)
        }
        _ => (array.clone(), vec![false; array.len()]),
    })
}

/// Marks a parent element bad when any of its children (between its offsets) is.
fn per_parent(offsets: &[i32], child_bad: &[bool]) -> Vec<bool> {
    offsets.windows(2).map(|w| child_bad[w[0] as usize..w[1] as usize].contains(&true)).collect()
}

/// `array` with every BYTES value written as a base64 string.
pub(crate) fn to_text(array: &ArrayRef) -> Result<ArrayRef> {
    if !has_bytes(array.data_type()) {
        return Ok(array.clone());
    }
    let text_field = |f: &FieldRef, values: &ArrayRef| {
        Arc::new(f.as_ref().clone().with_data_type(values.data_type().clone())) as FieldRef
    };
    Ok(match array.data_type() {
        DataType::Binary => {
            let bytes = array.as_binary::<i32>();
            Arc::new(bytes.iter().map(|v| v.map(|b| STANDARD.encode(b))).collect::<StringArray>())
        }
        DataType::LargeBinary => {
            let bytes = array.as_binary::<i64>();
            Arc::new(bytes.iter().map(|v| v.map(|b| STANDARD.encode(b))).collect::<StringArray>())
        }
        DataType::BinaryView => {
            let bytes = array.as_binary_view();
            Arc::new(bytes.iter().map(|v| v.map(|b| STANDARD.encode(b))).collect::<StringArray>())
        }
        DataType::List(f) => {
            let list = array.as_list::<i32>();
            let values = to_text(list.values())?;
            Arc::new(ListArray::try_new(text_field(f, &values), list.offsets().clone(), values, list.nulls().cloned())?)
        }
        DataType::Map(f, sorted) => {
            let map = array.as_map();
            let entries = to_text(&(Arc::new(map.entries().clone()) as ArrayRef))?;
            let field = text_field(f, &entries);
            Arc::new(MapArray::try_new(
                field,
                map.offsets().clone(),
                entries.as_struct().clone(),
                map.nulls().cloned(),
                *sorted,
            )?)
        }
        DataType::Struct(fields) => {
            let s = array.as_struct();
            let children = s.columns().iter().map(to_text).collect::<Result<Vec<_>>>()?;
            let fields: Fields = fields.iter().zip(&children).map(|(f, c)| text_field(f, c)).collect();
            Arc::new(StructArray::try_new(fields, children, s.nulls().cloned())?)
        }
        _ => array.clone(),
    })
}

/// A text encoder that gets BYTES columns as base64 strings.
pub(crate) struct Base64Encoder {
    pub(crate) inner: Box<dyn Encoder>,
}

impl Encoder for Base64Encoder {
    fn encode(&mut self, batch: &RecordBatch, out: &mut Vec<Option<Bytes>>) -> Result<()> {
        let columns = batch.columns().iter().map(to_text).collect::<Result<Vec<_>>>()?;
        let fields: Vec<Field> = batch
            .schema()
            .fields()
            .iter()
            .zip(&columns)
            .map(|(f, c)| f.as_ref().clone().with_data_type(c.data_type().clone()))
            .collect();
        let text = RecordBatch::try_new_with_options(
            Arc::new(Schema::new(fields)),
            columns,
            &arrow::array::RecordBatchOptions::new().with_row_count(Some(batch.num_rows())),
        )?;
        self.inner.encode(&text, out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{decoder, encoder, Format, FormatKind};

    #[test]
    fn json_bytes_are_base64_also_nested_and_bad_ones_are_dead_letters() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("B", DataType::Binary, true),
            Field::new("A", DataType::List(Arc::new(Field::new("item", DataType::Binary, true))), true),
        ]));
        let mut dec = decoder(&Format::new(FormatKind::Json), schema.clone(), None).unwrap();
        let values: Vec<&[u8]> =
            vec![br#"{"B":"ew==","A":["YQ==",null]}"#, br#"{"B":"not base64!","A":[]}"#, br#"{"B":null,"A":null}"#];
        let d = dec.decode(&values).unwrap();
        assert_eq!(d.batch.num_rows(), 2);
        assert_eq!(d.good, Some(vec![0, 2]));
        assert_eq!(d.errors.len(), 1);
        assert_eq!(d.errors[0].0, 1);
        assert_eq!(d.batch.column(0).as_binary::<i32>().value(0), b"{");
        let list = d.batch.column(1).as_list::<i32>();
        assert_eq!(list.value(0).as_binary::<i32>().value(0), b"a");

        let mut enc = encoder(&Format::new(FormatKind::Json), schema, None).unwrap();
        let mut out = Vec::new();
        enc.encode(&d.batch, &mut out).unwrap();
        assert_eq!(out[0].as_deref(), Some(br#"{"B":"ew==","A":["YQ==",null]}"#.as_slice()));
    }
}
