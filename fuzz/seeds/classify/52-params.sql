-- params [1, "x'00ff'", 2.5, null, true]
INSERT INTO t(id, b, n, v) VALUES (?, ?, ?, ?, ?)