-- tx
INSERT INTO t(v) VALUES ('in tx')

INSERT INTO t(id) VALUES (1)

SELECT count(*) FROM t