-- W4, interval join: each bid with its auction if it was placed within 20 s after the auction
-- opened and before it expired. The timestamps are 'yyyy-MM-dd HH:mm:ss.SSS' strings, which
-- compare in time order. State is kept until the watermark passes 20 s + 15 s of grace: the
-- generator's latest bids arrive at most 15 s behind (Flink cleans its join state by the
-- watermark as well).
CREATE STREAM W4 AS SELECT B.AUCTION AS AUCTION, B.BIDDER AS BIDDER, B.PRICE AS PRICE, B.DATE_TIME AS DATE_TIME,
    A.SELLER AS SELLER, A.CATEGORY AS CATEGORY
  FROM BID B JOIN AUCTION A WITHIN (20 SECONDS, 0 SECONDS) GRACE PERIOD 15 SECONDS ON B.AUCTION = A.ID
  WHERE B.DATE_TIME <= A.EXPIRES;
