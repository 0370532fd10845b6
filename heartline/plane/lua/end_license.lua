-- end_license: end every live session of a license, or every session of one of its devices.
-- KEYS: 1 live zset, 2 devices hash, 3 shard deadline index, 4 shard event stream
-- ARGV: 1 license id, 2 license base 'hl:{sN}:L<id>:', 3 end reason, 4 stream max length,
--       5 fingerprint ('' = all sessions of the license)
-- Reply: number of sessions ended (those already past their deadline are ended as timeout).
-- With a fingerprint the device also leaves the devices cache, so its next start asks PostgreSQL
-- (the record) whether it is still active.
local license_id, base, reason, fp = ARGV[1], ARGV[2], ARGV[3], ARGV[5]
local now = now_ms()
local license_fingerprints = base .. 'fp'
if fp ~= '' then
  redis.call('HDEL', KEYS[2], fp)
end
local tokens
if fp == '' then
  tokens = redis.call('ZRANGE', KEYS[1], 0, -1)
else
  -- A device has at most one live session: the one the fingerprint map points to.
  tokens = {redis.call('HGET', license_fingerprints, fp)}
end
local ended = 0
for _, token in ipairs(tokens) do
  if token and end_session(base, license_id, token, reason, now, KEYS[3], KEYS[4], ARGV[4]) > 0 then
    ended = ended + 1
  end
end
return ended
