-- due: which licenses of one shard have a session past its deadline (read only).
-- KEYS: 1 the shard's deadline index
-- ARGV: 1 most license ids to return
-- Reply: license ids whose earliest deadline has passed (Redis server clock), soonest first.
-- The reaper learns from this which licenses' keys to declare to reap.lua: a script may only touch
-- the keys it declares, and it cannot know them before it reads the index.
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now_ms(), 'LIMIT', 0, tonumber(ARGV[1]))
