-- Nexmark q8, monitor new users: people who opened an auction in the same 10 s tumbling window
-- in which they registered. A stream-stream join within 10 s, restricted to equal windows.
CREATE STREAM NEXMARK_Q8 AS SELECT P.ID AS ID, AS_VALUE(P.ID) AS PERSON_ID, P.NAME AS NAME, (P.DATETIME / 10000) * 10000 AS WSTART
  FROM PERSON P JOIN AUCTION A WITHIN 10 SECONDS GRACE PERIOD 5 SECONDS ON P.ID = A.SELLER
  WHERE P.DATETIME / 10000 = A.DATETIME / 10000;
