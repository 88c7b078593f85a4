-- Nexmark q7, highest bid: the highest price in each tumbling 10 s window.
-- Rill computes the per-window maximum (below); joining it back to the bids of the same window
-- to return the winning bids themselves is not expressible yet (a stream-table join on the
-- window start of a windowed table).
CREATE TABLE NEXMARK_Q7 AS SELECT 1 AS K, AS_VALUE(1) AS ALL_BIDS, WINDOWSTART AS WSTART, MAX(PRICE) AS MAXPRICE
  FROM BID WINDOW TUMBLING (SIZE 10 SECONDS, GRACE PERIOD 0 SECONDS)
  GROUP BY 1 EMIT FINAL;
