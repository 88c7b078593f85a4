//! ksqlDB's BYTES functions: `TO_BYTES(s, enc)`, `FROM_BYTES(b, enc)` (encodings `hex`,
//! `utf8`, `ascii`, `base64`) and `INT_FROM_BYTES` / `BIGINT_FROM_BYTES` / `DOUBLE_FROM_BYTES`
//! (`b [, 'BIG_ENDIAN' | 'LITTLE_ENDIAN']`). One implementation serves the five names.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BinaryArray, Float64Array, Int32Array, Int64Array, StringArray};
use arrow::compute::cast;
use arrow::datatypes::DataType;
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use datafusion::common::{exec_err, Result};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, TypeSignature, Volatility,
};

#[derive(Debug, PartialEq, Eq, Hash, Clone, Copy)]
enum Kind {
    ToBytes,
    FromBytes,
    Int,
    Bigint,
    Double,
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct BytesFn {
    kind: Kind,
    signature: Signature,
}

/// The five functions.
pub fn all() -> Vec<ScalarUDF> {
    let two = || Signature::any(2, Volatility::Immutable);
    let one_or_two = || Signature::one_of(vec![TypeSignature::Any(1), TypeSignature::Any(2)], Volatility::Immutable);
    [
        (Kind::ToBytes, two()),
        (Kind::FromBytes, two()),
        (Kind::Int, one_or_two()),
        (Kind::Bigint, one_or_two()),
        (Kind::Double, one_or_two()),
    ]
    .into_iter()
    .map(|(kind, signature)| ScalarUDF::from(BytesFn { kind, signature }))
    .collect()
}

fn encode(bytes: &[u8], encoding: &str) -> Option<String> {
    match encoding.to_ascii_lowercase().as_str() {
        "hex" => Some(bytes.iter().map(|b| format!("{b:02X}")).collect()),
        "utf8" => String::from_utf8(bytes.to_vec()).ok(),
        "ascii" => bytes.is_ascii().then(|| String::from_utf8_lossy(bytes).into_owned()),
        "base64" => Some(STANDARD.encode(bytes)),
        _ => None,
    }
}

fn decode(text: &str, encoding: &str) -> Option<Vec<u8>> {
    match encoding.to_ascii_lowercase().as_str() {
        "hex" => {
            // An odd number of digits reads as if led by a zero, as ksqlDB's hex decoder does.
            let digits: Vec<u32> = text.chars().map(|c| c.to_digit(16)).collect::<Option<_>>()?;
            let padded: Vec<u32> = if digits.len() % 2 == 1 { [0].into_iter().chain(digits).collect() } else { digits };
            Some(padded.chunks(2).map(|p| (p[0] * 16 + p[1]) as u8).collect())
        }
        "utf8" => Some(text.as_bytes().to_vec()),
        "ascii" => text.is_ascii().then(|| text.as_bytes().to_vec()),
        "base64" => STANDARD.decode(text).ok(),
        _ => None,
    }
}

impl ScalarUDFImpl for BytesFn {
    fn name(&self) -> &str {
        match self.kind {
            Kind::ToBytes => "to_bytes",
            Kind::FromBytes => "from_bytes",
            Kind::Int => "int_from_bytes",
            Kind::Bigint => "bigint_from_bytes",
            Kind::Double => "double_from_bytes",
        }
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(match self.kind {
            Kind::ToBytes => DataType::Binary,
            Kind::FromBytes => DataType::Utf8,
            Kind::Int => DataType::Int32,
            Kind::Bigint => DataType::Int64,
            Kind::Double => DataType::Float64,
        })
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let rows = arrays[0].len();
        let second = match arrays.get(1) {
            Some(a) => cast(a, &DataType::Utf8)?,
            None => Arc::new(StringArray::from(vec!["BIG_ENDIAN"; rows])),
        };
        let second = second.as_string::<i32>();
        let arg = |i: usize| (!second.is_null(i)).then(|| second.value(i));
        let out: ArrayRef = match self.kind {
            Kind::ToBytes => {
                let text = cast(&arrays[0], &DataType::Utf8)?;
                let text = text.as_string::<i32>();
                let values = (0..rows).map(|i| {
                    let (t, e) = ((!text.is_null(i)).then(|| text.value(i)), arg(i));
                    t.zip(e).and_then(|(t, e)| decode(t, e))
                });
                Arc::new(values.collect::<BinaryArray>())
            }
            Kind::FromBytes => {
                let bytes = cast(&arrays[0], &DataType::Binary)?;
                let bytes = bytes.as_binary::<i32>();
                let values = (0..rows).map(|i| {
                    let (b, e) = ((!bytes.is_null(i)).then(|| bytes.value(i)), arg(i));
                    b.zip(e).and_then(|(b, e)| encode(b, e))
                });
                Arc::new(values.collect::<StringArray>())
            }
            Kind::Int | Kind::Bigint | Kind::Double => {
                let bytes = cast(&arrays[0], &DataType::Binary)?;
                let bytes = bytes.as_binary::<i32>();
                let width = if self.kind == Kind::Int { 4 } else { 8 };
                let mut words = Vec::with_capacity(rows);
                for i in 0..rows {
                    if bytes.is_null(i) {
                        words.push(None);
                        continue;
                    }
                    let b = bytes.value(i);
                    if b.len() != width {
                        return exec_err!("Number of bytes must be equal to {width}, but found {}", b.len());
                    }
                    let mut word = [0u8; 8];
                    word[..width].copy_from_slice(b);
                    let little = match arg(i).map(|o| o.to_ascii_uppercase()) {
                        Some(o) if o == "LITTLE_ENDIAN" => true,
                        Some(o) if o == "BIG_ENDIAN" => false,
                        other => return exec_err!("Byte order must be BIG_ENDIAN or LITTLE_ENDIAN, got {other:?}"),
                    };
                    words.push(Some((word, little)));
                }
                match self.kind {
                    Kind::Int => Arc::new(
                        words
                            .iter()
                            .map(|w| {
                                w.map(|(b, little)| {
                                    let b = [b[0], b[1], b[2], b[3]];
                                    if little {
                                        i32::from_le_bytes(b)
                                    } else {
                                        i32::from_be_bytes(b)
                                    }
                                })
                            })
                            .collect::<Int32Array>(),
                    ),
                    Kind::Bigint => Arc::new(
                        words
                            .iter()
                            .map(|w| {
                                w.map(|(b, little)| if little { i64::from_le_bytes(b) } else { i64::from_be_bytes(b) })
                            })
                            .collect::<Int64Array>(),
                    ),
                    _ => Arc::new(
                        words
                            .iter()
                            .map(|w| {
                                w.map(|(b, little)| if little { f64::from_le_bytes(b) } else { f64::from_be_bytes(b) })
                            })
                            .collect::<Float64Array>(),
                    ),
                }
            }
        };
        Ok(ColumnarValue::Array(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodings_round_trip_as_ksqldb_spells_them() {
        assert_eq!(encode(&[0x1a, 0xb2], "hex").as_deref(), Some("1AB2"));
        assert_eq!(decode("1aB2", "HEX"), Some(vec![0x1a, 0xb2]));
        assert_eq!(decode("abc", "hex"), Some(vec![0x0a, 0xbc]));
        assert_eq!(encode(b"!", "base64").as_deref(), Some("IQ=="));
        assert_eq!(decode("IQ==", "base64"), Some(b"!".to_vec()));
        assert_eq!(decode("\u{e9}", "ascii"), None);
        assert_eq!(encode(b"#", "utf8").as_deref(), Some("#"));
        assert_eq!(encode(b"x", "ebcdic"), None);
    }
}
