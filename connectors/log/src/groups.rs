//! Committed offsets of consumer groups (`groups/<encoded group>.json`).
//!
//! A commit rewrites the group's file durably (temp → fsync → rename → fsync directory) before it
//! returns, so a persistent query that committed offset `n` resumes at `n` after any crash.
//! Commits of one group are serialized; different groups commit in parallel.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::error::{IoContext, LogError, Result};
use crate::fsutil;

/// Longest accepted group name, in bytes.
pub const MAX_GROUP_NAME_BYTES: usize = 200;

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct GroupFile {
    group: String,
    /// topic → partition → next offset to read.
    offsets: BTreeMap<String, BTreeMap<u32, u64>>,
}

/// All groups' committed offsets.
#[derive(Debug)]
pub(crate) struct Groups {
    dir: PathBuf,
    groups: Mutex<HashMap<String, Arc<Mutex<GroupFile>>>>,
}

/// File name for a group: `[A-Za-z0-9_-]` kept, every other byte as `%XX`.
fn file_name(group: &str) -> String {
    let mut s = String::with_capacity(group.len() + 5);
    for b in group.bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
            s.push(b as char);
        } else {
            s.push_str(&format!("%{b:02X}"));
        }
    }
    s.push_str(".json");
    s
}

fn validate(group: &str) -> Result<()> {
    let bad = |reason: &str| Err(LogError::InvalidGroup { group: group.to_string(), reason: reason.to_string() });
    if group.is_empty() {
        return bad("a consumer group name must not be empty");
    }
    if group.len() > MAX_GROUP_NAME_BYTES {
        return bad(&format!("a consumer group name must be at most {MAX_GROUP_NAME_BYTES} bytes"));
    }
    if group.chars().any(char::is_control) {
        return bad("a consumer group name must not contain control characters");
    }
    Ok(())
}

impl Groups {
    /// Loads every group file under `dir` (created if missing).
    pub fn open(dir: &Path) -> Result<Groups> {
        fsutil::create_dir_all(dir)?;
        let mut groups = HashMap::new();
        for (name, path) in fsutil::list_dir(dir)? {
            if name.ends_with(fsutil::TMP_SUFFIX) {
                fsutil::remove_file_if_exists(&path)?;
                continue;
            }
            if !name.ends_with(".json") {
                continue;
            }
            let bytes = std::fs::read(&path).ctx(|| format!("reading {}", path.display()))?;
            let file: GroupFile = serde_json::from_slice(&bytes).map_err(|e| LogError::Corrupt {
                file: path.display().to_string(),
                position: 0,
                reason: format!("committed offsets file is not valid: {e}"),
            })?;
            groups.insert(file.group.clone(), Arc::new(Mutex::new(file)));
        }
        Ok(Groups { dir: dir.to_path_buf(), groups: Mutex::new(groups) })
    }

    /// Durably stores `offsets` (topic, partition, next offset) for `group`.
    pub fn commit(&self, group: &str, offsets: &[(String, u32, u64)]) -> Result<()> {
        validate(group)?;
        let entry = self
            .groups
            .lock()
            .entry(group.to_string())
            .or_insert_with(|| Arc::new(Mutex::new(GroupFile { group: group.to_string(), ..GroupFile::default() })))
            .clone();
        let mut current = entry.lock();
        let mut next = current.clone();
        for (topic, partition, offset) in offsets {
            next.offsets.entry(topic.clone()).or_default().insert(*partition, *offset);
        }
        self.write(&next)?;
        *current = next;
        Ok(())
    }

    /// The committed offset, if any.
    pub fn committed(&self, group: &str, topic: &str, partition: u32) -> Option<u64> {
        let entry = self.groups.lock().get(group).cloned()?;
        let file = entry.lock();
        file.offsets.get(topic).and_then(|p| p.get(&partition)).copied()
    }

    /// Forgets a deleted topic's offsets in every group (so a new topic of the same name starts
    /// clean).
    pub fn remove_topic(&self, topic: &str) -> Result<()> {
        let all: Vec<_> = self.groups.lock().values().cloned().collect();
        for entry in all {
            let mut current = entry.lock();
            if !current.offsets.contains_key(topic) {
                continue;
            }
            let mut next = current.clone();
            next.offsets.remove(topic);
            self.write(&next)?;
            *current = next;
        }
        Ok(())
    }

    fn write(&self, file: &GroupFile) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(file)
            .map_err(|e| LogError::Internal(format!("serializing committed offsets: {e}")))?;
        fsutil::write_atomic(&self.dir.join(file_name(&file.group)), &bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits_survive_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let g = Groups::open(dir.path()).expect("open");
        g.commit("q1", &[("orders".into(), 0, 10), ("orders".into(), 1, 3)]).expect("commit");
        g.commit("q1", &[("orders".into(), 0, 12)]).expect("commit");
        g.commit("weird/../name ü", &[("t".into(), 0, 1)]).expect("commit");
        drop(g);
        let g = Groups::open(dir.path()).expect("reopen");
        assert_eq!(g.committed("q1", "orders", 0), Some(12));
        assert_eq!(g.committed("q1", "orders", 1), Some(3));
        assert_eq!(g.committed("q1", "orders", 2), None);
        assert_eq!(g.committed("nobody", "orders", 0), None);
        assert_eq!(g.committed("weird/../name ü", "t", 0), Some(1));
        g.remove_topic("orders").expect("remove");
        assert_eq!(g.committed("q1", "orders", 0), None);
    }

    #[test]
    fn group_file_names_are_safe() {
        assert_eq!(file_name("q-1_x"), "q-1_x.json");
        assert_eq!(file_name("../a"), "%2E%2E%2Fa.json");
        assert!(validate("").is_err());
        assert!(validate(&"g".repeat(201)).is_err());
        assert!(validate("a\nb").is_err());
    }
}
