-- Nexmark q1, currency conversion: every bid with its price in euros.
CREATE STREAM NEXMARK_Q1 AS SELECT AUCTION, BIDDER, PRICE * 0.908 AS PRICE, DATETIME, EXTRA FROM BID;
