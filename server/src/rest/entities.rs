//! ksqlDB's `/ksql` response entities.

use rill_sql::catalog::Column;
use rill_sql::results::{QueryInfo, SourceInfo, StatementResult};
use rill_sql::types::SqlType;
use rill_sql::KsqlEngine;
use serde_json::{json, Value};

/// The entity for one statement result (`None` for statements that produce none).
pub fn entity(r: StatementResult, _engine: &KsqlEngine) -> Option<Value> {
    Some(match r {
        StatementResult::CommandStatus { statement, message, query_id, sequence } => json!({
            "@type": "currentStatus",
            "statementText": statement,
            "commandId": command_id(&statement),
            "commandStatus": {"status": "SUCCESS", "message": message, "queryId": query_id},
            "commandSequenceNumber": sequence,
            "warnings": [],
        }),
        StatementResult::Sources { statement, kind, sources } => {
            let list: Vec<Value> = sources
                .iter()
                .map(|s| json!({"type": kind, "name": s.name, "topic": s.topic, "keyFormat": s.key_format, "valueFormat": s.value_format, "isWindowed": s.windowed}))
                .collect();
            if statement.to_uppercase().starts_with("DESCRIBE") {
                json!({"@type": "source_descriptions", "statementText": statement, "warnings": [],
                       "sourceDescriptions": sources.iter().map(|s| description(s, false)).collect::<Vec<_>>()})
            } else if kind == "STREAM" {
                json!({"@type": "streams", "statementText": statement, "warnings": [], "streams": list})
            } else {
                json!({"@type": "tables", "statementText": statement, "warnings": [], "tables": list})
            }
        }
        StatementResult::Topics { statement, topics } => json!({
            "@type": "kafka_topics", "statementText": statement, "warnings": [],
            "topics": topics.iter().map(|t| json!({"name": t.name, "replicaInfo": vec![1; t.partitions as usize]})).collect::<Vec<_>>(),
        }),
        StatementResult::Queries { statement, queries } => json!({
            "@type": "queries", "statementText": statement, "warnings": [],
            "queries": queries.iter().map(query).collect::<Vec<_>>(),
        }),
        StatementResult::Properties { statement, properties } => json!({
            "@type": "properties", "statementText": statement, "warnings": [],
            "properties": properties.iter().map(|(k, v)| json!({"name": k, "scope": "KSQL", "value": v})).collect::<Vec<_>>(),
            "overwrittenProperties": properties.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>(),
            "defaultProperties": [],
        }),
        StatementResult::Types { statement, types } => json!({
            "@type": "type_list", "statementText": statement, "warnings": [],
            "types": types.iter().map(|(n, t)| (n.clone(), schema(t))).collect::<serde_json::Map<_, _>>(),
        }),
        StatementResult::Description { statement, source, extended } => json!({
            "@type": "sourceDescription", "statementText": statement, "warnings": [],
            "sourceDescription": description(&source, extended),
        }),
        StatementResult::QueryDescription { statement, id, query_text, plan, sources, sinks, state } => json!({
            "@type": "queryDescription", "statementText": statement, "warnings": [],
            "queryDescription": {
                "id": id, "statementText": query_text, "windowType": null, "fields": [],
                "sources": sources, "sinks": sinks, "topology": "", "executionPlan": plan,
                "overriddenProperties": {}, "ksqlHostQueryStatus": {}, "state": state,
            },
        }),
        StatementResult::Push(_)
        | StatementResult::Pull { .. }
        | StatementResult::Print { .. }
        | StatementResult::Nothing => return None,
    })
}

fn command_id(statement: &str) -> String {
    let words: Vec<String> = statement.split_whitespace().take(6).map(|w| w.to_uppercase()).collect();
    let get = |i: usize| words.get(i).cloned().unwrap_or_default();
    match get(0).as_str() {
        "CREATE" => {
            let kind = if words.iter().any(|w| w == "TABLE") { "table" } else { "stream" };
            let name = words.iter().skip_while(|w| *w != "STREAM" && *w != "TABLE").nth(1).cloned().unwrap_or_default();
            let name = if name == "IF" { get(words.len() - 1) } else { name };
            format!("{kind}/`{}`/create", name.trim_end_matches(['(', ';']))
        }
        "DROP" => format!("{}/`{}`/drop", get(1).to_lowercase(), get(2).trim_end_matches(';')),
        "TERMINATE" => format!("terminate/{}/execute", get(1).trim_end_matches(';')),
        _ => "cluster/CONFIGS/execute".to_string(),
    }
}

fn query(q: &QueryInfo) -> Value {
    json!({
        "queryString": q.statement,
        "sinks": q.sinks,
        "sinkKafkaTopics": q.sink_topics,
        "id": q.id,
        "statusCount": {q.state: 1},
        "queryType": "PERSISTENT",
        "state": q.state,
    })
}

fn schema(t: &SqlType) -> Value {
    match t {
        SqlType::Array(e) => json!({"type": "ARRAY", "fields": null, "memberSchema": schema(e)}),
        SqlType::Map(_, v) => json!({"type": "MAP", "fields": null, "memberSchema": schema(v)}),
        SqlType::Struct(fields) => json!({"type": "STRUCT", "memberSchema": null,
            "fields": fields.iter().map(|(n, t)| json!({"name": n, "schema": schema(t)})).collect::<Vec<_>>()}),
        SqlType::Decimal(p, s) => {
            json!({"type": "DECIMAL", "fields": null, "memberSchema": null, "parameters": {"precision": p, "scale": s}})
        }
        other => {
            let name = other.to_string();
            json!({"type": name, "fields": null, "memberSchema": null})
        }
    }
}

fn field(c: &Column) -> Value {
    let mut v = json!({"name": c.name, "schema": schema(&c.sql_type)});
    if c.key {
        v["type"] = json!("KEY");
    }
    v
}

fn description(s: &SourceInfo, extended: bool) -> Value {
    json!({
        "name": s.name,
        "windowType": s.window_type,
        "readQueries": s.read_queries.iter().map(query).collect::<Vec<_>>(),
        "writeQueries": s.write_queries.iter().map(query).collect::<Vec<_>>(),
        "fields": s.columns.iter().map(field).collect::<Vec<_>>(),
        "type": s.kind,
        "timestamp": s.timestamp.clone().unwrap_or_default(),
        "statistics": if extended { s.statistics.clone() } else { String::new() },
        "errorStats": if extended { s.error_stats.clone() } else { String::new() },
        "extended": extended,
        "keyFormat": s.key_format,
        "valueFormat": s.value_format,
        "topic": s.topic,
        "partitions": if extended { s.partitions } else { 0 },
        "replication": if extended { 1 } else { 0 },
        "statement": s.statement,
        "queryOffsetSummaries": [],
        "sourceConstraints": [],
        "clusterStatistics": [],
        "clusterErrorStats": [],
    })
}
