-- suspend_license: switch a cached license to a status that refuses service and end every live session
-- of the license, in one atomic step: no start can slip in between (ending first and switching second
-- left a window in which an edge started a session on the still-active cached license).
-- KEYS: 1-4 the license's keys (lic, dev, live, ss), 5-7 the shard's keys (deadlines, events, count)
-- ARGV: 1 license id, 2 status ('suspended' | 'revoked'),
--       3 the license's version in PostgreSQL that carries this status, 4 end reason,
--       5 stream max length
-- Reply: number of sessions ended (those already past their deadline are ended as timeout), or -1 when
--        the cached license is newer than ARGV[3] (a later edit, a reactivation say, is already cached:
--        nothing is changed).
-- A license that is not cached is not written (the next request loads it from PostgreSQL, which already
-- holds the status); its sessions are ended all the same.
local license_id = ARGV[1]
local lk = license_keys(1)
local shard = shard_keys(5, ARGV[5])
local cached = redis.call('HGET', lk.lic, 'version')
if cached and tonumber(cached) > tonumber(ARGV[3]) then
  return -1
end
if cached then
  redis.call('HSET', lk.lic, 'status', ARGV[2], 'version', ARGV[3])
end
local now = now_ms()
local ended = 0
for _, token in ipairs(redis.call('ZRANGE', lk.live, 0, -1)) do
  if end_session(lk, license_id, token, ARGV[4], now, shard) > 0 then
    ended = ended + 1
  end
end
return ended
