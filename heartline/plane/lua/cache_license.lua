-- cache_license: write a license and its active devices, as read from PostgreSQL, into the plane.
-- KEYS: 1-4 the license's keys (lic, dev, live, ss), 5-7 the shard's keys (deadlines, events, count)
-- ARGV: 1 license id, 2 license version, 3 TTL s, 4 stream max length,
--       5 number N of license field/value pairs, 6 .. 5+2N license field/value pairs,
--       then fingerprint/device id pairs of the active devices
-- Reply: -1 when the cached version is newer (a slower reader lost the race; nothing written), else the
--        number of live sessions ended because their device is no longer active (device_deactivated):
--        PostgreSQL is the record, so a device deactivated there (admin, psql) loses its session here.
local license_id = ARGV[1]
local lk = license_keys(1)
local shard = shard_keys(5, ARGV[4])
local cached = redis.call('HGET', lk.lic, 'version')
if cached and tonumber(cached) > tonumber(ARGV[2]) then
  return -1
end
local n = tonumber(ARGV[5])
-- the cached devices' fingerprints by device id, before they are replaced: the `ended` events of the
-- devices no longer active carry them
local old_fps = {}
local old_devices = redis.call('HGETALL', lk.dev)
for i = 1, #old_devices, 2 do
  old_fps[old_devices[i + 1]] = old_devices[i]
end
redis.call('DEL', lk.lic, lk.dev)
local fields = {}
for i = 6, 5 + 2 * n do
  fields[#fields + 1] = ARGV[i]
end
redis.call('HSET', lk.lic, unpack(fields))
redis.call('EXPIRE', lk.lic, ARGV[3])
local active = {}
if #ARGV > 5 + 2 * n then
  local devices = {}
  for i = 6 + 2 * n, #ARGV do
    devices[#devices + 1] = ARGV[i]
  end
  for i = 7 + 2 * n, #ARGV, 2 do
    active[ARGV[i]] = true
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
-- the sessions' records ('device id|...', under their token; the other fields hold '!' or ':')
local records = redis.call('HGETALL', lk.ss)
for i = 1, #records, 2 do
  local token = records[i]
  if string.byte(token, 1) ~= 33 and not string.find(token, ':', 1, true) then
    local device = string.match(records[i + 1], '^([^|]*)|')
    if device and not active[device] then
      now = now or now_ms()
      if end_session(lk, license_id, token, 'device_deactivated', now, shard, old_fps[device]) > 0 then
        ended = ended + 1
      end
    end
  end
end
return ended
