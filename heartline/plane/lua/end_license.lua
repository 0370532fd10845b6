-- end_license: end every live session of a license, or the session of one of its devices.
-- KEYS: 1 live zset, 2 devices hash, 3 fingerprints hash, 4 shard deadline index,
--       5 shard event stream, 6 shard live count
-- ARGV: 1 license id, 2 license base 'hl:{sN}:L<id>:', 3 end reason, 4 stream max length,
--       5 fingerprint ('' = all sessions of the license)
-- Reply: number of sessions ended (those already past their deadline are ended as timeout).
-- With a fingerprint the device also leaves the devices cache, so its next start asks PostgreSQL
-- (the record) whether it is still active.
local license_id, base, reason, fp = ARGV[1], ARGV[2], ARGV[3], ARGV[5]
local shard = {deadlines = KEYS[4], events = KEYS[5], count = KEYS[6], maxlen = ARGV[4]}
local now = now_ms()
local tokens
if fp == '' then
  tokens = redis.call('ZRANGE', KEYS[1], 0, -1)
else
  redis.call('HDEL', KEYS[2], fp)
  -- A device has at most one live session: the one the fingerprint map points to.
  tokens = {redis.call('HGET', KEYS[3], fp)}
end
local ended = 0
for _, token in ipairs(tokens) do
  if token and end_session(base, license_id, token, reason, now, shard) > 0 then
    ended = ended + 1
  end
end
return ended
