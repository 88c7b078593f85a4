//! Checkpoint files: a consistent cut of one task's state and input positions.
//!
//! A query's *committing task* (its stateful stage, or each partition task of a stateless
//! query) takes checkpoints. A checkpoint holds the epoch, the input positions everything before
//! which has been processed, task metadata (the watermark tracker) and every operator's state
//! as Arrow IPC. It is one file, `<query dir>/<task>.ckpt`, replaced atomically (temp file,
//! fsync, rename, fsync directory): after a crash either the old or the new checkpoint is
//! there, never a torn one.
//!
//! Layout: `RILLCKP1`, then a u32 length and the JSON [`CheckpointMeta`], then per operator
//! state part a u64 length and one Arrow IPC stream.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use arrow::array::RecordBatch;
use arrow::ipc::reader::StreamReader;
use arrow::ipc::writer::StreamWriter;
use serde::{Deserialize, Serialize};

use crate::{EngineError, Result};

const MAGIC: &[u8; 8] = b"RILLCKP1";

/// What a checkpoint records besides operator state.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CheckpointMeta {
    /// Checkpoint number, increasing by one per checkpoint of this task.
    pub epoch: u64,
    /// Next offset to read, per input (0 = the main source) and partition.
    pub positions: Vec<Vec<u64>>,
    /// The task's own small state (e.g. its watermark tracker), as JSON.
    pub task: serde_json::Value,
    /// Number of state batches of each operator of the chain, in chain order.
    pub parts: Vec<usize>,
}

/// A checkpoint: metadata and each operator's state batches.
#[derive(Clone, Debug, Default)]
pub struct Checkpoint {
    /// Epoch, positions, task state.
    pub meta: CheckpointMeta,
    /// Per operator, its state batches.
    pub state: Vec<Vec<RecordBatch>>,
}

/// Where the checkpoints of one task live.
#[derive(Clone, Debug)]
pub struct CheckpointFile {
    path: PathBuf,
}

fn io(what: String) -> impl FnOnce(std::io::Error) -> EngineError {
    move |e| EngineError::Checkpoint(format!("{what}: {e}"))
}

impl CheckpointFile {
    /// The checkpoint of task `task` under the query directory `dir`.
    pub fn new(dir: &Path, task: &str) -> Self {
        Self { path: dir.join(format!("{task}.ckpt")) }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Durably replaces the checkpoint with `ckpt`.
    pub fn write(&self, ckpt: &Checkpoint) -> Result<()> {
        let dir = self.path.parent().ok_or_else(|| EngineError::Checkpoint("no directory".into()))?;
        fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
        let mut meta = ckpt.meta.clone();
        meta.parts = ckpt.state.iter().map(Vec::len).collect();
        let json = serde_json::to_vec(&meta).map_err(|e| EngineError::Checkpoint(e.to_string()))?;
        let tmp = self.path.with_extension("ckpt.tmp");
        let writing = || io(format!("writing {}", tmp.display()));
        {
            let f = fs::File::create(&tmp).map_err(io(format!("creating {}", tmp.display())))?;
            let mut f = std::io::BufWriter::with_capacity(1 << 20, f);
            f.write_all(MAGIC)
                .and_then(|_| f.write_all(&(json.len() as u32).to_le_bytes()))
                .and_then(|_| f.write_all(&json))
                .map_err(writing())?;
            for part in ckpt.state.iter().flatten() {
                // Sized up front: a state of hundreds of MB is not copied as its buffer grows.
                let mut ipc = Vec::with_capacity(part.get_array_memory_size() + 4096);
                {
                    let mut w = StreamWriter::try_new(&mut ipc, &part.schema())?;
                    w.write(part)?;
                    w.finish()?;
                }
                f.write_all(&(ipc.len() as u64).to_le_bytes()).and_then(|_| f.write_all(&ipc)).map_err(writing())?;
            }
            let f = f.into_inner().map_err(|e| writing()(e.into_error()))?;
            f.sync_all().map_err(io(format!("fsyncing {}", tmp.display())))?;
        }
        fs::rename(&tmp, &self.path).map_err(io(format!("renaming {}", tmp.display())))?;
        fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io(format!("fsyncing directory {}", dir.display())))?;
        Ok(())
    }

    /// The last checkpoint written, if any.
    pub fn read(&self) -> Result<Option<Checkpoint>> {
        let bytes = match fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(format!("reading {}", self.path.display()))(e)),
        };
        let corrupt = |why: &str| EngineError::Checkpoint(format!("{} is damaged: {why}", self.path.display()));
        if bytes.len() < 12 || &bytes[..8] != MAGIC {
            return Err(corrupt("bad header"));
        }
        let json_len = u32::from_le_bytes(bytes[8..12].try_into().map_err(|_| corrupt("bad length"))?) as usize;
        let mut pos = 12 + json_len;
        let meta: CheckpointMeta = serde_json::from_slice(bytes.get(12..pos).ok_or_else(|| corrupt("cut off"))?)
            .map_err(|e| corrupt(&e.to_string()))?;
        let mut state = Vec::with_capacity(meta.parts.len());
        for &n in &meta.parts {
            let mut parts = Vec::with_capacity(n);
            for _ in 0..n {
                let len_bytes = bytes.get(pos..pos + 8).ok_or_else(|| corrupt("cut off"))?;
                let len = u64::from_le_bytes(len_bytes.try_into().map_err(|_| corrupt("bad length"))?) as usize;
                pos += 8;
                let ipc = bytes.get(pos..pos + len).ok_or_else(|| corrupt("cut off"))?;
                pos += len;
                let mut reader = StreamReader::try_new(ipc, None)?;
                let batch = reader.next().ok_or_else(|| corrupt("empty state part"))??;
                parts.push(batch);
            }
            state.push(parts);
        }
        Ok(Some(Checkpoint { meta, state }))
    }

    /// Deletes the checkpoint (the query was dropped).
    pub fn remove(&self) -> Result<()> {
        match fs::remove_file(&self.path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(format!("removing {}", self.path.display()))(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray};
    use std::sync::Arc;

    #[test]
    fn roundtrip_and_replace() {
        let dir = tempfile::tempdir().expect("tmp");
        let file = CheckpointFile::new(dir.path(), "stage");
        assert!(file.read().expect("none").is_none());
        let a = crate::state::batch(vec![Arc::new(Int64Array::from(vec![1, 2]))], 2).expect("batch");
        let b = crate::state::batch(vec![Arc::new(StringArray::from(vec![Some("x"), None]))], 2).expect("batch");
        let ckpt = Checkpoint {
            meta: CheckpointMeta {
                epoch: 3,
                positions: vec![vec![10, 20]],
                task: serde_json::json!({"w": 5}),
                parts: vec![],
            },
            state: vec![vec![], vec![a.clone(), b.clone()], vec![a.clone()]],
        };
        file.write(&ckpt).expect("write");
        let back = file.read().expect("read").expect("some");
        assert_eq!(back.meta.epoch, 3);
        assert_eq!(back.meta.positions, vec![vec![10, 20]]);
        assert_eq!(back.meta.parts, vec![0, 2, 1]);
        assert_eq!(back.state, vec![vec![], vec![a.clone(), b], vec![a]]);
        let damaged = fs::read(file.path()).expect("bytes");
        fs::write(file.path(), &damaged[..damaged.len() - 3]).expect("cut");
        assert!(file.read().is_err(), "a cut-off checkpoint is an error, not state");
        file.remove().expect("remove");
        assert!(file.read().expect("none").is_none());
    }
}
