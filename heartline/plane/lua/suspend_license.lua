-- suspend_license: switch a cached license to a status that refuses service and end every live session
-- of the license, in one atomic step: no start can slip in between (ending first and switching second
-- left a window in which an edge started a session on the still-active cached license).
-- KEYS: 1 license hash, 2 live zset, 3 fingerprints hash, 4 session records hash,
--       5 shard deadline index, 6 shard event stream, 7 shard live count
-- ARGV: 1 license id, 2 license base 'hl:{sN}:L<id>:', 3 status ('suspended' | 'revoked'),
--       4 the license's version in PostgreSQL that carries this status, 5 end reason,
--       6 stream max length
-- Reply: number of sessions ended (those already past their deadline are ended as timeout), or -1 when
--        the cached license is newer than ARGV[4] (a later edit, a reactivation say, is already cached:
--        nothing is changed).
-- A license that is not cached is not written (the next request loads it from PostgreSQL, which already
-- holds the status); its sessions are ended all the same.
local license_id, base = ARGV[1], ARGV[2]
local shard = {deadlines = KEYS[5], events = KEYS[6], count = KEYS[7], maxlen = ARGV[6]}
local cached = redis.call('HGET', KEYS[1], 'version')
if cached and tonumber(cached) > tonumber(ARGV[4]) then
  return -1
end
if cached then
  redis.call('HSET', KEYS[1], 'status', ARGV[3], 'version', ARGV[4])
end
local now = now_ms()
local ended = 0
for _, token in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
  if end_session(base, license_id, token, ARGV[5], now, shard) > 0 then
    ended = ended + 1
  end
end
return ended
