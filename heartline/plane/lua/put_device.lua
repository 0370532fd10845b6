-- put_device: add one freshly activated device to a cached license's devices hash.
-- KEYS: 1 license hash, 2 devices hash
-- ARGV: 1 fingerprint, 2 device id, 3 TTL s
-- Reply: 1 when added; 0 when the license is not cached (its next use loads license and devices whole).
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('EXPIRE', KEYS[2], ARGV[3])
return 1
