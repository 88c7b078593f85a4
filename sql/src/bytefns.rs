//! ksqlDB's BYTES functions: `TO_BYTES(s, enc)`, `FROM_BYTES(b, enc)` (encodings `hex`,
//! `utf8`, `ascii`, `base64`), `INT_FROM_BYTES` / `BIGINT_FROM_BYTES` / `DOUBLE_FROM_BYTES`
//! (`b [, 'BIG_ENDIAN' | 'LITTLE_ENDIAN']`) and `ENCODE(s, from, to)` (a string re-encoded, as
//! Java's charsets do it: lower-case hex, `?` for a character ASCII lacks, U+FFFD for a byte it
//! lacks). One implementation serves the six names.

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
    Encode,
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
        (Kind::Encode, Signature::any(3, Volatility::Immutable)),
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

/// ENCODE's input: the bytes `text` stands for in `encoding` (ASCII writes `?` for others).
/// Hex may be written `0x..` (an odd number of digits reads as led by a zero), `X'..'` or bare
/// (both with an even number of digits).
fn charset_bytes(text: &str, encoding: &str) -> Option<Vec<u8>> {
    match encoding.to_ascii_lowercase().as_str() {
        "ascii" => Some(text.chars().map(|c| if c.is_ascii() { c as u8 } else { b'?' }).collect()),
        "hex" => {
            let quoted = |p: &str| text.strip_prefix(p).and_then(|t| t.strip_suffix('\''));
            let (digits, pad) = match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
                Some(d) => (d, true),
                None => (quoted("X'").or_else(|| quoted("x'")).unwrap_or(text), false),
            };
            if !pad && digits.len() % 2 == 1 {
                return None;
            }
            decode(digits, "hex")
        }
        other => decode(text, other),
    }
}

/// ENCODE's output: `bytes` written in `encoding` (hex in lower case; ASCII and UTF-8 replace
/// what they cannot read with U+FFFD).
fn charset_text(bytes: &[u8], encoding: &str) -> Option<String> {
    match encoding.to_ascii_lowercase().as_str() {
        "hex" => Some(bytes.iter().map(|b| format!("{b:02x}")).collect()),
        "ascii" => Some(bytes.iter().map(|b| if b.is_ascii() { *b as char } else { '\u{FFFD}' }).collect()),
        "utf8" => Some(String::from_utf8_lossy(bytes).into_owned()),
        "base64" => Some(STANDARD.encode(bytes)),
        _ => None,
    }
}

impl ScalarUDFImpl for BytesFn {
    fn name(&self) -> &str {
        match self.kind {
            Kind::Encode => "encode",
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
            Kind::FromBytes | Kind::Encode => DataType::Utf8,
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
            Kind::Encode => {
                let text = cast(&arrays[0], &DataType::Utf8)?;
                let to = cast(&arrays[2], &DataType::Utf8)?;
                let (text, to) = (text.as_string::<i32>(), to.as_string::<i32>());
                let values = (0..rows).map(|i| {
                    let (t, from, to) =
                        ((!text.is_null(i)).then(|| text.value(i)), arg(i), (!to.is_null(i)).then(|| to.value(i)));
                    let bytes = t.zip(from).and_then(|(t, from)| charset_bytes(t, from))?;
                    charset_text(&bytes, to?)
                });
                Arc::new(values.collect::<StringArray>())
            }
            Kind::ToBytes => {
                let text = cast(&arrays[0], &DataType::Utf8)?;
                let values = text.as_string::<i32>().iter().enumerate();
                Arc::new(values.map(|(i, t)| t.zip(arg(i)).and_then(|(t, e)| decode(t, e))).collect::<BinaryArray>())
            }
            Kind::FromBytes => {
                let bytes = cast(&arrays[0], &DataType::Binary)?;
                let values = bytes.as_binary::<i32>().iter().enumerate();
                Arc::new(values.map(|(i, b)| b.zip(arg(i)).and_then(|(b, e)| encode(b, e))).collect::<StringArray>())
            }
            Kind::Int | Kind::Bigint | Kind::Double => {
                let bytes = cast(&arrays[0], &DataType::Binary)?;
                let bytes = bytes.as_binary::<i32>();
                let width = if self.kind == Kind::Int { 4 } else { 8 };
                // Each value as a big-endian word (little-endian ones reversed).
                let mut words: Vec<Option<[u8; 8]>> = Vec::with_capacity(rows);
                for (i, b) in bytes.iter().enumerate() {
                    let Some(b) = b else {
                        words.push(None);
                        continue;
                    };
                    if b.len() != width {
                        return exec_err!("Number of bytes must be equal to {width}, but found {}", b.len());
                    }
                    let mut word = [0u8; 8];
                    word[..width].copy_from_slice(b);
                    match arg(i).map(|o| o.to_ascii_uppercase()) {
                        Some(o) if o == "LITTLE_ENDIAN" => word[..width].reverse(),
                        Some(o) if o == "BIG_ENDIAN" => {}
                        other => return exec_err!("Byte order must be BIG_ENDIAN or LITTLE_ENDIAN, got {other:?}"),
                    }
                    words.push(Some(word));
                }
                let words = words.into_iter();
                match self.kind {
                    Kind::Int => Arc::new(
                        words.map(|w| w.map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]))).collect::<Int32Array>(),
                    ),
                    Kind::Bigint => Arc::new(words.map(|w| w.map(i64::from_be_bytes)).collect::<Int64Array>()),
                    _ => Arc::new(words.map(|w| w.map(f64::from_be_bytes)).collect::<Float64Array>()),
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
        let reencode = |t: &str, from: &str, to: &str| charset_bytes(t, from).and_then(|b| charset_text(&b, to));
        assert_eq!(reencode("4578616d706C6521", "hex", "ascii").as_deref(), Some("Example!"));
        assert_eq!(reencode("Ελλάδα", "ascii", "hex").as_deref(), Some("3f3f3f3f3f3f"));
        assert_eq!(reencode("c39c62", "hex", "ascii").as_deref(), Some("\u{FFFD}\u{FFFD}b"));
        assert_eq!(reencode("x", "null", "utf8"), None);
        assert_eq!(reencode("0x578616d706C6521", "hex", "base64").as_deref(), Some("BXhhbXBsZSE="));
        assert_eq!(reencode("x'578616d706C6521'", "hex", "base64"), None);
        assert_eq!(reencode("X''", "hex", "utf8").as_deref(), Some(""));
    }
}
