//! Writing results: batches → key and value bytes → records appended to a topic.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::compute::CastOptions;
use arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef};
use bytes::Bytes;
use rill_connectors::format::{self, Encoder, Format, Registered};
use rill_connectors::registry::subject;
use rill_connectors::store::{Record, TopicStore};

use crate::source::DeadLetter;
use crate::Result;

/// Where and how a query writes its rows.
#[derive(Clone, Debug)]
pub struct SinkSpec {
    /// Output topic.
    pub topic: String,
    /// Format of record keys.
    pub key_format: Format,
    /// Format of record values.
    pub value_format: Format,
    /// Columns of the incoming batch that form the key, in key order.
    pub key_columns: Vec<usize>,
    /// Columns of the incoming batch that form the value.
    pub value_columns: Vec<usize>,
    /// The column holding each row's record timestamp: BIGINT milliseconds, a TIMESTAMP, or a
    /// STRING in `timestamp_format` (a row without a time gets 0; a row whose time is negative
    /// or does not parse is not written: it goes to the dead-letter topic).
    pub timestamp_column: usize,
    /// The chrono format of a STRING timestamp column.
    pub timestamp_format: Option<String>,
    /// Schema of the incoming batches.
    pub input_schema: SchemaRef,
    /// A BOOLEAN column marking rows to write as tombstones (null value).
    pub delete_column: Option<usize>,
    /// Windowed keys: the window start and end columns, and whether windows are sessions.
    pub window: Option<WindowKey>,
    /// A column of each row's record headers (`ARRAY<STRUCT<KEY, VALUE>>`, see
    /// [`crate::source::HEADERS`]) to write with it.
    pub headers_column: Option<usize>,
    /// The key columns are the input record's key as read (no GROUP BY, PARTITION BY or
    /// join chose them): when all are null the input record had no key, nor has the output.
    pub key_from_input: bool,
    /// Columns written as a narrower type than the batch carries them in, with that type:
    /// DECIMALs whose declared precision is less than computed (ksqlDB's `SUM` of a
    /// `DECIMAL(p, s)` is a `DECIMAL(p, s)`; DataFusion sums in a wider one). A row whose value
    /// does not fit is not written: it goes to the dead-letter topic ("Numeric field overflow").
    pub narrow: Vec<(usize, DataType)>,
}

/// The input schema with the `narrow` columns' types as written.
fn written_schema(spec: &SinkSpec) -> SchemaRef {
    if spec.narrow.is_empty() {
        return spec.input_schema.clone();
    }
    let mut fields: Vec<Field> = spec.input_schema.fields().iter().map(|f| f.as_ref().clone()).collect();
    for (c, to) in &spec.narrow {
        fields[*c] = fields[*c].clone().with_data_type(to.clone());
    }
    Arc::new(Schema::new_with_metadata(fields, spec.input_schema.metadata().clone()))
}

/// Row `i` of a headers column as record headers.
fn headers_of(column: &arrow::array::ListArray, i: usize) -> Vec<(String, Option<Bytes>)> {
    let offsets = column.value_offsets();
    let (from, to) = (offsets[i] as usize, offsets[i + 1] as usize);
    if from == to || column.is_null(i) {
        return Vec::new();
    }
    let entries = column.values().as_struct();
    let (keys, values) = (entries.column(0).as_string::<i32>(), entries.column(1).as_binary::<i32>());
    (from..to)
        .map(|j| {
            let value = (!values.is_null(j)).then(|| Bytes::copy_from_slice(values.value(j)));
            (keys.value(j).to_string(), value)
        })
        .collect()
}

/// How window bounds are appended to the key bytes, as Kafka Streams' windowed serdes do:
/// time windows append the 8-byte big-endian start, session windows the end then the start.
#[derive(Clone, Copy, Debug)]
pub struct WindowKey {
    /// WINDOWSTART column.
    pub start: usize,
    /// WINDOWEND column.
    pub end: usize,
    /// Session windows.
    pub session: bool,
}

/// Encodes and appends batches to the output topic, partitioned by key like Kafka.
pub struct Sink {
    spec: SinkSpec,
    store: Arc<dyn TopicStore>,
    key_encoder: Box<dyn Encoder>,
    value_encoder: Box<dyn Encoder>,
    refused: Vec<DeadLetter>,
    /// The input schema with the `narrow` columns' types as written.
    written: SchemaRef,
}

impl Sink {
    /// A sink for `spec` on `store`.
    pub fn try_new(spec: SinkSpec, store: Arc<dyn TopicStore>) -> Result<Self> {
        let written = written_schema(&spec);
        let key_schema = Arc::new(written.project(&spec.key_columns)?);
        let value_schema = Arc::new(written.project(&spec.value_columns)?);
        let on = |key: bool| Registered { registry: store.schema_registry(), subject: subject(&spec.topic, key) };
        let key_encoder = format::encoder(&spec.key_format, key_schema, Some(&on(true)))?;
        let value_encoder = format::encoder(&spec.value_format, value_schema, Some(&on(false)))?;
        Ok(Self { spec, store, key_encoder, value_encoder, refused: Vec::new(), written })
    }

    /// Rows [`Sink::encode`] did not turn into records (see `timestamp_column`), since the last
    /// call: the caller sends them to the dead-letter topic.
    pub fn take_refused(&mut self) -> Vec<DeadLetter> {
        std::mem::take(&mut self.refused)
    }

    /// Encodes `batch` into records, grouped by output partition.
    pub fn encode(&mut self, batch: &RecordBatch) -> Result<BTreeMap<u32, Vec<Record>>> {
        let n = batch.num_rows();
        // Why a row cannot be written: its time, or a value that does not fit its column.
        let mut refused_why: Vec<Option<String>> = vec![None; n];
        let narrowed;
        let batch = if self.spec.narrow.is_empty() {
            batch
        } else {
            narrowed = self.narrow(batch, &mut refused_why)?;
            &narrowed
        };
        let mut keys: Vec<Option<Bytes>> = Vec::with_capacity(n);
        let mut values: Vec<Option<Bytes>> = Vec::with_capacity(n);
        if self.spec.key_columns.is_empty() {
            keys.resize(n, None);
        } else {
            let key_batch = batch.project(&self.spec.key_columns)?;
            self.key_encoder.encode(&key_batch, &mut keys)?;
            // A null single-column key is a null key, whatever the format; so is a key of
            // several columns, all null, that is the input's key as read (a record without one).
            let columns = key_batch.columns();
            if (columns.len() == 1 || self.spec.key_from_input) && columns.iter().all(|c| c.null_count() > 0) {
                for (i, k) in keys.iter_mut().enumerate() {
                    if columns.iter().all(|c| c.is_null(i)) {
                        *k = None;
                    }
                }
            }
        }
        self.value_encoder.encode(&batch.project(&self.spec.value_columns)?, &mut values)?;
        let ts_column = batch.column(self.spec.timestamp_column);
        let ts = match (ts_column.data_type(), &self.spec.timestamp_format) {
            (DataType::Utf8, Some(format)) => {
                let (ts, errors) = crate::source::parse_timestamps(ts_column.as_string::<i32>(), format);
                for (i, e) in errors {
                    refused_why[i].get_or_insert(e);
                }
                ts
            }
            _ => arrow::compute::cast(ts_column, &DataType::Int64)?.as_primitive::<Int64Type>().clone(),
        };
        let delete = self.spec.delete_column.map(|c| batch.column(c).as_boolean().clone());
        let headers = self.spec.headers_column.map(|c| batch.column(c).as_list::<i32>().clone());
        let window = match self.spec.window {
            Some(w) => Some((
                arrow::compute::cast(batch.column(w.start), &DataType::Int64)?,
                arrow::compute::cast(batch.column(w.end), &DataType::Int64)?,
                w.session,
            )),
            None => None,
        };
        let mut by_partition: BTreeMap<u32, Vec<Record>> = BTreeMap::new();
        // Partition on the key without the window, so all windows of a key stay together.
        let partitions =
            self.store.partitions_for_keys(&self.spec.topic, &keys.iter().map(|k| k.as_deref()).collect::<Vec<_>>())?;
        for (i, ((key, mut value), p)) in keys.into_iter().zip(values).zip(partitions).enumerate() {
            let key = match &window {
                Some((start, end, session)) => {
                    let start = start.as_primitive::<Int64Type>().value(i);
                    let end = end.as_primitive::<Int64Type>().value(i);
                    let mut k = key.map(|k| k.to_vec()).unwrap_or_default();
                    if *session {
                        k.extend_from_slice(&end.to_be_bytes());
                    }
                    k.extend_from_slice(&start.to_be_bytes());
                    Some(Bytes::from(k))
                }
                None => key,
            };
            if delete.as_ref().is_some_and(|d| d.value(i)) {
                value = None;
            }
            let timestamp = if ts.is_null(i) { 0 } else { ts.value(i) };
            let why = match &refused_why[i] {
                Some(e) => Some(e.clone()),
                None if timestamp < 0 => {
                    Some(format!("the record's time ({timestamp}) is negative: it must be 0 or later"))
                }
                None => None,
            };
            if let Some(why) = why {
                let lossy = |b: &Option<Bytes>| b.as_ref().map(|b| String::from_utf8_lossy(b).into_owned());
                self.refused.push(DeadLetter {
                    topic: self.spec.topic.clone(),
                    partition: p,
                    offset: 0,
                    error: format!("output record not written: {why}"),
                    key: lossy(&key),
                    value: lossy(&value),
                });
                continue;
            }
            let headers = headers.as_ref().map(|h| headers_of(h, i)).unwrap_or_default();
            by_partition.entry(p).or_default().push(Record { timestamp, key, value, headers });
        }
        Ok(by_partition)
    }

    /// `batch` with the `narrow` columns cast to their written types; a value that does not fit
    /// becomes null and its row is marked refused.
    fn narrow(&self, batch: &RecordBatch, refused: &mut [Option<String>]) -> Result<RecordBatch> {
        let mut columns = batch.columns().to_vec();
        let safe = CastOptions { safe: true, ..Default::default() };
        for (c, to) in &self.spec.narrow {
            let from = &columns[*c];
            let cast = arrow::compute::cast_with_options(from, to, &safe)?;
            if cast.null_count() > from.null_count() {
                let to = match to {
                    DataType::Decimal128(p, s) => format!("DECIMAL({p}, {s})"),
                    other => other.to_string(),
                };
                let name = batch.schema().field(*c).name().clone();
                let shown = arrow::util::display::ArrayFormatter::try_new(from.as_ref(), &Default::default())?;
                for i in (0..cast.len()).filter(|&i| cast.is_null(i) && !from.is_null(i)) {
                    refused[i].get_or_insert_with(|| {
                        format!("Numeric field overflow: {name} = {} does not fit {to}", shown.value(i))
                    });
                }
            }
            columns[*c] = cast;
        }
        Ok(RecordBatch::try_new(self.written.clone(), columns)?)
    }

    /// The output topic.
    pub fn topic(&self) -> &str {
        &self.spec.topic
    }

    /// Encodes and appends `batch`; returns once the records are durable.
    pub async fn write(&mut self, batch: &RecordBatch) -> Result<usize> {
        let by_partition = self.encode(batch)?;
        let mut written = 0;
        for (p, records) in by_partition {
            self.store.append(&self.spec.topic, p, &records).await?;
            written += records.len();
        }
        Ok(written)
    }
}

#[cfg(test)]
mod tests {
    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use rill_connectors::format::FormatKind;
    use rill_connectors::EmbeddedStore;

    use super::*;

    /// An embedded log in `dir` with the topic "out".
    fn out_store(dir: &tempfile::TempDir) -> Arc<dyn TopicStore> {
        let store: Arc<dyn TopicStore> = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
        store.create_topic("out", rill_log::TopicConfig::default()).unwrap();
        store
    }

    /// A sink spec for topic "out" with JSON values, no key, no window and no headers.
    fn spec(schema: &SchemaRef, value_columns: Vec<usize>, timestamp_column: usize) -> SinkSpec {
        SinkSpec {
            topic: "out".into(),
            key_format: Format::new(FormatKind::Kafka),
            value_format: Format::new(FormatKind::Json),
            key_columns: vec![],
            value_columns,
            timestamp_column,
            timestamp_format: None,
            input_schema: schema.clone(),
            delete_column: None,
            window: None,
            headers_column: None,
            key_from_input: false,
            narrow: vec![],
        }
    }

    #[test]
    fn rows_with_a_bad_output_time_become_dead_letters() {
        let dir = tempfile::tempdir().unwrap();
        let store = out_store(&dir);
        let schema = Arc::new(Schema::new(vec![
            Field::new("ID", DataType::Int64, true),
            Field::new("TS", DataType::Utf8, true),
        ]));
        let spec = SinkSpec { timestamp_format: Some("%Y-%m-%dT%H:%M:%S%z".into()), ..spec(&schema, vec![0, 1], 1) };
        let mut sink = Sink::try_new(spec, store).unwrap();
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from(vec![1, 2, 3])),
                Arc::new(StringArray::from(vec!["2018-05-11T21:58:33Z", "not a time", "1960-01-01T00:00:00Z"])),
            ],
        )
        .unwrap();
        let written: Vec<Record> = sink.encode(&batch).unwrap().into_values().flatten().collect();
        assert_eq!(written.len(), 1);
        assert_eq!(written[0].timestamp, 1_526_075_913_000);
        let refused = sink.take_refused();
        assert_eq!(refused.len(), 2, "the unparsable and the negative time");
        assert!(refused[0].error.contains("not a time"), "{}", refused[0].error);
        assert!(refused[1].error.contains("negative"), "{}", refused[1].error);
        assert!(refused[1].value.as_deref().is_some_and(|v| v.contains("\"ID\":3")));
        assert!(sink.take_refused().is_empty(), "taken once");
    }

    /// A DECIMAL written narrower than computed (ksqlDB's SUM type): a value that fits is written
    /// in the narrow type, one that does not goes to the dead-letter topic with its value.
    #[test]
    fn decimals_that_do_not_fit_their_column_become_dead_letters() {
        use arrow::array::Decimal128Array;
        let dir = tempfile::tempdir().unwrap();
        let store = out_store(&dir);
        let schema = Arc::new(Schema::new(vec![
            Field::new("SUM", DataType::Decimal128(14, 1), true),
            Field::new("TS", DataType::Int64, true),
        ]));
        let spec = SinkSpec { narrow: vec![(0, DataType::Decimal128(4, 1))], ..spec(&schema, vec![0], 1) };
        let mut sink = Sink::try_new(spec, store).unwrap();
        let sums = Decimal128Array::from(vec![Some(1055), Some(12025), None]).with_precision_and_scale(14, 1).unwrap();
        let batch =
            RecordBatch::try_new(schema, vec![Arc::new(sums), Arc::new(Int64Array::from(vec![1, 2, 3]))]).unwrap();
        let written: Vec<Record> = sink.encode(&batch).unwrap().into_values().flatten().collect();
        let values: Vec<String> =
            written.iter().map(|r| String::from_utf8_lossy(r.value.as_deref().unwrap()).into_owned()).collect();
        assert_eq!(values, [r#"{"SUM":105.5}"#, r#"{"SUM":null}"#], "the fitting sum and the null one");
        let refused = sink.take_refused();
        assert_eq!(refused.len(), 1);
        assert!(
            refused[0].error.contains("Numeric field overflow: SUM = 1202.5 does not fit DECIMAL(4, 1)"),
            "{}",
            refused[0].error
        );
    }

    /// A row's headers column becomes its record's headers, in order, null values kept.
    #[test]
    fn rows_carry_their_headers_to_their_records() {
        use arrow::array::{BinaryArray, ListArray, StructArray};
        use arrow::buffer::OffsetBuffer;
        let dir = tempfile::tempdir().unwrap();
        let store = out_store(&dir);
        let headers_type = crate::source::headers_type();
        let DataType::List(item) = &headers_type else { unreachable!() };
        let DataType::Struct(fields) = item.data_type() else { unreachable!() };
        let entries = StructArray::new(
            fields.clone(),
            vec![Arc::new(StringArray::from(vec!["a", "b"])), Arc::new(BinaryArray::from(vec![Some(&b"1"[..]), None]))],
            None,
        );
        let headers = ListArray::new(item.clone(), OffsetBuffer::from_lengths([0, 2]), Arc::new(entries), None);
        let schema = Arc::new(Schema::new(vec![
            Field::new("ID", DataType::Int64, true),
            Field::new(crate::source::HEADERS, headers_type.clone(), true),
        ]));
        let spec = SinkSpec { headers_column: Some(1), ..spec(&schema, vec![0], 0) };
        let mut sink = Sink::try_new(spec, store).unwrap();
        let batch =
            RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(vec![1, 2])), Arc::new(headers)]).unwrap();
        let written: Vec<Record> = sink.encode(&batch).unwrap().into_values().flatten().collect();
        assert!(written[0].headers.is_empty());
        assert_eq!(
            written[1].headers,
            vec![("a".to_string(), Some(Bytes::from_static(b"1"))), ("b".to_string(), None)]
        );
        assert_eq!(written[1].value.as_deref(), Some(&br#"{"ID":2}"#[..]), "the headers are not in the value");
    }

    /// A key of several columns, all null, is written as no key when it is the input's key as
    /// read (the input record had none), and as its null columns when a query chose it.
    #[test]
    fn an_all_null_key_read_from_the_input_is_no_key() {
        let dir = tempfile::tempdir().unwrap();
        let store = out_store(&dir);
        let schema = Arc::new(Schema::new(vec![
            Field::new("K1", DataType::Utf8, true),
            Field::new("K2", DataType::Int64, true),
            Field::new("V", DataType::Int64, true),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from(vec![Some("a"), None, None])),
                Arc::new(Int64Array::from(vec![Some(1), Some(2), None])),
                Arc::new(Int64Array::from(vec![10, 20, 30])),
            ],
        )
        .unwrap();
        let keys = |key_from_input: bool| -> Vec<Option<Bytes>> {
            let spec = SinkSpec {
                key_format: Format::new(FormatKind::Json),
                key_columns: vec![0, 1],
                key_from_input,
                ..spec(&schema, vec![2], 2)
            };
            let mut sink = Sink::try_new(spec, store.clone()).unwrap();
            let mut written: Vec<Record> = sink.encode(&batch).unwrap().into_values().flatten().collect();
            written.sort_by_key(|r| r.timestamp);
            written.into_iter().map(|r| r.key).collect()
        };
        let from_input = keys(true);
        assert_eq!(from_input[0].as_deref(), Some(&br#"{"K1":"a","K2":1}"#[..]));
        assert_eq!(from_input[1].as_deref(), Some(&br#"{"K1":null,"K2":2}"#[..]), "one null column is a key");
        assert_eq!(from_input[2], None);
        let chosen = keys(false);
        assert_eq!(chosen[2].as_deref(), Some(&br#"{"K1":null,"K2":null}"#[..]));
    }
}
