//! Topic configuration, names and the metadata file (`topics/<name>/topic.json`).

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{IoContext, LogError, Result};
use crate::fsutil;

/// Name of the metadata file in a topic directory.
pub(crate) const TOPIC_META_FILE: &str = "topic.json";

/// What happens to old data (Kafka's `cleanup.policy`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CleanupPolicy {
    /// Delete whole old segments by time (`retention.ms`) and size (`retention.bytes`).
    #[default]
    Delete,
    /// Keep the newest value per key; drop tombstones after `delete.retention.ms`.
    Compact,
}

/// When an append is acknowledged.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// After `fdatasync`: acknowledged records survive a crash and a power loss. Concurrent
    /// appends share one fsync (group commit).
    #[default]
    Fsync,
    /// After the write reaches the page cache: survives a process crash (kill -9), not a power
    /// loss or kernel crash.
    None,
}

/// Per-topic configuration. Defaults follow Kafka's broker defaults.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct TopicConfig {
    /// Number of partitions (1 or more).
    pub partitions: u32,
    /// Delete closed segments whose newest record is older than this (`retention.ms`).
    /// `None` keeps data forever. Only for [`CleanupPolicy::Delete`].
    pub retention_ms: Option<i64>,
    /// Delete the oldest closed segments while the partition is larger than this
    /// (`retention.bytes`). `None` = no size limit. Only for [`CleanupPolicy::Delete`].
    pub retention_bytes: Option<u64>,
    /// `cleanup.policy`.
    pub cleanup_policy: CleanupPolicy,
    /// How long tombstones survive compaction (`delete.retention.ms`), so slow readers see them.
    pub delete_retention_ms: i64,
    /// Roll to a new segment when the active one would exceed this (`segment.bytes`).
    pub segment_bytes: u64,
    /// Roll the active segment when its first append is older than this (`segment.ms`),
    /// checked on append.
    pub segment_ms: Option<i64>,
    /// When appends are acknowledged.
    pub durability: Durability,
}

const DAY_MS: i64 = 24 * 60 * 60 * 1000;

/// Smallest accepted `segment_bytes`.
pub const MIN_SEGMENT_BYTES: u64 = 1024;
/// Largest accepted `segment_bytes` (Kafka's limit: positions are 32-bit).
pub const MAX_SEGMENT_BYTES: u64 = i32::MAX as u64;
/// Largest accepted partition count.
pub const MAX_PARTITIONS: u32 = 10_000;

impl Default for TopicConfig {
    fn default() -> Self {
        TopicConfig {
            partitions: 1,
            retention_ms: Some(7 * DAY_MS),
            retention_bytes: None,
            cleanup_policy: CleanupPolicy::Delete,
            delete_retention_ms: DAY_MS,
            segment_bytes: 1 << 30,
            segment_ms: Some(7 * DAY_MS),
            durability: Durability::Fsync,
        }
    }
}

impl TopicConfig {
    /// Checks every value; `topic` names the topic in the error.
    pub fn validate(&self, topic: &str) -> Result<()> {
        let bad = |reason: String| Err(LogError::InvalidConfig { topic: topic.to_string(), reason });
        if self.partitions == 0 || self.partitions > MAX_PARTITIONS {
            return bad(format!("partitions must be between 1 and {MAX_PARTITIONS}, got {}", self.partitions));
        }
        if !(MIN_SEGMENT_BYTES..=MAX_SEGMENT_BYTES).contains(&self.segment_bytes) {
            return bad(format!(
                "segment.bytes must be between {MIN_SEGMENT_BYTES} and {MAX_SEGMENT_BYTES}, got {}",
                self.segment_bytes
            ));
        }
        if matches!(self.retention_ms, Some(ms) if ms < 0) {
            return bad("retention.ms must not be negative (use no value to keep data forever)".into());
        }
        if matches!(self.segment_ms, Some(ms) if ms <= 0) {
            return bad("segment.ms must be positive".into());
        }
        if self.delete_retention_ms < 0 {
            return bad("delete.retention.ms must not be negative".into());
        }
        Ok(())
    }

    /// Sets a Kafka-style property (`retention.ms`, `retention.bytes`, `cleanup.policy`,
    /// `delete.retention.ms`, `segment.bytes`, `segment.ms`, `partitions`, `durability`).
    /// `-1` for `retention.ms` / `retention.bytes` means "no limit", as in Kafka.
    pub fn set_property(&mut self, name: &str, value: &str) -> Result<()> {
        let bad = |reason: String| LogError::InvalidConfig { topic: String::new(), reason };
        let int = |v: &str| v.trim().parse::<i64>().map_err(|_| bad(format!("{name} must be an integer, got {v:?}")));
        match name {
            "partitions" | "num.partitions" => {
                self.partitions = u32::try_from(int(value)?).map_err(|_| bad("partitions out of range".into()))?
            }
            "retention.ms" => self.retention_ms = Some(int(value)?).filter(|v| *v >= 0),
            "retention.bytes" => self.retention_bytes = u64::try_from(int(value)?).ok(),
            "delete.retention.ms" => self.delete_retention_ms = int(value)?,
            "segment.bytes" => {
                self.segment_bytes = u64::try_from(int(value)?).map_err(|_| bad("segment.bytes out of range".into()))?
            }
            "segment.ms" => self.segment_ms = Some(int(value)?),
            "cleanup.policy" => {
                self.cleanup_policy = match value.trim().to_ascii_lowercase().as_str() {
                    "delete" => CleanupPolicy::Delete,
                    "compact" => CleanupPolicy::Compact,
                    other => return Err(bad(format!("cleanup.policy must be 'delete' or 'compact', got {other:?}"))),
                }
            }
            "durability" => {
                self.durability = match value.trim().to_ascii_lowercase().as_str() {
                    "fsync" => Durability::Fsync,
                    "none" => Durability::None,
                    other => return Err(bad(format!("durability must be 'fsync' or 'none', got {other:?}"))),
                }
            }
            other => return Err(bad(format!("unknown topic property {other:?}"))),
        }
        Ok(())
    }
}

/// Checks a topic name against Kafka's rules: 1 to 249 characters of `[a-zA-Z0-9._-]`, not `.`
/// or `..`.
pub fn validate_topic_name(name: &str) -> Result<()> {
    let bad = |reason: &str| Err(LogError::InvalidTopicName { name: name.to_string(), reason: reason.to_string() });
    if name.is_empty() {
        return bad("a topic name must not be empty");
    }
    if name == "." || name == ".." {
        return bad("'.' and '..' are not allowed as topic names");
    }
    if name.len() > 249 {
        return bad("a topic name must be at most 249 characters long");
    }
    if let Some(c) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))) {
        return Err(LogError::InvalidTopicName {
            name: name.to_string(),
            reason: format!("character {c:?} is not allowed; use only ASCII letters, digits, '.', '_' and '-'"),
        });
    }
    Ok(())
}

/// Contents of `topic.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct TopicMeta {
    pub name: String,
    pub config: TopicConfig,
}

impl TopicMeta {
    /// Durably writes the metadata file into `dir`.
    pub fn write(&self, dir: &Path) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(self)
            .map_err(|e| LogError::Internal(format!("serializing topic metadata: {e}")))?;
        fsutil::write_atomic(&dir.join(TOPIC_META_FILE), &bytes)
    }

    /// Reads the metadata file of `dir`; `Ok(None)` if there is none (an unfinished creation).
    pub fn read(dir: &Path) -> Result<Option<TopicMeta>> {
        let path = dir.join(TOPIC_META_FILE);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).ctx(|| format!("reading {}", path.display())),
        };
        let meta: TopicMeta = serde_json::from_slice(&bytes).map_err(|e| LogError::Corrupt {
            file: path.display().to_string(),
            position: 0,
            reason: format!("topic metadata is not valid: {e}"),
        })?;
        Ok(Some(meta))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kafka_topic_name_rules() {
        for ok in ["a", "orders", "my.topic_v2-x", &"x".repeat(249), "..."] {
            validate_topic_name(ok).unwrap_or_else(|e| panic!("{ok} should be valid: {e}"));
        }
        for bad in ["", ".", "..", "a/b", "sp ace", "ünï", &"x".repeat(250), "a\0b"] {
            let err = validate_topic_name(bad).expect_err(bad);
            assert!(matches!(err, LogError::InvalidTopicName { .. }));
        }
        let err = validate_topic_name("a/b").expect_err("slash");
        assert!(err.to_string().contains("character '/' is not allowed"), "{err}");
    }

    #[test]
    fn config_defaults_validate_and_roundtrip() {
        let cfg = TopicConfig::default();
        cfg.validate("t").expect("defaults are valid");
        let json = serde_json::to_string(&cfg).expect("ser");
        let back: TopicConfig = serde_json::from_str(&json).expect("de");
        assert_eq!(back, cfg);
        // Missing fields take defaults.
        let partial: TopicConfig = serde_json::from_str(r#"{"partitions":3,"cleanup_policy":"compact"}"#).expect("de");
        assert_eq!(partial.partitions, 3);
        assert_eq!(partial.cleanup_policy, CleanupPolicy::Compact);
        assert_eq!(partial.segment_bytes, cfg.segment_bytes);
    }

    #[test]
    fn invalid_configs_are_explained() {
        let cfg = TopicConfig { partitions: 0, ..TopicConfig::default() };
        assert!(cfg.validate("t").expect_err("zero").to_string().contains("partitions must be between"));
        let cfg = TopicConfig { segment_bytes: 10, ..TopicConfig::default() };
        assert!(cfg.validate("t").expect_err("tiny").to_string().contains("segment.bytes"));
    }

    #[test]
    fn kafka_properties_are_understood() {
        let mut cfg = TopicConfig::default();
        cfg.set_property("cleanup.policy", "compact").expect("ok");
        cfg.set_property("retention.ms", "-1").expect("ok");
        cfg.set_property("retention.bytes", "1000").expect("ok");
        cfg.set_property("partitions", "4").expect("ok");
        assert_eq!(cfg.cleanup_policy, CleanupPolicy::Compact);
        assert_eq!(cfg.retention_ms, None);
        assert_eq!(cfg.retention_bytes, Some(1000));
        assert_eq!(cfg.partitions, 4);
        assert!(cfg.set_property("cleanup.policy", "shred").is_err());
        assert!(cfg.set_property("retention.ms", "soon").is_err());
        assert!(cfg.set_property("colour", "blue").is_err());
    }
}
