-- cache_license: write a license and its active devices, as read from PostgreSQL, into the plane.
-- KEYS: 1 license hash, 2 devices hash
-- ARGV: 1 license version, 2 TTL s, 3 number N of license field/value pairs,
--       4 .. 3+2N license field/value pairs, then fingerprint/device id pairs of the active devices
-- Reply: 1 when written; 0 when the cached version is newer (a slower reader lost the race).
local cached = redis.call('HGET', KEYS[1], 'version')
if cached and tonumber(cached) > tonumber(ARGV[1]) then
  return 0
end
local n = tonumber(ARGV[3])
redis.call('DEL', KEYS[1], KEYS[2])
local fields = {}
for i = 4, 3 + 2 * n do
  fields[#fields + 1] = ARGV[i]
end
redis.call('HSET', KEYS[1], unpack(fields))
redis.call('EXPIRE', KEYS[1], ARGV[2])
if #ARGV > 3 + 2 * n then
  local devices = {}
  for i = 4 + 2 * n, #ARGV do
    devices[#devices + 1] = ARGV[i]
  end
  redis.call('HSET', KEYS[2], unpack(devices))
  redis.call('EXPIRE', KEYS[2], ARGV[2])
end
return 1
