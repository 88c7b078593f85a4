-- Nexmark q5, hot items: bids per auction in hopping windows of 10 s advancing by 2 s; the full
-- query then keeps, per window, the auctions whose count equals the window's maximum.
-- Rill expresses the counting part (below, also peer workload W3); re-aggregating the windowed
-- counts by window and joining them back is not expressible yet (an aggregation over a windowed
-- table grouped by WINDOWSTART, then a table-table join on it).
CREATE TABLE NEXMARK_Q5 AS SELECT AUCTION, AS_VALUE(AUCTION) AS AUCTION_ID, WINDOWSTART AS WSTART,
    COUNT(*) AS NUM
  FROM BID WINDOW HOPPING (SIZE 10 SECONDS, ADVANCE BY 2 SECONDS, GRACE PERIOD 0 SECONDS)
  GROUP BY AUCTION EMIT FINAL;
