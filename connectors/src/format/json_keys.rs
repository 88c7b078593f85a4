//! ksqlDB matches JSON field names case-insensitively; arrow-json matches them exactly.
//!
//! [`normalize`] copies one JSON value, rewriting the names of object fields that are STRUCT
//! fields in the schema to the schema's spelling. It only tracks structure (strings, brackets,
//! separators) to know where keys are; all parsing and type checking stays with arrow-json,
//! which also reports malformed input (on malformed input this copy is left unchanged). An object
//! or array where the schema has a STRING becomes that value's JSON text, as ksqlDB reads it.

use arrow::datatypes::DataType;

/// The parts of a column type that decide where field names need rewriting.
#[derive(Debug)]
pub(crate) enum Shape {
    /// An object whose keys are field names.
    Struct(Vec<(String, Shape)>),
    /// An object whose keys are data (never rewritten).
    Map(Box<Shape>),
    /// An array.
    List(Box<Shape>),
    /// A string: an object or array there becomes its JSON text.
    Text,
    /// Anything else: copied verbatim.
    Leaf,
}

impl Shape {
    pub(crate) fn of(dt: &DataType) -> Shape {
        match dt {
            DataType::Struct(fields) => {
                Shape::Struct(fields.iter().map(|f| (f.name().clone(), Shape::of(f.data_type()))).collect())
            }
            DataType::Map(entries, _) => match entries.data_type() {
                DataType::Struct(kv) if kv.len() == 2 => Shape::Map(Box::new(Shape::of(kv[1].data_type()))),
                _ => Shape::Leaf,
            },
            DataType::List(f) | DataType::LargeList(f) => Shape::List(Box::new(Shape::of(f.data_type()))),
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => Shape::Text,
            _ => Shape::Leaf,
        }
    }

    /// Whether any struct at any depth has fields (otherwise nothing can need rewriting).
    pub(crate) fn has_structs(&self) -> bool {
        match self {
            Shape::Struct(_) => true,
            Shape::Map(s) | Shape::List(s) => s.has_structs(),
            Shape::Text | Shape::Leaf => false,
        }
    }

    /// Whether a string sits anywhere (an object or array there would need its text).
    pub(crate) fn has_text(&self) -> bool {
        match self {
            Shape::Struct(fields) => fields.iter().any(|(_, s)| s.has_text()),
            Shape::Map(s) | Shape::List(s) => s.has_text(),
            Shape::Text => true,
            Shape::Leaf => false,
        }
    }
}

/// Appends `input` to `out` with struct field names respelled per `shape`.
/// Returns false (and leaves `out` as it was) when `input` is not well-formed JSON.
pub(crate) fn normalize(input: &[u8], shape: &Shape, out: &mut Vec<u8>) -> bool {
    let start = out.len();
    let mut s = Scanner { input, pos: 0, out };
    let ok = s.value(shape).is_some() && {
        s.ws();
        s.pos == input.len()
    };
    if !ok {
        out.truncate(start);
    }
    ok
}

/// The top-level keys of a JSON object as written (raw, still escaped), or None when `input` is
/// not one well-formed object.
pub(crate) fn object_keys(input: &[u8]) -> Option<Vec<&[u8]>> {
    let keys = std::cell::RefCell::new(Vec::new());
    let mut scratch = Vec::new();
    let mut s = Scanner { input, pos: 0, out: &mut scratch };
    s.ws();
    if s.peek() != Some(b'{') {
        return None;
    }
    s.object(|key| {
        keys.borrow_mut().push((key.as_ptr() as usize - input.as_ptr() as usize, key.len()));
        (None, &Shape::Leaf)
    })?;
    s.ws();
    if s.pos != input.len() {
        return None;
    }
    Some(keys.into_inner().into_iter().map(|(at, len)| &input[at..at + len]).collect())
}

struct Scanner<'a, 'o> {
    input: &'a [u8],
    pos: usize,
    out: &'o mut Vec<u8>,
}

impl Scanner<'_, '_> {
    fn peek(&self) -> Option<u8> {
        self.input.get(self.pos).copied()
    }

    fn ws(&mut self) {
        while let Some(c) = self.peek() {
            if c.is_ascii_whitespace() {
                self.pos += 1;
            } else {
                break;
            }
        }
    }

    fn expect(&mut self, c: u8) -> Option<()> {
        self.ws();
        if self.peek() == Some(c) {
            self.out.push(c);
            self.pos += 1;
            Some(())
        } else {
            None
        }
    }

    /// The raw bytes of a string (without quotes), leaving `pos` after the closing quote.
    fn string_raw(&mut self) -> Option<(usize, usize)> {
        if self.peek() != Some(b'"') {
            return None;
        }
        let begin = self.pos + 1;
        let mut i = begin;
        // Jump from quote or backslash to the next one (memchr: many bytes at a time).
        while let Some(j) = memchr::memchr2(b'"', b'\\', self.input.get(i..)?) {
            i += j;
            if self.input[i] == b'\\' {
                i += 2;
                continue;
            }
            self.pos = i + 1;
            return Some((begin, i));
        }
        None
    }

    fn value(&mut self, shape: &Shape) -> Option<()> {
        self.ws();
        match (self.peek()?, shape) {
            (b'{', Shape::Struct(fields)) => self.object(|key| {
                fields
                    .iter()
                    .find(|(name, _)| name.as_bytes().eq_ignore_ascii_case(key))
                    .map(|(name, s)| (Some(name.as_str()), s))
                    .unwrap_or((None, &Shape::Leaf))
            }),
            (b'{', Shape::Map(values)) => self.object(|_| (None, values)),
            (b'[', Shape::List(element)) => {
                self.out.push(b'[');
                self.pos += 1;
                self.ws();
                if self.peek() == Some(b']') {
                    self.out.push(b']');
                    self.pos += 1;
                    return Some(());
                }
                loop {
                    self.value(element)?;
                    self.ws();
                    match self.peek()? {
                        b',' => {
                            self.out.push(b',');
                            self.pos += 1;
                        }
                        b']' => {
                            self.out.push(b']');
                            self.pos += 1;
                            return Some(());
                        }
                        _ => return None,
                    }
                }
            }
            (b'{' | b'[', Shape::Text) => {
                // The value's compact JSON text, as a JSON string (serde_json reads and writes).
                let (begin, written) = (self.pos, self.out.len());
                self.skip_value()?;
                let value: serde_json::Value = serde_json::from_slice(&self.input[begin..self.pos]).ok()?;
                self.out.truncate(written);
                serde_json::to_writer(&mut *self.out, &value.to_string()).ok()
            }
            _ => self.skip_value(),
        }
    }

    fn object<'s>(&mut self, field: impl Fn(&[u8]) -> (Option<&'s str>, &'s Shape)) -> Option<()> {
        self.out.push(b'{');
        self.pos += 1;
        self.ws();
        if self.peek() == Some(b'}') {
            self.out.push(b'}');
            self.pos += 1;
            return Some(());
        }
        loop {
            self.ws();
            let (b, e) = self.string_raw()?;
            let (name, shape) = field(&self.input[b..e]);
            self.out.push(b'"');
            match name {
                Some(n) => self.out.extend_from_slice(n.as_bytes()),
                None => self.out.extend_from_slice(&self.input[b..e]),
            }
            self.out.push(b'"');
            self.expect(b':')?;
            self.value(shape)?;
            self.ws();
            match self.peek()? {
                b',' => {
                    self.out.push(b',');
                    self.pos += 1;
                }
                b'}' => {
                    self.out.push(b'}');
                    self.pos += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    /// Copies one value verbatim.
    fn skip_value(&mut self) -> Option<()> {
        let begin = self.pos;
        match self.peek()? {
            b'"' => {
                self.string_raw()?;
            }
            b'{' | b'[' => {
                let mut depth = 0usize;
                loop {
                    match self.peek()? {
                        b'"' => {
                            self.string_raw()?;
                            continue;
                        }
                        b'{' | b'[' => depth += 1,
                        b'}' | b']' => {
                            depth -= 1;
                            if depth == 0 {
                                self.pos += 1;
                                break;
                            }
                        }
                        _ => {}
                    }
                    self.pos += 1;
                }
            }
            _ => {
                while let Some(c) = self.peek() {
                    if matches!(c, b',' | b'}' | b']') || c.is_ascii_whitespace() {
                        break;
                    }
                    self.pos += 1;
                }
            }
        }
        if self.pos == begin {
            return None;
        }
        self.out.extend_from_slice(&self.input[begin..self.pos]);
        Some(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::datatypes::{Field, Fields};

    use super::*;

    fn run(input: &str, dt: &DataType) -> String {
        let mut out = Vec::new();
        assert!(normalize(input.as_bytes(), &Shape::of(dt), &mut out), "{input}");
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn respells_struct_fields_but_not_map_keys() {
        let inner = DataType::Struct(Fields::from(vec![Field::new("X", DataType::Int32, true)]));
        let map = DataType::Map(
            Arc::new(Field::new(
                "entries",
                DataType::Struct(Fields::from(vec![
                    Field::new("key", DataType::Utf8, false),
                    Field::new("value", DataType::Utf8, true),
                ])),
                false,
            )),
            false,
        );
        let dt = DataType::Struct(Fields::from(vec![
            Field::new("ID", DataType::Int64, true),
            Field::new("S", inner, true),
            Field::new("M", map, true),
        ]));
        assert_eq!(
            run(r#"{"id": 1, "s": {"x": 2}, "m": {"k": "v"}, "other": [1,{"a":"}"}]}"#, &dt),
            r#"{"ID":1,"S":{"X":2},"M":{"k":"v"},"other":[1,{"a":"}"}]}"#
        );
    }

    /// ksqlDB reads an object or array given for a STRING as its compact JSON text.
    #[test]
    fn objects_for_strings_become_their_text() {
        let dt = DataType::Struct(Fields::from(vec![Field::new("T", DataType::Utf8, true)]));
        assert_eq!(run(r#"{"t": {"b": 1,  "a": [1, "x"]}}"#, &dt), r#"{"T":"{\"b\":1,\"a\":[1,\"x\"]}"}"#);
        assert_eq!(run(r#"{"T": "plain"}"#, &dt), r#"{"T":"plain"}"#);
    }

    #[test]
    fn scalars_and_lists() {
        let dt = DataType::Struct(Fields::from(vec![Field::new(
            "L",
            DataType::List(Arc::new(Field::new(
                "item",
                DataType::Struct(Fields::from(vec![Field::new("A", DataType::Utf8, true)])),
                true,
            ))),
            true,
        )]));
        assert_eq!(run(r#" {"l" : [ {"a":"q\"x"} , null ] } "#, &dt), r#"{"L":[{"A":"q\"x"},null]}"#);
        assert_eq!(run("12.5e3", &DataType::Float64), "12.5e3");
        assert_eq!(run("true", &DataType::Boolean), "true");
    }

    #[test]
    fn object_keys_as_written() {
        let keys = object_keys(br#" {"Id": 1, "n\"x": {"inner": 2}, "L": [{"q": 1}]} "#).unwrap();
        assert_eq!(keys, vec![&b"Id"[..], &br#"n\"x"#[..], &b"L"[..]]);
        assert!(object_keys(b"[1]").is_none());
        assert!(object_keys(br#"{"a": 1"#).is_none());
    }

    #[test]
    fn malformed_input_is_left_alone() {
        let dt = DataType::Struct(Fields::from(vec![Field::new("A", DataType::Int32, true)]));
        let mut out = b"prefix".to_vec();
        assert!(!normalize(b"{\"a\": 1", &Shape::of(&dt), &mut out));
        assert_eq!(out, b"prefix");
    }
}
