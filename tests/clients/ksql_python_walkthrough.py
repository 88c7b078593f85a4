"""The walkthrough, driven by the unmodified third-party ksqlDB client `ksql-python-ng`.

Usage: python ksql_python_walkthrough.py http://127.0.0.1:PORT
Exits non-zero (AssertionError) on any difference from what a ksqlDB server would answer.
"""
import json
import sys

from ksql import KSQLAPI
from ksql.utils import parse_query_results

EARLIEST = {"auto.offset.reset": "earliest"}


def main(url):
    client = KSQLAPI(url)  # calls GET /info

    r = client.ksql(
        "CREATE STREAM clicks (user_id STRING KEY, page STRING, ms INT) "
        "WITH (kafka_topic='clicks', value_format='JSON', partitions=1);"
    )
    assert r[0]["@type"] == "currentStatus" and r[0]["commandStatus"]["status"] == "SUCCESS", r

    # HTTP/2 (h2c) /inserts-stream; field names are matched case-insensitively.
    acks = client.inserts_stream(
        "clicks", [{"USER_ID": "a", "PAGE": "/x", "MS": 5}, {"user_id": "b", "page": "/y", "ms": 50}]
    )
    assert acks == [{"status": "ok", "seq": 0}, {"status": "ok", "seq": 1}], acks

    r = client.ksql("CREATE STREAM slow AS SELECT user_id, page FROM clicks WHERE ms > 10;", stream_properties=EARLIEST)
    assert r[0]["commandStatus"]["queryId"].startswith("CSAS_SLOW_"), r

    streams = client.ksql("SHOW STREAMS;")[0]["streams"]
    assert sorted(s["name"] for s in streams) == ["CLICKS", "SLOW"], streams

    # HTTP/1.1 /query: chunks of ksqlDB's JSON array framing.
    body = "".join(client.query("SELECT * FROM slow EMIT CHANGES LIMIT 1;", stream_properties=EARLIEST))
    lines = [l.lstrip("[").rstrip("]").rstrip(",") for l in body.split("\n") if l.strip()]
    elements = [json.loads(l) for l in lines]
    assert elements[0]["header"]["schema"] == "`USER_ID` STRING, `PAGE` STRING", elements
    assert elements[1] == {"row": {"columns": ["b", "/y"]}}, elements
    assert elements[2] == {"finalMessage": "Limit Reached"}, elements

    # HTTP/2 /query-stream with the client's own row parser.
    rows = list(
        parse_query_results(
            client.query("SELECT user_id, ms FROM clicks EMIT CHANGES LIMIT 2;", use_http2=True, stream_properties=EARLIEST)
        )
    )
    assert rows == [{"USER_ID": "a", "MS": 5}, {"USER_ID": "b", "MS": 50}], rows

    # Errors come back as ksqlDB's statement_error.
    try:
        client.ksql("SELEC 1;")
        raise AssertionError("a syntax error was accepted")
    except Exception as e:  # the client raises its own KSQLError
        assert "Syntax Error" in str(e), e
    print("OK")


if __name__ == "__main__":
    main(sys.argv[1])
