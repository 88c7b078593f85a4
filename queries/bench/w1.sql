-- W1, filter + project (Nexmark q1 + q2): bids on auctions that are multiples of 123, price in euros.
CREATE STREAM W1 AS SELECT AUCTION, BIDDER, 0.908 * PRICE AS PRICE, DATE_TIME, EXTRA FROM BID WHERE AUCTION % 123 = 0;
