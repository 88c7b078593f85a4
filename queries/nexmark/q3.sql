-- Nexmark q3, local item suggestion: sellers in OR, ID or CA with the auctions they open in
-- category 10. People become a table keyed by id (each id registers once); each auction joins
-- the table as it stands when the auction is processed (a stream-table join, as ksqlDB does).
-- Rill does not align a stream with a table by event time yet, so the bench runs the second
-- statement once the table has been built from all people.
CREATE TABLE NEXMARK_PEOPLE AS SELECT ID, LATEST_BY_OFFSET(NAME) AS NAME, LATEST_BY_OFFSET(CITY) AS CITY,
    LATEST_BY_OFFSET(STATE) AS STATE FROM PERSON GROUP BY ID;
CREATE STREAM NEXMARK_Q3 AS SELECT A.SELLER AS SELLER, A.ID AS AUCTION_ID, P.NAME AS NAME, P.CITY AS CITY, P.STATE AS STATE
  FROM AUCTION A JOIN NEXMARK_PEOPLE P ON A.SELLER = P.ID
  WHERE A.CATEGORY = 10 AND (P.STATE = 'or' OR P.STATE = 'id' OR P.STATE = 'ca');
