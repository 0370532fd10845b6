-- cache_license: write a license and its active devices, as read from PostgreSQL, into the plane.
-- KEYS: 1-5 the license's keys (lic, dev, live, fp, ss), 6-8 the shard's keys (deadlines, events, count)
-- ARGV: 1 license id, 2 license version, 3 TTL s, 4 stream max length,
--       5 number N of license field/value pairs, 6 .. 5+2N license field/value pairs,
--       then fingerprint/device id pairs of the active devices
-- Reply: -1 when the cached version is newer (a slower reader lost the race; nothing written), else the
--        number of live sessions ended because their device is no longer active (device_deactivated):
--        PostgreSQL is the record, so a device deactivated there (admin, psql) loses its session here.
local license_id = ARGV[1]
local lk = license_keys(1)
local shard = shard_keys(6, ARGV[4])
local cached = redis.call('HGET', lk.lic, 'version')
if cached and tonumber(cached) > tonumber(ARGV[2]) then
  return -1
end
local n = tonumber(ARGV[5])
redis.call('DEL', lk.lic, lk.dev)
local fields = {}
for i = 6, 5 + 2 * n do
  fields[#fields + 1] = ARGV[i]
end
redis.call('HSET', lk.lic, unpack(fields))
redis.call('EXPIRE', lk.lic, ARGV[3])
if #ARGV > 5 + 2 * n then
  local devices = {}
  for i = 6 + 2 * n, #ARGV do
    devices[#devices + 1] = ARGV[i]
  end
  redis.call('HSET', lk.dev, unpack(devices))
  redis.call('EXPIRE', lk.dev, ARGV[3])
end

-- The resume grace's copy beside the sessions it concerns (resume_grace_ms in the prelude), and the
-- license re-indexed with it.
if redis.call('EXISTS', lk.ss) == 1 then
  local resume_ms = (tonumber(redis.call('HGET', lk.lic, 'resume_grace_s')) or 0) * 1000
  if resume_ms > 0 then
    redis.call('HSET', lk.ss, GRACE_FIELD, resume_ms)
  else
    redis.call('HDEL', lk.ss, GRACE_FIELD)
  end
  index_license(lk, license_id, shard, resume_ms)
end

local ended = 0
local now = nil
local live_devices = redis.call('HGETALL', lk.fp)
for i = 1, #live_devices, 2 do
  if redis.call('HEXISTS', lk.dev, live_devices[i]) == 0 then
    now = now or now_ms()
    if end_session(lk, license_id, live_devices[i + 1], 'device_deactivated', now, shard) > 0 then
      ended = ended + 1
    end
  end
end
return ended
