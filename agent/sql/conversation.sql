SELECT status, bypass_id::text FROM conversations WHERE id = %(id)s
