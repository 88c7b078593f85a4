//! End to end: the `rill` binary driven over its ksqlDB-compatible REST API.

mod common;

use common::{scrub, Server};
use serde_json::json;

const PAGEVIEWS: &str = "CREATE STREAM pageviews (user_id STRING KEY, page STRING, duration INT) \
     WITH (kafka_topic='pageviews', value_format='JSON', partitions=2);";
const LONG_VIEWS: &str = "CREATE STREAM long_views AS SELECT user_id, UCASE(page) AS page, duration * 1000 AS ms \
     FROM pageviews WHERE duration > 30;";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn walkthrough() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());

    let created = server.ok(PAGEVIEWS).await;
    insta::assert_json_snapshot!("create_stream", created);
    let inserted = server
        .ok("INSERT INTO pageviews (user_id, page, duration) VALUES ('alice', '/home', 12);\
             INSERT INTO pageviews VALUES ('bob', '/buy', 70);")
        .await;
    assert_eq!(inserted, json!([]), "INSERT VALUES returns no entity, as in ksqlDB");
    let csas = server.ok(LONG_VIEWS).await;
    insta::assert_json_snapshot!("create_stream_as_select", csas);
    server.ok("INSERT INTO pageviews VALUES ('carol', '/cart', 45);").await;

    // Push query over the derived stream: both long views, in per-key order.
    let (status, body) = server.query("SELECT * FROM long_views EMIT CHANGES LIMIT 2;").await;
    assert_eq!(status, 200);
    let mut rows = Server::rows(&body);
    rows.sort_by_key(|r| r[0].as_str().unwrap_or_default().to_string());
    assert_eq!(rows, vec![json!(["bob", "/BUY", 70000]), json!(["carol", "/CART", 45000])]);
    assert!(body.starts_with("[{\"header\":{\"queryId\":\"transient_LONG_VIEWS_"), "{body}");
    assert!(body.contains("\"schema\":\"`USER_ID` STRING, `PAGE` STRING, `MS` INTEGER\"}},\n"), "{body}");
    assert!(body.ends_with("{\"finalMessage\":\"Limit Reached\"}]"), "{body}");

    // The HTTP/2-era endpoint, delimited framing.
    let (status, body) = server
        .query_stream("SELECT user_id, duration FROM pageviews WHERE user_id = 'alice' EMIT CHANGES LIMIT 1;")
        .await;
    assert_eq!(status, 200);
    let lines: Vec<&str> = body.lines().collect();
    assert_eq!(lines.len(), 2, "{body}");
    let meta: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
    assert_eq!(meta["columnNames"], json!(["USER_ID", "DURATION"]));
    assert_eq!(meta["columnTypes"], json!(["STRING", "INTEGER"]));
    assert_eq!(lines[1], r#"["alice",12]"#);

    let (_, listing) = server.ksql("SHOW STREAMS; SHOW QUERIES; DESCRIBE long_views;").await;
    insta::assert_json_snapshot!("show_and_describe", scrub(listing));
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_sql_says_where() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    server.ok(PAGEVIEWS).await;
    let (status, body) = server.ksql("SHOW STREAMS;\nSELEC * FROM pageviews;").await;
    assert_eq!(status, 400);
    insta::assert_json_snapshot!("syntax_error", body);
    let (status, body) = server.ksql("CREATE STREAM s AS SELECT nope FROM pageviews;").await;
    assert_eq!(status, 400);
    assert_eq!(body["@type"], "statement_error");
    assert_eq!(body["error_code"], 40001);
    assert!(body["message"].as_str().unwrap().contains("NOPE"), "{body}");
    let (status, body) = server.ksql("CREATE STREAM s AS SELECT * FROM missing;").await;
    assert_eq!(status, 400);
    assert_eq!(body["message"], "MISSING does not exist.");
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_record_goes_to_dead_letters_and_query_keeps_running() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    // Two views of one topic: RAW writes arbitrary text, EVENTS reads JSON.
    server.ok("CREATE STREAM raw (line STRING) WITH (kafka_topic='events', value_format='KAFKA', partitions=1);").await;
    server.ok("CREATE STREAM events (id INT, name STRING) WITH (kafka_topic='events', value_format='JSON');").await;
    server.ok("CREATE STREAM named AS SELECT id, UCASE(name) AS name FROM events;").await;
    server.ok("INSERT INTO raw VALUES ('{\"id\": 1, \"name\": \"a\"}');").await;
    server.ok("INSERT INTO raw VALUES ('this is not json');").await;
    server.ok("INSERT INTO raw VALUES ('{\"ID\": 3, \"NAME\": \"c\"}');").await;

    let (_, body) = server.query("SELECT * FROM named EMIT CHANGES LIMIT 2;").await;
    assert_eq!(Server::rows(&body), vec![json!([1, "A"]), json!([3, "C"])]);

    let (_, body) = server.query("PRINT 'rill_dead_letters' FROM BEGINNING LIMIT 1;").await;
    let line = body.lines().next().unwrap_or_default();
    assert!(line.contains(r#""topic":"events","partition":0,"offset":1"#), "{line}");
    assert!(line.contains(r#""value":"this is not json""#), "{line}");
    assert!(line.contains("CSAS_NAMED_2"), "{line}");

    let (_, d) = server.ksql("DESCRIBE EXTENDED events; SHOW QUERIES;").await;
    let stats = d[0]["sourceDescription"]["errorStats"].as_str().unwrap().to_string();
    assert!(stats.starts_with("dead-letters: 1 "), "{stats}");
    assert_eq!(d[1]["queries"][0]["state"], "RUNNING");
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_catalog_and_resumes_queries_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    server.ok(PAGEVIEWS).await;
    server.ok(LONG_VIEWS).await;
    server.ok("INSERT INTO pageviews VALUES ('bob', '/buy', 70);").await;
    let (_, body) = server.query("SELECT * FROM long_views EMIT CHANGES LIMIT 1;").await;
    assert_eq!(Server::rows(&body), vec![json!(["bob", "/BUY", 70000])]);
    server.stop();

    let server = Server::start(dir.path());
    let (_, q) = server.ksql("SHOW STREAMS; SHOW QUERIES;").await;
    let names: Vec<&str> = q[0]["streams"].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(names, vec!["LONG_VIEWS", "PAGEVIEWS"]);
    assert_eq!(q[1]["queries"][0]["id"], "CSAS_LONG_VIEWS_1");
    server.ok("INSERT INTO pageviews VALUES ('dave', '/pay', 99);").await;
    server.ok("INSERT INTO pageviews VALUES ('zed', '/end', 100);").await;
    // The sink holds each result exactly once: bob (before the restart), then dave and zed. A
    // repeated bob would take one of the three places and push zed out.
    let (_, body) = server.query("PRINT 'LONG_VIEWS' FROM BEGINNING LIMIT 3;").await;
    let mut values: Vec<String> = body
        .lines()
        .map(|l| {
            l.split(", value: ").nth(1).unwrap_or_default().split(", partition").next().unwrap_or_default().to_string()
        })
        .collect();
    values.sort();
    assert_eq!(
        values,
        vec![r#"{"PAGE":"/BUY","MS":70000}"#, r#"{"PAGE":"/END","MS":100000}"#, r#"{"PAGE":"/PAY","MS":99000}"#]
    );
    let (_, d) = server.ksql("DESCRIBE EXTENDED long_views;").await;
    assert_eq!(d[0]["sourceDescription"]["writeQueries"][0]["state"], "RUNNING");
    server.stop();
}

/// An unmodified third-party ksqlDB client (PyPI `ksql-python-ng`) drives the walkthrough over
/// HTTP/1.1 (/ksql, /query) and h2c (/query-stream, /inserts-stream). `scripts/test.sh` installs
/// it and sets RILL_PYTHON to the interpreter that has it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn third_party_python_client_walkthrough() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let python = std::env::var("RILL_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/clients/ksql_python_walkthrough.py");
    let url = server.url.clone();
    let out = tokio::task::spawn_blocking(move || std::process::Command::new(python).arg(script).arg(url).output())
        .await
        .unwrap()
        .expect("run python (scripts/test.sh installs ksql-python-ng and sets RILL_PYTHON)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stdout.trim() == "OK", "client walkthrough failed:\n{stdout}\n{stderr}");
    server.stop();
}

/// A windowed aggregation: results per window, and a record later than its window's grace goes
/// to the late-data topic with the window it missed (ksqlDB would drop it silently).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn windowed_aggregation_routes_late_records() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    server.ok("CREATE STREAM clicks (user STRING KEY, n INT) WITH (kafka_topic='clicks', value_format='JSON', partitions=1);").await;
    let created = server
        .ok("CREATE TABLE per_min AS SELECT user, COUNT(*) AS c, SUM(n) AS total FROM clicks \
             WINDOW TUMBLING (SIZE 1 MINUTE, GRACE PERIOD 0 SECONDS) GROUP BY user EMIT CHANGES;")
        .await;
    let id = created[0]["commandStatus"]["queryId"].as_str().unwrap().to_string();
    for (ts, n) in [(1_000, 1), (2_000, 2), (61_000, 3)] {
        server.ok(&format!("INSERT INTO clicks (ROWTIME, user, n) VALUES ({ts}, 'a', {n});")).await;
    }
    let (_, body) = server.query("PRINT 'PER_MIN' FROM BEGINNING LIMIT 3;").await;
    let values: Vec<&str> = body.lines().map(|l| l.split(", value: ").nth(1).unwrap_or_default()).collect();
    assert_eq!(
        values,
        vec![
            r#"{"C":1,"TOTAL":1}, partition: 0"#,
            r#"{"C":2,"TOTAL":3}, partition: 0"#,
            r#"{"C":1,"TOTAL":3}, partition: 0"#
        ],
        "{body}"
    );
    // Stream time is now 61000: the window [0, 60000) has closed (grace 0).
    server.ok("INSERT INTO clicks (ROWTIME, user, n) VALUES (1500, 'a', 4);").await;
    let (_, body) = server.query("PRINT 'rill_late_records' FROM BEGINNING LIMIT 1;").await;
    for part in [
        r#""timestamp":1500"#,
        r#""window_start":0"#,
        r#""window_end":60000"#,
        r#""watermark":61000"#,
        r#""topic":"clicks""#,
    ] {
        assert!(body.contains(part), "{part} missing in {body}");
    }
    let (_, d) = server.ksql(&format!("DESCRIBE EXTENDED per_min; EXPLAIN {id};")).await;
    let source = &d[0]["sourceDescription"];
    assert_eq!(source["windowType"], "TUMBLING");
    assert!(source["statistics"].as_str().unwrap().contains("late-records: 1 "), "{source}");
    let plan = d[1]["queryDescription"]["executionPlan"].as_str().unwrap();
    insta::assert_snapshot!("explain_windowed_aggregate", plan);
    server.stop();
}

/// Pull queries: the current value per key of a materialized table, filtered by DataFusion.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_query_reads_current_table_rows() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    server.ok(PAGEVIEWS).await;
    server.ok("CREATE TABLE per_user AS SELECT user_id, COUNT(*) AS n, SUM(duration) AS total FROM pageviews GROUP BY user_id;").await;
    for (i, (user, d)) in [("a", 5), ("b", 50), ("a", 7)].into_iter().enumerate() {
        server.ok(&format!("INSERT INTO pageviews VALUES ('{user}', '/p', {d});")).await;
        // Wait until the aggregate has written this update.
        server.query(&format!("PRINT 'PER_USER' FROM BEGINNING LIMIT {};", i + 1)).await;
    }
    let (status, body) = server.query("SELECT * FROM per_user WHERE user_id = 'a';").await;
    assert_eq!(status, 200);
    let lines: Vec<&str> = body.lines().collect();
    assert_eq!(lines.len(), 2, "{body}");
    assert!(lines[0].contains(r#""schema":"`USER_ID` STRING KEY, `N` BIGINT, `TOTAL` INTEGER""#), "{body}");
    assert_eq!(lines[1], r#"{"row":{"columns":["a",2,12]}}]"#);
    let (_, body) = server.query_stream("SELECT user_id, total FROM per_user WHERE total > 20;").await;
    assert_eq!(body.lines().nth(1), Some(r#"["b",50]"#), "{body}");
    server.stop();
}

/// Stream-table join: each payment is enriched with the customer row as it stands when the
/// payment is processed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_table_join_enriches_with_current_table_row() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    server.ok("CREATE TABLE customers (id STRING PRIMARY KEY, name STRING) WITH (kafka_topic='customers', value_format='JSON', partitions=1);").await;
    server.ok("CREATE STREAM payments (id STRING KEY, customer STRING, amount DOUBLE) WITH (kafka_topic='payments', value_format='JSON', partitions=1);").await;
    server.ok("INSERT INTO customers VALUES ('c1', 'Ada');").await;
    server
        .ok("CREATE STREAM enriched AS SELECT p.customer, p.id, c.name, p.amount FROM payments p LEFT JOIN customers c ON p.customer = c.id;")
        .await;
    server.ok("INSERT INTO payments VALUES ('p1', 'c1', 10.5);").await;
    server.ok("INSERT INTO payments VALUES ('p2', 'c9', 3.0);").await;
    let (_, body) = server.query("SELECT * FROM enriched EMIT CHANGES LIMIT 2;").await;
    assert_eq!(Server::rows(&body), vec![json!(["c1", "p1", "Ada", 10.5]), json!(["c9", "p2", null, 3.0])], "{body}");
    assert!(body.contains("\"schema\":\"`CUSTOMER` STRING, `P_ID` STRING, `NAME` STRING, `AMOUNT` DOUBLE\""), "{body}");
    server.stop();
}

/// Joins of three sources, and GROUP BY over them: each order is enriched with its customer and
/// the customer's region (a join on a column of the first join's result), and totals are kept
/// per region manager.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_way_join_feeds_group_by() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    server.ok("CREATE TABLE customers (id STRING PRIMARY KEY, name STRING, region STRING) WITH (kafka_topic='customers', value_format='JSON', partitions=1);").await;
    server.ok("CREATE TABLE regions (id STRING PRIMARY KEY, manager STRING) WITH (kafka_topic='regions', value_format='JSON', partitions=1);").await;
    server.ok("CREATE STREAM orders (id STRING KEY, customer STRING, amount DOUBLE) WITH (kafka_topic='orders', value_format='JSON', partitions=2);").await;
    for s in [
        "INSERT INTO customers VALUES ('c1', 'Ada', 'EU');",
        "INSERT INTO customers VALUES ('c2', 'Bob', 'US');",
        "INSERT INTO regions VALUES ('EU', 'Eve');",
        "INSERT INTO regions VALUES ('US', 'Sam');",
    ] {
        server.ok(s).await;
    }
    let from = "FROM orders o JOIN customers c ON o.customer = c.id JOIN regions r ON c.region = r.id";
    server
        .ok(&format!("CREATE STREAM enriched AS SELECT o.id, c.name, r.id AS region, r.manager, o.amount {from};"))
        .await;
    server
        .ok(&format!(
            "CREATE TABLE per_manager AS SELECT r.manager, SUM(o.amount) AS total, COUNT(*) AS n {from} GROUP BY r.manager;"
        ))
        .await;
    for s in [
        "INSERT INTO orders VALUES ('o1', 'c1', 10.0);",
        "INSERT INTO orders VALUES ('o2', 'c2', 5.0);",
        "INSERT INTO orders VALUES ('o3', 'c1', 2.5);",
        "INSERT INTO orders VALUES ('o4', 'c9', 1.0);",
    ] {
        server.ok(s).await;
    }
    let (_, body) = server.query("SELECT * FROM enriched EMIT CHANGES LIMIT 3;").await;
    let mut rows = Server::rows(&body);
    rows.sort_by_key(|r| r[1].as_str().unwrap_or_default().to_string());
    assert_eq!(
        rows,
        vec![
            json!(["EU", "o1", "Ada", "Eve", 10.0]),
            json!(["US", "o2", "Bob", "Sam", 5.0]),
            json!(["EU", "o3", "Ada", "Eve", 2.5])
        ],
        "{body}"
    );
    // The last join's key (the region) is the output's key, first.
    assert!(
        body.contains(
            "\"schema\":\"`REGION` STRING, `O_ID` STRING, `NAME` STRING, `MANAGER` STRING, `AMOUNT` DOUBLE\""
        ),
        "{body}"
    );
    let (_, body) = server.query("SELECT * FROM per_manager EMIT CHANGES LIMIT 3;").await;
    let mut last = std::collections::BTreeMap::new();
    for r in Server::rows(&body) {
        last.insert(r[0].as_str().unwrap_or_default().to_string(), r.clone());
    }
    assert_eq!(last["Eve"], json!(["Eve", 12.5, 2]), "{body}");
    assert_eq!(last["Sam"], json!(["Sam", 5.0, 1]), "{body}");
    server.stop();
}

/// Table-table join on primary keys: an upsert on either side re-computes the key's row, and a
/// delete on the inner side deletes the joined row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn table_table_join_follows_both_sides() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    server.ok("CREATE TABLE users (id STRING PRIMARY KEY, name STRING) WITH (kafka_topic='users', value_format='JSON', partitions=1);").await;
    server.ok("CREATE TABLE scores (id STRING PRIMARY KEY, score INT) WITH (kafka_topic='scores', value_format='JSON', partitions=1);").await;
    server.ok("CREATE TABLE board AS SELECT u.id, u.name, s.score FROM users u JOIN scores s ON u.id = s.id;").await;
    let steps = [
        "INSERT INTO users VALUES ('u1', 'Ada');",
        "INSERT INTO scores VALUES ('u1', 10);",
        "INSERT INTO scores VALUES ('u1', 12);",
        "INSERT INTO users VALUES ('u1', 'Ada L');",
    ];
    for (i, s) in steps.iter().enumerate() {
        server.ok(s).await;
        if i >= 1 {
            // Each of these produces one output record: wait for it before the next change.
            server.query(&format!("PRINT 'BOARD' FROM BEGINNING LIMIT {i};")).await;
        }
    }
    let (_, body) = server.query("PRINT 'BOARD' FROM BEGINNING LIMIT 3;").await;
    let values: Vec<&str> = body.lines().map(|l| l.split(", value: ").nth(1).unwrap_or_default()).collect();
    assert_eq!(
        values,
        vec![
            r#"{"NAME":"Ada","SCORE":10}, partition: 0"#,
            r#"{"NAME":"Ada","SCORE":12}, partition: 0"#,
            r#"{"NAME":"Ada L","SCORE":12}, partition: 0"#
        ],
        "{body}"
    );
    server.stop();
}

/// CREATE OR REPLACE keeps the query's id and state when the change is compatible (here a new
/// column computed from the same aggregate), refuses with the reason when it is not, and the
/// replaced query is what runs after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_or_replace_keeps_state_when_compatible() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    server.ok(PAGEVIEWS).await;
    server.ok("CREATE TABLE per_user AS SELECT user_id, COUNT(*) AS n FROM pageviews GROUP BY user_id;").await;
    let values = |body: &str| -> Vec<String> {
        body.lines()
            .map(|l| l.split(", value: ").nth(1).unwrap_or_default().split(", partition").next().unwrap_or_default())
            .map(str::to_string)
            .collect()
    };
    for i in 1..=2 {
        server.ok("INSERT INTO pageviews VALUES ('a', '/p', 1);").await;
        server.query(&format!("PRINT 'PER_USER' FROM BEGINNING LIMIT {i};")).await;
    }
    let body = server
        .ok("CREATE OR REPLACE TABLE per_user AS SELECT user_id, COUNT(*) AS n, COUNT(*) * 10 AS n10 FROM pageviews GROUP BY user_id;")
        .await;
    assert_eq!(body[0]["commandStatus"]["message"], "Created query with ID CTAS_PER_USER_1", "{body:#}");
    server.ok("INSERT INTO pageviews VALUES ('a', '/p', 1);").await;
    let (_, body) = server.query("PRINT 'PER_USER' FROM BEGINNING LIMIT 3;").await;
    assert_eq!(values(&body), vec![r#"{"N":1}"#, r#"{"N":2}"#, r#"{"N":3,"N10":30}"#], "{body}");

    let (status, body) = server
        .ksql(
            "CREATE OR REPLACE TABLE per_user AS SELECT user_id, COUNT(page) AS n, COUNT(page) * 10 AS n10 \
             FROM pageviews GROUP BY user_id;",
        )
        .await;
    assert_eq!(status, 400);
    let message = body["message"].as_str().unwrap_or_default();
    assert!(message.starts_with("Cannot upgrade table PER_USER: "), "{message}");
    assert!(message.contains("state would not mean the same"), "{message}");
    let (_, q) = server.ksql("SHOW QUERIES;").await;
    assert_eq!(q[0]["queries"].as_array().map(Vec::len), Some(1), "{q:#}");
    server.stop();

    let server = Server::start(dir.path());
    server.ok("INSERT INTO pageviews VALUES ('a', '/p', 1);").await;
    let (_, body) = server.query("PRINT 'PER_USER' FROM BEGINNING LIMIT 4;").await;
    assert_eq!(values(&body)[3], r#"{"N":4,"N10":40}"#, "{body}");
    server.stop();
}

/// The repartition topics in the log under `dir` (its server stopped).
fn repartition_topics(dir: &std::path::Path) -> Vec<String> {
    let log = rill_log::Log::open(dir).unwrap();
    log.topic_names().into_iter().filter(|t| t.ends_with("-repartition")).collect()
}

/// Repartition topics: a GROUP BY of a value column reads its rows through one (a GROUP BY of
/// the key needs none), resumes from it after a restart, and goes with its query.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_by_a_value_column_goes_through_a_repartition_topic() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    server.ok(PAGEVIEWS).await;
    server.ok("CREATE TABLE per_user AS SELECT user_id, COUNT(*) AS n FROM pageviews GROUP BY user_id;").await;
    server
        .ok("CREATE TABLE per_page AS SELECT page, COUNT(*) AS n, SUM(duration) AS total FROM pageviews GROUP BY page;")
        .await;
    for (user, page, d) in [("a", "/home", 5), ("b", "/home", 50), ("c", "/buy", 7), ("a", "/buy", 1)] {
        server.ok(&format!("INSERT INTO pageviews VALUES ('{user}', '{page}', {d});")).await;
    }
    server.query("PRINT 'PER_PAGE' FROM BEGINNING LIMIT 4;").await;
    let (_, body) = server.query("SELECT * FROM per_page WHERE page = '/home';").await;
    assert_eq!(Server::rows(&body), vec![json!(["/home", 2, 55])], "{body}");
    server.stop();
    let topics = repartition_topics(dir.path());
    assert_eq!(topics.len(), 1, "only GROUP BY page repartitions: {topics:?}");
    assert!(topics[0].starts_with("_rill-query_CTAS_PER_PAGE_"), "{topics:?}");

    let server = Server::start(dir.path());
    server.ok("INSERT INTO pageviews VALUES ('d', '/home', 10);").await;
    server.query("PRINT 'PER_PAGE' FROM BEGINNING LIMIT 5;").await;
    let (_, body) = server.query("SELECT * FROM per_page WHERE page = '/home';").await;
    assert_eq!(Server::rows(&body), vec![json!(["/home", 3, 65])], "each row counted once across the restart");
    let (_, queries) = server.ksql("SHOW QUERIES;").await;
    let id = queries[0]["queries"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|q| q["id"].as_str())
        .find(|id| id.contains("PER_PAGE"))
        .unwrap()
        .to_string();
    let (_, explained) = server.ksql(&format!("EXPLAIN {id};")).await;
    let plan = explained[0]["queryDescription"]["executionPlan"].as_str().unwrap_or_default().to_string();
    assert!(
        plan.contains(&format!(
            "REPARTITION Aggregate-GroupBy by key through topic '_rill-query_{id}-Aggregate-GroupBy-repartition'"
        )),
        "{plan}"
    );
    server.ok(&format!("TERMINATE {id};")).await;
    server.stop();
    assert_eq!(repartition_topics(dir.path()), Vec::<String>::new(), "the topic goes with its query");
}

/// A source of one partition is read by one task: a GROUP BY of a value column routes its rows
/// to the stage's shards in process, without a repartition topic, and counts each row once
/// across a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_partition_source_groups_in_process() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    server
        .ok("CREATE STREAM clicks (user_id STRING, page STRING) WITH (kafka_topic='clicks', value_format='JSON', partitions=1);")
        .await;
    server.ok("CREATE TABLE per_page AS SELECT page, COUNT(*) AS n FROM clicks GROUP BY page;").await;
    for (user, page) in [("a", "/home"), ("b", "/home"), ("c", "/buy")] {
        server.ok(&format!("INSERT INTO clicks VALUES ('{user}', '{page}');")).await;
    }
    server.query("PRINT 'PER_PAGE' FROM BEGINNING LIMIT 3;").await;
    let (_, queries) = server.ksql("SHOW QUERIES;").await;
    let id = queries[0]["queries"][0]["id"].as_str().unwrap().to_string();
    let (_, explained) = server.ksql(&format!("EXPLAIN {id};")).await;
    let plan = explained[0]["queryDescription"]["executionPlan"].as_str().unwrap_or_default().to_string();
    assert!(
        plan.contains("REPARTITION Aggregate-GroupBy by key in process (single-partition inputs: no topic)"),
        "{plan}"
    );
    server.stop();
    assert_eq!(repartition_topics(dir.path()), Vec::<String>::new());

    let server = Server::start(dir.path());
    server.ok("INSERT INTO clicks VALUES ('d', '/home');").await;
    server.query("PRINT 'PER_PAGE' FROM BEGINNING LIMIT 4;").await;
    let (_, body) = server.query("SELECT * FROM per_page WHERE page = '/home';").await;
    assert_eq!(Server::rows(&body), vec![json!(["/home", 3])], "each row counted once across the restart");
    server.stop();
}

/// ALTER STREAM ADD COLUMN widens a stream's schema for the queries that follow; records
/// written before read the new column as null; the change survives a restart; a stream made by
/// a query and a read-only source stream cannot be altered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alter_stream_adds_columns_that_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    server.ok(PAGEVIEWS).await;
    server.ok("INSERT INTO pageviews VALUES ('alice', '/home', 12);").await;
    let altered = server.ok("ALTER STREAM pageviews ADD COLUMN referrer STRING, ADD COLUMN bytes BIGINT;").await;
    assert_eq!(altered[0]["@type"], "currentStatus", "{altered:#}");
    server
        .ok("INSERT INTO pageviews (user_id, page, duration, referrer, bytes) VALUES ('bob', '/buy', 70, 'ad', 512);")
        .await;
    let (_, body) = server.query("SELECT user_id, referrer, bytes FROM pageviews EMIT CHANGES LIMIT 2;").await;
    let mut rows = Server::rows(&body);
    rows.sort_by_key(|r| r[0].as_str().unwrap_or_default().to_string());
    assert_eq!(rows, vec![json!(["alice", null, null]), json!(["bob", "ad", 512])]);

    let (status, e) = server.ksql("ALTER STREAM pageviews ADD COLUMN page STRING;").await;
    assert_eq!(status, 400);
    assert!(e["message"].as_str().unwrap().contains("A column with the same name already exists"), "{e:#}");
    server.ok(LONG_VIEWS).await;
    let (status, e) = server.ksql("ALTER STREAM long_views ADD COLUMN x INT;").await;
    assert_eq!(status, 400);
    assert_eq!(e["message"], "ALTER command is not supported for CREATE ... AS statements.");
    server.ok("CREATE SOURCE STREAM clicks (id STRING KEY, x INT) WITH (kafka_topic='clicks', value_format='JSON', partitions=1);").await;
    let (_, e) = server.ksql("ALTER STREAM clicks ADD COLUMN y INT;").await;
    assert_eq!(e["message"], "Cannot alter stream 'CLICKS': ALTER operations are not supported on source streams.");
    server.stop();

    let server = Server::start(dir.path());
    let (_, d) = server.ksql("DESCRIBE pageviews;").await;
    let fields: Vec<&str> =
        d[0]["sourceDescription"]["fields"].as_array().unwrap().iter().map(|f| f["name"].as_str().unwrap()).collect();
    assert_eq!(fields, vec!["USER_ID", "PAGE", "DURATION", "REFERRER", "BYTES"]);
    server.stop();
}

/// `CREATE TYPE` names a type for later statements (the same request's too), in column
/// definitions and casts; `SHOW TYPES` lists them; they survive a restart; `DROP TYPE` removes one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_types_name_types_for_later_statements() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let created = server
        .ok("CREATE TYPE address AS STRUCT<number INT, city STRING>; \
             CREATE STREAM people (id STRING KEY, home ADDRESS) WITH (kafka_topic='people', value_format='JSON', partitions=1);")
        .await;
    assert_eq!(
        created[0]["commandStatus"]["message"],
        "Registered custom type with name 'ADDRESS' and SQL type STRUCT<`NUMBER` INTEGER, `CITY` STRING>",
        "{created:#}"
    );
    let (status, e) = server.ksql("CREATE TYPE address AS STRING;").await;
    assert_eq!(status, 400, "{e:#}");
    assert!(e["message"].as_str().unwrap().contains("already registered"), "{e:#}");
    let (status, e) =
        server.ksql("CREATE STREAM s (id STRING KEY, x ADRESS) WITH (kafka_topic='s', value_format='JSON');").await;
    assert_eq!(status, 400, "{e:#}");
    assert!(e["message"].as_str().unwrap().contains("Unknown type: ADRESS"), "{e:#}");
    server.ok("INSERT INTO people (id, home) VALUES ('a', STRUCT(number := 7, city := 'Oslo'));").await;
    let (_, body) = server
        .query("SELECT id, home->city, CAST(STRUCT(number := 1, city := 'x') AS address) AS c FROM people EMIT CHANGES LIMIT 1;")
        .await;
    assert_eq!(Server::rows(&body), vec![json!(["a", "Oslo", {"NUMBER": 1, "CITY": "x"}])]);
    server.stop();

    let server = Server::start(dir.path());
    let (_, types) = server.ksql("SHOW TYPES;").await;
    assert_eq!(types[0]["@type"], "type_list", "{types:#}");
    assert_eq!(types[0]["types"]["ADDRESS"]["type"], "STRUCT", "{types:#}");
    assert_eq!(types[0]["types"]["ADDRESS"]["fields"][1]["name"], "CITY", "{types:#}");
    let (_, d) = server.ksql("DESCRIBE people;").await;
    assert_eq!(d[0]["sourceDescription"]["fields"][1]["schema"]["type"], "STRUCT", "{d:#}");
    let dropped = server.ok("DROP TYPE address;").await;
    assert_eq!(dropped[0]["commandStatus"]["message"], "Dropped type 'ADDRESS'");
    let (status, _) = server.ksql("DROP TYPE address;").await;
    assert_eq!(status, 400);
    server.ok("DROP TYPE IF EXISTS address;").await;
    server.stop();
}

/// Lambdas work in every shape of query: a filter with a projection, the projection of an
/// aggregation (over its output, which carries hidden columns), a table-table join and a pull
/// query over its result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lambdas_in_projections_aggregations_joins_and_pull_queries() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    server.ok("CREATE STREAM s (id STRING KEY, a ARRAY<INT>, n INT) WITH (kafka_topic='s', value_format='JSON', partitions=1);").await;
    server.ok("CREATE TABLE t (id STRING PRIMARY KEY, b ARRAY<INT>) WITH (kafka_topic='t', value_format='JSON', partitions=1);").await;
    server.ok("CREATE TABLE u (id STRING PRIMARY KEY, m MAP<STRING, INT>) WITH (kafka_topic='u', value_format='JSON', partitions=1);").await;
    server.ok("CREATE STREAM plus AS SELECT id, TRANSFORM(a, x => x + n) AS a2 FROM s WHERE REDUCE(a, 0, (acc, x) => acc + x) > 0;").await;
    server
        .ok("CREATE TABLE lists AS SELECT id, TRANSFORM(COLLECT_LIST(n), x => x * 2) AS doubled FROM s GROUP BY id;")
        .await;
    server.ok("CREATE TABLE both AS SELECT t.id, FILTER(b, x => x > 2) AS big, TRANSFORM(m, (k, v) => UCASE(k), (k, v) => v * 10) AS m2 FROM t JOIN u ON t.id = u.id;").await;
    server.ok("INSERT INTO s (id, a, n) VALUES ('k', ARRAY[1, 2], 10);").await;
    server.ok("INSERT INTO s (id, a, n) VALUES ('k', ARRAY[-5], 20);").await;
    server.ok("INSERT INTO s (id, a, n) VALUES ('k', ARRAY[3], 30);").await;
    server.ok("INSERT INTO t (id, b) VALUES ('k', ARRAY[1, 3, 5]);").await;
    server.ok("INSERT INTO u (id, m) VALUES ('k', MAP('x' := 1));").await;
    let values = |body: &str| -> Vec<String> {
        body.lines().map(|l| l.split(", value: ").nth(1).unwrap_or_default().replace(", partition: 0", "")).collect()
    };
    let (_, body) = server.query("PRINT 'PLUS' FROM BEGINNING LIMIT 2;").await;
    assert_eq!(values(&body), [r#"{"A2":[11,12]}"#, r#"{"A2":[33]}"#], "{body}");
    let (_, body) = server.query("PRINT 'LISTS' FROM BEGINNING LIMIT 3;").await;
    assert_eq!(values(&body), [r#"{"DOUBLED":[20]}"#, r#"{"DOUBLED":[20,40]}"#, r#"{"DOUBLED":[20,40,60]}"#], "{body}");
    let (_, body) = server.query("PRINT 'BOTH' FROM BEGINNING LIMIT 1;").await;
    assert_eq!(values(&body), [r#"{"BIG":[3,5],"M2":{"X":10}}"#], "{body}");
    let (_, body) =
        server.query("SELECT T_ID, REDUCE(BIG, 0, (acc, x) => acc + x) AS total FROM BOTH WHERE T_ID = 'k';").await;
    assert!(body.contains(r#"["k",8]"#), "{body}");
    server.stop();
}

/// Schema-registry formats end to end: an AVRO stream declared with columns registers its schema,
/// an aggregation writes AVRO under its own registered schema, streams declared without value
/// columns take them from the registry (AVRO, JSON_SR, PROTOBUF), PRINT shows AVRO as JSON, and
/// the registry outlives a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_registry_formats_avro_json_sr_and_protobuf() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    server
        .ok("CREATE STREAM payments (id STRING KEY, amount DECIMAL(10, 2), at TIMESTAMP, tags ARRAY<STRING>) \
             WITH (kafka_topic='payments', value_format='AVRO', partitions=1);")
        .await;
    server.ok("CREATE TABLE totals AS SELECT id, SUM(amount) AS total, COUNT(*) AS n FROM payments GROUP BY id;").await;
    server.ok("INSERT INTO payments (id, amount, at, tags) VALUES ('a', 10.50, 1000, ARRAY['x']);").await;
    server.ok("INSERT INTO payments (id, amount, at, tags) VALUES ('a', 2.25, 2000, ARRAY['y', 'z']);").await;
    server.ok("INSERT INTO payments (id, amount, at, tags) VALUES ('b', 1.00, 3000, ARRAY[]);").await;
    // Columns from the schema CREATE registered for the topic's values.
    server.ok("CREATE STREAM again (id STRING KEY) WITH (kafka_topic='payments', value_format='AVRO');").await;
    let (_, d) = server.ksql("DESCRIBE again;").await;
    let fields: Vec<String> = d[0]["sourceDescription"]["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| format!("{} {}", f["name"].as_str().unwrap(), f["schema"]["type"].as_str().unwrap()))
        .collect();
    assert_eq!(fields, ["ID STRING", "AMOUNT DECIMAL", "AT TIMESTAMP", "TAGS ARRAY"], "{d:#}");
    let (_, body) = server.query("SELECT id, amount, tags FROM again EMIT CHANGES LIMIT 3;").await;
    assert_eq!(
        Server::rows(&body),
        vec![json!(["a", 10.5, ["x"]]), json!(["a", 2.25, ["y", "z"]]), json!(["b", 1.0, []])],
        "{body}"
    );
    let (_, body) = server.query("PRINT 'TOTALS' FROM BEGINNING LIMIT 3;").await;
    let values: Vec<&str> = body
        .lines()
        .map(|l| l.split(", value: ").nth(1).unwrap_or_default().split(", partition").next().unwrap())
        .collect();
    assert_eq!(values, [r#"{"TOTAL":10.5,"N":1}"#, r#"{"TOTAL":12.75,"N":2}"#, r#"{"TOTAL":1.0,"N":1}"#], "{body}");
    // JSON_SR: JSON text after the registry header; a stream over it takes its columns from the
    // registered JSON Schema.
    server
        .ok("CREATE STREAM big WITH (value_format='JSON_SR') AS SELECT id, amount * 2 AS doubled FROM payments;")
        .await;
    server.ok("CREATE STREAM big_again (id STRING KEY) WITH (kafka_topic='BIG', value_format='JSON_SR');").await;
    let (_, body) = server.query("SELECT * FROM big_again EMIT CHANGES LIMIT 3;").await;
    assert_eq!(Server::rows(&body), vec![json!(["a", 21.0]), json!(["a", 4.5]), json!(["b", 2.0])], "{body}");
    // PROTOBUF: a registered .proto schema; proto3 has no null scalars (ksqlDB writes defaults).
    server
        .ok("CREATE STREAM tagged WITH (value_format='PROTOBUF') AS SELECT id, at, tags, tags[2] AS second FROM payments;")
        .await;
    server.ok("CREATE STREAM tagged_again (id STRING KEY) WITH (kafka_topic='TAGGED', value_format='PROTOBUF');").await;
    let (_, body) = server.query("SELECT * FROM tagged_again EMIT CHANGES LIMIT 3;").await;
    assert_eq!(
        Server::rows(&body),
        vec![json!(["a", 1000, ["x"], ""]), json!(["a", 2000, ["y", "z"], "z"]), json!(["b", 3000, [], ""])],
        "{body}"
    );
    // A sink may write with a schema already registered (its id): the query's columns must be
    // the schema's, in order; then nothing new is registered and the records name that id.
    let (status, e) = server
        .ksql("CREATE STREAM reordered WITH (value_schema_id=1) AS SELECT id, tags, amount, at FROM payments;")
        .await;
    assert_eq!(status, 400, "{e:#}");
    let message = e["message"].as_str().unwrap();
    assert!(message.contains("The following value columns are changed, missing or reordered: [`TAGS` ARRAY<STRING>, `AMOUNT` DECIMAL(10, 2), `AT` TIMESTAMP]"), "{message}");
    server.ok("CREATE STREAM same WITH (value_schema_id=1) AS SELECT id, amount, at, tags FROM payments;").await;
    server.ok("CREATE STREAM same_again (id STRING KEY) WITH (kafka_topic='SAME', value_format='AVRO', value_schema_id=1);").await;
    let (_, body) = server.query("SELECT id, amount FROM same_again EMIT CHANGES LIMIT 3;").await;
    assert_eq!(Server::rows(&body), vec![json!(["a", 10.5]), json!(["a", 2.25]), json!(["b", 1.0])], "{body}");
    server.stop();

    // The registry is in the data directory: after a restart the table's records still decode.
    let server = Server::start(dir.path());
    let (_, body) = server.query("SELECT * FROM totals WHERE id = 'a';").await;
    assert!(body.contains(r#"["a",12.75,2]"#), "{body}");
    let (status, e) =
        server.ksql("CREATE STREAM nothing WITH (kafka_topic='nowhere', value_format='AVRO', partitions=1);").await;
    assert_eq!(status, 400);
    assert!(e["message"].as_str().unwrap().contains("Subject: nowhere-value"), "{e:#}");
    server.stop();
}
