-- Nexmark q0, pass-through: every bid with its columns unchanged (measures source + sink cost).
CREATE STREAM NEXMARK_Q0 AS SELECT AUCTION, BIDDER, PRICE, DATETIME, EXTRA FROM BID;
