-- W2, tumbling window: bids and the highest price per auction per 10 s window.
-- Flink's watermark is the largest event time minus 5 s and a window fires once the watermark
-- reaches its end - 1 ms; Rill's watermark is the largest event time, so the same window closes
-- at end + 4999 ms: GRACE PERIOD 4999 MILLISECONDS. Later bids go to the late-data topic.
CREATE TABLE W2 AS SELECT AUCTION, AS_VALUE(AUCTION) AS AUCTION_ID, WINDOWSTART AS WINDOW_START, COUNT(*) AS CNT,
    MAX(PRICE) AS MAX_PRICE
  FROM BID WINDOW TUMBLING (SIZE 10 SECONDS, GRACE PERIOD 4999 MILLISECONDS)
  GROUP BY AUCTION EMIT FINAL;
