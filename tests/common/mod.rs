//! Starting the `rill` binary and talking to it over HTTP.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

/// A running `rill server` on a loopback port chosen by the OS.
pub struct Server {
    child: Child,
    /// Base URL, e.g. `http://127.0.0.1:34567`.
    pub url: String,
    /// The data directory.
    pub dir: PathBuf,
    client: reqwest::Client,
}

impl Server {
    /// Starts `rill server --data-dir dir --listen 127.0.0.1:0` and waits for its address line.
    pub fn start(dir: &Path) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_rill"))
            .args(["server", "--data-dir"])
            .arg(dir)
            .args(["--listen", "127.0.0.1:0"])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start rill");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).expect("read address line");
        let url = line
            .trim()
            .strip_prefix("rill listening on ")
            .unwrap_or_else(|| panic!("unexpected first line: {line}"))
            .to_string();
        let client = reqwest::Client::builder().timeout(Duration::from_secs(60)).build().expect("client");
        Server { child, url, dir: dir.to_path_buf(), client }
    }

    /// Stops the server gracefully (SIGTERM) and waits for it.
    pub fn stop(mut self) {
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let status = self.child.wait().expect("wait");
        assert!(status.success(), "rill exited with {status}");
    }

    /// Kills the server with SIGKILL.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// POST /ksql; returns (status, body).
    pub async fn ksql(&self, sql: &str) -> (u16, Value) {
        self.ksql_with(sql, json!({})).await
    }

    /// POST /ksql with streamsProperties.
    pub async fn ksql_with(&self, sql: &str, props: Value) -> (u16, Value) {
        let r = self
            .client
            .post(format!("{}/ksql", self.url))
            .json(&json!({"ksql": sql, "streamsProperties": props}))
            .send()
            .await
            .expect("POST /ksql");
        let status = r.status().as_u16();
        let body = r.json().await.expect("JSON body");
        (status, body)
    }

    /// POST /ksql that must succeed.
    pub async fn ok(&self, sql: &str) -> Value {
        let (status, body) = self.ksql_with(sql, json!({"auto.offset.reset": "earliest"})).await;
        assert_eq!(status, 200, "{sql} failed: {body:#}");
        body
    }

    /// POST /query (push query with LIMIT or PRINT with LIMIT); returns the whole body.
    pub async fn query(&self, sql: &str) -> (u16, String) {
        let r = self
            .client
            .post(format!("{}/query", self.url))
            .json(&json!({"ksql": sql, "streamsProperties": {"auto.offset.reset": "earliest"}}))
            .send()
            .await
            .expect("POST /query");
        (r.status().as_u16(), r.text().await.expect("body"))
    }

    /// POST /query-stream (delimited); returns the whole body.
    pub async fn query_stream(&self, sql: &str) -> (u16, String) {
        let r = self
            .client
            .post(format!("{}/query-stream", self.url))
            .json(&json!({"sql": sql, "properties": {"auto.offset.reset": "earliest"}}))
            .send()
            .await
            .expect("POST /query-stream");
        (r.status().as_u16(), r.text().await.expect("body"))
    }

    /// Rows (`columns` arrays) of a /query push-query response.
    pub fn rows(body: &str) -> Vec<Value> {
        body.lines()
            .map(|l| l.trim_start_matches('[').trim_end_matches(']').trim_end_matches(','))
            .filter(|l| !l.is_empty())
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter_map(|v| v.get("row").map(|r| r["columns"].clone()))
            .collect()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Replaces values that differ between runs (transient query ids) so responses can be snapshotted.
pub fn scrub(mut v: Value) -> Value {
    fn walk(v: &mut Value) {
        match v {
            Value::Object(m) => {
                for (k, x) in m.iter_mut() {
                    if k == "queryId" {
                        if let Value::String(s) = x {
                            if s.starts_with("transient_") {
                                *x = Value::String("transient_<id>".into());
                            }
                        }
                    } else {
                        walk(x);
                    }
                }
            }
            Value::Array(a) => a.iter_mut().for_each(walk),
            _ => {}
        }
    }
    walk(&mut v);
    v
}
