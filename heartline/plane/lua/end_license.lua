-- end_license: end every live session of a license, or the session of one of its devices.
-- KEYS: 1-4 the license's keys (lic, dev, live, ss), 5-7 the shard's keys (deadlines, events, count)
-- ARGV: 1 license id, 2 end reason, 3 stream max length, 4 fingerprint ('' = all sessions of the license),
--       5 the fingerprint's device id ('' = as the devices cache has it; give it when known, since the
--         cache may have expired while a borrowed session lives on)
-- Reply: number of sessions ended (those already past their deadline are ended as timeout).
-- With a fingerprint the device also leaves the devices cache, so its next start asks PostgreSQL
-- (the record) whether it is still active.
local license_id, reason, fp = ARGV[1], ARGV[2], ARGV[4]
local lk = license_keys(1)
local shard = shard_keys(5, ARGV[3])
local now = now_ms()
local tokens
if fp == '' then
  tokens = redis.call('ZRANGE', lk.live, 0, -1)
else
  local device = ARGV[5]
  if device == '' then
    device = redis.call('HGET', lk.dev, fp)
  end
  redis.call('HDEL', lk.dev, fp)
  -- A device has at most one live session (device_session in the prelude).
  tokens = {device_session(lk, device)}
end
local ended = 0
for _, token in ipairs(tokens) do
  if token and end_session(lk, license_id, token, reason, now, shard, fp ~= '' and fp or nil) > 0 then
    ended = ended + 1
  end
end
return ended
