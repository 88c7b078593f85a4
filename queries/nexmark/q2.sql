-- Nexmark q2, selection: auction and price of the bids on auctions whose id is a multiple of 123.
CREATE STREAM NEXMARK_Q2 AS SELECT AUCTION, PRICE FROM BID WHERE AUCTION % 123 = 0;
