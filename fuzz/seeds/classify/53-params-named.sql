-- params {"id": 2, "v": [1, 2, 3]}
UPDATE t SET b = :v WHERE id = @id