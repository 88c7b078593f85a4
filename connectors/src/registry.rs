//! The schema registry: Avro schemas by id and by subject, as Confluent's Schema Registry keeps
//! them. Records in a registry format (AVRO) start with a magic byte 0 and the 4-byte id of the
//! schema they were written with; readers look that schema up here.
//!
//! Subjects are `<topic>-value` and `<topic>-key` (the topic-name strategy). An id names one
//! schema text wherever it is registered, and registering a schema a subject already has returns
//! its id, as Confluent's registry does. [`FileRegistry`] keeps everything in one JSON file next to
//! the embedded log (rewritten atomically on every change: registrations are rare); a store on
//! external Kafka will implement [`SchemaRegistry`] over a Confluent registry's REST API.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};

use parking_lot::Mutex;

use crate::{ConnectorError, Result};

/// What the engine needs from a schema registry.
pub trait SchemaRegistry: Send + Sync + 'static {
    /// Registers `schema` (Avro schema JSON) under `subject` unless that subject already has it;
    /// returns its id.
    fn register(&self, subject: &str, schema: &str) -> Result<u32>;
    /// The schema with this id.
    fn schema(&self, id: u32) -> Result<Option<String>>;
    /// The latest version of a subject: its id and schema.
    fn latest(&self, subject: &str) -> Result<Option<(u32, String)>>;
    /// Every subject, sorted.
    fn subjects(&self) -> Vec<String>;
}

/// The subject of a topic's values (`key == false`) or keys.
pub fn subject(topic: &str, key: bool) -> String {
    format!("{topic}-{}", if key { "key" } else { "value" })
}

/// A registry in one JSON file (or in memory only, without a path).
pub struct FileRegistry {
    path: Option<PathBuf>,
    state: Mutex<State>,
}

#[derive(Default, serde::Serialize, serde::Deserialize)]
struct State {
    /// Schema texts; the id of `schemas[i]` is `i + 1`.
    schemas: Vec<String>,
    /// Each subject's versions, oldest first, as ids.
    subjects: BTreeMap<String, Vec<u32>>,
    #[serde(skip)]
    ids: HashMap<String, u32>,
}

impl FileRegistry {
    /// A registry that is not kept anywhere.
    pub fn in_memory() -> Self {
        Self { path: None, state: Mutex::new(State::default()) }
    }

    /// Opens (or starts) the registry kept in `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let mut state = match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice::<State>(&bytes)
                .map_err(|e| ConnectorError::Registry(format!("{}: {e}", path.display())))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => State::default(),
            Err(e) => return Err(ConnectorError::Registry(format!("reading {}: {e}", path.display()))),
        };
        state.ids = state.schemas.iter().enumerate().map(|(i, s)| (s.clone(), i as u32 + 1)).collect();
        Ok(Self { path: Some(path.to_path_buf()), state: Mutex::new(state) })
    }

    fn save(&self, state: &State) -> Result<()> {
        let Some(path) = &self.path else { return Ok(()) };
        let io = |e: std::io::Error| ConnectorError::Registry(format!("writing {}: {e}", path.display()));
        let tmp = path.with_extension("tmp");
        let mut f = std::fs::File::create(&tmp).map_err(io)?;
        f.write_all(&serde_json::to_vec(state).map_err(|e| ConnectorError::Registry(e.to_string()))?).map_err(io)?;
        f.sync_all().map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)?;
        if let Some(dir) = path.parent() {
            std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
        }
        Ok(())
    }
}

/// The schema's canonical text: JSON schemas (Avro, JSON Schema) as compact JSON, so that
/// formatting does not make a new id; other schemas (`.proto` text) as they are.
fn canonical(schema: &str) -> Result<String> {
    let text = schema.trim();
    if text.is_empty() {
        return Err(ConnectorError::Unsupported("Empty schema".into()));
    }
    Ok(match serde_json::from_str::<serde_json::Value>(text) {
        Ok(v) => v.to_string(),
        Err(_) if text.starts_with(['{', '[', '"']) => {
            return Err(ConnectorError::Unsupported(format!("Invalid schema (not JSON): {schema}")))
        }
        Err(_) => text.to_string(),
    })
}

impl SchemaRegistry for FileRegistry {
    fn register(&self, subject: &str, schema: &str) -> Result<u32> {
        let text = canonical(schema)?;
        let mut state = self.state.lock();
        let known = state.ids.get(&text).copied();
        if let Some(id) = known {
            if state.subjects.get(subject).is_some_and(|v| v.contains(&id)) {
                return Ok(id);
            }
        }
        let id = match known {
            Some(id) => id,
            None => {
                state.schemas.push(text.clone());
                let id = state.schemas.len() as u32;
                state.ids.insert(text, id);
                id
            }
        };
        state.subjects.entry(subject.to_string()).or_default().push(id);
        self.save(&state)?;
        Ok(id)
    }

    fn schema(&self, id: u32) -> Result<Option<String>> {
        let state = self.state.lock();
        Ok(id.checked_sub(1).and_then(|i| state.schemas.get(i as usize)).cloned())
    }

    fn latest(&self, subject: &str) -> Result<Option<(u32, String)>> {
        let state = self.state.lock();
        let id = state.subjects.get(subject).and_then(|v| v.last().copied());
        Ok(id.map(|id| (id, state.schemas[id as usize - 1].clone())))
    }

    fn subjects(&self) -> Vec<String> {
        self.state.lock().subjects.keys().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_per_schema_and_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("schemas.json");
        let r = FileRegistry::open(&path).unwrap();
        let a = r.register("t-value", r#"{"type": "int"}"#).unwrap();
        assert_eq!(r.register("t-value", r#"{"type":"int"}"#).unwrap(), a, "formatting is not a new schema");
        assert_eq!(r.register("u-value", r#"{"type":"int"}"#).unwrap(), a, "one id wherever registered");
        let b = r.register("t-value", r#""string""#).unwrap();
        assert_ne!(a, b);
        assert_eq!(r.latest("t-value").unwrap(), Some((b, r#""string""#.to_string())));
        drop(r);
        let r = FileRegistry::open(&path).unwrap();
        assert_eq!(r.schema(a).unwrap().as_deref(), Some(r#"{"type":"int"}"#));
        assert_eq!(r.schema(0).unwrap(), None);
        assert_eq!(r.latest("t-value").unwrap().map(|(id, _)| id), Some(b));
        assert_eq!(r.subjects(), vec!["t-value".to_string(), "u-value".to_string()]);
        assert_eq!(r.latest("nope").unwrap(), None);
        assert!(r.register("t-value", "{not json").is_err());
        let proto = r.register("p-value", "syntax = \"proto3\"; message M {}").unwrap();
        assert_eq!(r.schema(proto).unwrap().as_deref(), Some("syntax = \"proto3\"; message M {}"));
    }
}
