-- recount: set one shard's live counter to the number of sessions its licenses hold.  The counter is
-- kept by INCR/DECR as sessions start and end; when session keys expire with no reaper to end their
-- sessions it drifts, and this repairs it.
-- KEYS: 1-3 the shard's keys (deadlines, events, count), then the live zset of each license in ARGV
-- ARGV: the license ids of the shard's deadline index, as read just before
-- Reply: {drift repaired (old count - new count), 0}, or {0, 1} when the index now holds a license the
--        caller did not declare (a session started meanwhile): read the index again and call again.
-- A license whose live set is gone (its keys expired) leaves the index.
local shard = shard_keys(1, 0)
local declared = {}
for i = 1, #ARGV do
  declared[ARGV[i]] = 3 + i
end
for _, license_id in ipairs(redis.call('ZRANGE', shard.deadlines, 0, -1)) do
  if not declared[license_id] then
    return {0, 1}
  end
end
local live = 0
for i = 1, #ARGV do
  local n = redis.call('ZCARD', KEYS[3 + i])
  if n == 0 then
    redis.call('ZREM', shard.deadlines, ARGV[i])
  end
  live = live + n
end
local old = tonumber(redis.call('GET', shard.count) or '0')
redis.call('SET', shard.count, live)
return {old - live, 0}
