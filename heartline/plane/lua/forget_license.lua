-- forget_license: drop a cached license and its devices, so the next request reloads both from
-- PostgreSQL.  Live sessions are untouched.
-- KEYS: 1 license hash, 2 devices hash
-- ARGV: none
-- Reply: number of keys removed.
return redis.call('DEL', KEYS[1], KEYS[2])
