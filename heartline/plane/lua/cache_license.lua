-- cache_license: write a license and its active devices, as read from PostgreSQL, into the plane.
-- KEYS: 1 license hash, 2 devices hash, 3 live zset, 4 shard deadline index, 5 shard event stream,
--       6 shard live count
-- ARGV: 1 license id, 2 license base 'hl:{sN}:L<id>:', 3 license version, 4 TTL s, 5 stream max length,
--       6 number N of license field/value pairs, 7 .. 6+2N license field/value pairs,
--       then fingerprint/device id pairs of the active devices
-- Reply: -1 when the cached version is newer (a slower reader lost the race; nothing written), else the
--        number of live sessions ended because their device is no longer active (device_deactivated):
--        PostgreSQL is the record, so a device deactivated there (admin, psql) loses its session here.
local license_id, base = ARGV[1], ARGV[2]
local shard = {deadlines = KEYS[4], events = KEYS[5], count = KEYS[6], maxlen = ARGV[5]}
local cached = redis.call('HGET', KEYS[1], 'version')
if cached and tonumber(cached) > tonumber(ARGV[3]) then
  return -1
end
local n = tonumber(ARGV[6])
redis.call('DEL', KEYS[1], KEYS[2])
local fields = {}
for i = 7, 6 + 2 * n do
  fields[#fields + 1] = ARGV[i]
end
redis.call('HSET', KEYS[1], unpack(fields))
redis.call('EXPIRE', KEYS[1], ARGV[4])
if #ARGV > 6 + 2 * n then
  local devices = {}
  for i = 7 + 2 * n, #ARGV do
    devices[#devices + 1] = ARGV[i]
  end
  redis.call('HSET', KEYS[2], unpack(devices))
  redis.call('EXPIRE', KEYS[2], ARGV[4])
end

local ended = 0
local now = nil
local live_devices = redis.call('HGETALL', base .. 'fp')
for i = 1, #live_devices, 2 do
  if redis.call('HEXISTS', KEYS[2], live_devices[i]) == 0 then
    now = now or now_ms()
    if end_session(base, license_id, live_devices[i + 1], 'device_deactivated', now, shard) > 0 then
      ended = ended + 1
    end
  end
end
return ended
