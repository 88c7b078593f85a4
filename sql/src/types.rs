//! ksqlDB's SQL types and their Arrow representation.

use std::fmt;
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Fields, TimeUnit};

/// A ksqlDB column type.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum SqlType {
    /// BOOLEAN
    Boolean,
    /// INT / INTEGER (32-bit)
    Int,
    /// BIGINT
    Bigint,
    /// DOUBLE
    Double,
    /// DECIMAL(precision, scale)
    Decimal(u8, i8),
    /// STRING / VARCHAR
    String,
    /// BYTES
    Bytes,
    /// TIMESTAMP (millisecond precision, no zone)
    Timestamp,
    /// DATE
    Date,
    /// TIME
    Time,
    /// ARRAY<T>
    Array(Box<SqlType>),
    /// MAP<K, V>
    Map(Box<SqlType>, Box<SqlType>),
    /// STRUCT<name T, ...>
    Struct(Vec<(String, SqlType)>),
}

/// The Arrow type of ksqlDB's maps: entries `key` (never null) and `value`.
pub fn map_type(key: DataType, value: DataType) -> DataType {
    let entries = Fields::from(vec![Field::new("key", key, false), Field::new("value", value, true)]);
    DataType::Map(Arc::new(Field::new("entries", DataType::Struct(entries), false)), false)
}

impl SqlType {
    /// Whether the type is a map or holds one (in arrays or structs).
    pub fn contains_map(&self) -> bool {
        match self {
            SqlType::Map(_, _) => true,
            SqlType::Array(e) => e.contains_map(),
            SqlType::Struct(fields) => fields.iter().any(|(_, t)| t.contains_map()),
            _ => false,
        }
    }

    /// INT, BIGINT, DOUBLE or DECIMAL.
    pub fn is_numeric(&self) -> bool {
        matches!(self, SqlType::Int | SqlType::Bigint | SqlType::Double | SqlType::Decimal(..))
    }

    /// The Arrow type this maps to.
    pub fn to_arrow(&self) -> DataType {
        match self {
            SqlType::Boolean => DataType::Boolean,
            SqlType::Int => DataType::Int32,
            SqlType::Bigint => DataType::Int64,
            SqlType::Double => DataType::Float64,
            SqlType::Decimal(p, s) => DataType::Decimal128(*p, *s),
            SqlType::String => DataType::Utf8,
            SqlType::Bytes => DataType::Binary,
            SqlType::Timestamp => DataType::Timestamp(TimeUnit::Millisecond, None),
            SqlType::Date => DataType::Date32,
            SqlType::Time => DataType::Time32(TimeUnit::Millisecond),
            SqlType::Array(t) => DataType::List(Arc::new(Field::new("item", t.to_arrow(), true))),
            SqlType::Map(k, v) => map_type(k.to_arrow(), v.to_arrow()),
            SqlType::Struct(fields) => DataType::Struct(
                fields.iter().map(|(n, t)| Field::new(n, t.to_arrow(), true)).collect::<Vec<_>>().into(),
            ),
        }
    }

    /// The ksqlDB type for an Arrow type computed by an expression.
    pub fn from_arrow(dt: &DataType) -> Option<SqlType> {
        Some(match dt {
            DataType::Boolean => SqlType::Boolean,
            DataType::Int8 | DataType::Int16 | DataType::Int32 | DataType::UInt8 | DataType::UInt16 => SqlType::Int,
            DataType::Int64 | DataType::UInt32 | DataType::UInt64 => SqlType::Bigint,
            DataType::Float16 | DataType::Float32 | DataType::Float64 => SqlType::Double,
            DataType::Decimal128(p, s) => SqlType::Decimal(*p, *s),
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => SqlType::String,
            DataType::Binary | DataType::LargeBinary | DataType::BinaryView => SqlType::Bytes,
            DataType::Timestamp(_, _) => SqlType::Timestamp,
            DataType::Date32 | DataType::Date64 => SqlType::Date,
            DataType::Time32(_) | DataType::Time64(_) => SqlType::Time,
            DataType::List(f) | DataType::LargeList(f) => SqlType::Array(Box::new(SqlType::from_arrow(f.data_type())?)),
            DataType::Map(entries, _) => match entries.data_type() {
                DataType::Struct(kv) if kv.len() == 2 => SqlType::Map(
                    Box::new(SqlType::from_arrow(kv[0].data_type())?),
                    Box::new(SqlType::from_arrow(kv[1].data_type())?),
                ),
                _ => return None,
            },
            DataType::Struct(fields) => SqlType::Struct(
                fields
                    .iter()
                    .map(|f| Some((f.name().clone(), SqlType::from_arrow(f.data_type())?)))
                    .collect::<Option<Vec<_>>>()?,
            ),
            DataType::Null => SqlType::String,
            _ => return None,
        })
    }

    /// The arrow type normalised to what [`SqlType::to_arrow`] gives (e.g. Utf8View → Utf8).
    pub fn normalize_arrow(dt: &DataType) -> DataType {
        SqlType::from_arrow(dt).map(|t| t.to_arrow()).unwrap_or_else(|| dt.clone())
    }
}

impl fmt::Display for SqlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SqlType::Boolean => write!(f, "BOOLEAN"),
            SqlType::Int => write!(f, "INTEGER"),
            SqlType::Bigint => write!(f, "BIGINT"),
            SqlType::Double => write!(f, "DOUBLE"),
            SqlType::Decimal(p, s) => write!(f, "DECIMAL({p}, {s})"),
            SqlType::String => write!(f, "STRING"),
            SqlType::Bytes => write!(f, "BYTES"),
            SqlType::Timestamp => write!(f, "TIMESTAMP"),
            SqlType::Date => write!(f, "DATE"),
            SqlType::Time => write!(f, "TIME"),
            SqlType::Array(t) => write!(f, "ARRAY<{t}>"),
            SqlType::Map(k, v) => write!(f, "MAP<{k}, {v}>"),
            SqlType::Struct(fields) => {
                write!(f, "STRUCT<")?;
                for (i, (n, t)) in fields.iter().enumerate() {
                    if i > 0 {
                        write!(f, ", ")?;
                    }
                    write!(f, "`{n}` {t}")?;
                }
                write!(f, ">")
            }
        }
    }
}
