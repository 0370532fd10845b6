-- start: start a session for a device of one license, or resume the device's live session.
-- KEYS: 1 license hash, 2 devices hash, 3 live zset, 4 fingerprints hash,
--       5 shard deadline index, 6 shard event stream, 7 shard live count
-- ARGV: 1 license id, 2 license base 'hl:{sN}:L<id>:', 3 fingerprint, 4 token for a new session
--       (uuid4 made by the caller), 5 client version, 6 client ip, 7 stream max length,
--       8 grace ms the session keys outlive the last write (memory bound if no reaper runs),
--       9 device id offered for a fingerprint missing from the devices hash ('' = none): the id of an
--         activation the caller holds uncommitted in PostgreSQL
-- Reply: {'STARTED' | 'RESUMED', token, deadline ms, heartbeat interval s, heartbeat timeout s}
--        or {code}: LICENSE_NOT_CACHED (caller reloads the license and retries), LICENSE_SUSPENDED,
--        LICENSE_REVOKED, LICENSE_EXPIRED, LICENSE_NOT_YET_VALID, DEVICE_NOT_ACTIVATED (caller activates
--        in PostgreSQL without committing and retries offering the device id), SESSION_LIMIT_REACHED.
-- Atomic, so parallel starts can never exceed the limit; no live session is ever ended to make room.
-- An offered device enters the devices hash only together with the session it starts: a refused start
-- leaves no trace here, and the caller rolls its activation back, so refusals never take device slots.
local license_id, base, fp = ARGV[1], ARGV[2], ARGV[3]
local shard = {deadlines = KEYS[5], events = KEYS[6], count = KEYS[7], maxlen = ARGV[7]}
local lic = redis.call('HMGET', KEYS[1], 'status', 'valid_from_ms', 'valid_until_ms', 'sessions_limit',
  'interval_s', 'timeout_s')
if not lic[1] then
  return {'LICENSE_NOT_CACHED'}
end
local now = now_ms()
local refusal = license_refusal(lic[1], lic[2], lic[3], now)
if refusal then
  return {refusal}
end
local device = redis.call('HGET', KEYS[2], fp)
local offered = nil
if not device then
  if ARGV[9] == '' then
    return {'DEVICE_NOT_ACTIVATED'}
  end
  offered = ARGV[9]
end
-- The offered device joins the cache with the session it gets, and expires with the license hash.
local function cache_offered_device()
  redis.call('HSET', KEYS[2], fp, offered)
  local ttl = redis.call('PTTL', KEYS[1])
  if ttl > 0 then
    redis.call('PEXPIRE', KEYS[2], ttl)
  end
  device = offered
end

-- Sessions past their deadline stop counting now, not when the reaper comes by; each still gets its
-- ended(timeout) event.
for _, token in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now)) do
  end_session(base, license_id, token, 'timeout', now, shard)
end

local timeout_ms = tonumber(lic[6]) * 1000
local deadline = now + timeout_ms
local current = redis.call('HGET', KEYS[4], fp)
if current and redis.call('ZSCORE', KEYS[3], current) then
  -- A start is a sign of life: the resumed session gets a full timeout again.
  if offered then
    cache_offered_device()
  end
  redis.call('ZADD', KEYS[3], deadline, current)
  index_license(base, license_id, shard)
  keep_session_keys(base, timeout_ms + tonumber(ARGV[8]))
  return {'RESUMED', current, deadline, lic[5], lic[6]}
end
if redis.call('ZCARD', KEYS[3]) >= tonumber(lic[4]) then
  return {'SESSION_LIMIT_REACHED'}
end

if offered then
  cache_offered_device()
end
local token = ARGV[4]
redis.call('ZADD', KEYS[3], deadline, token)
index_license(base, license_id, shard)
redis.call('INCR', KEYS[7])
redis.call('HSET', KEYS[4], fp, token)
write_session(base, token, {d = device, s = now, lh = '', n = 0, ip = ARGV[6], v = ARGV[5]})
keep_session_keys(base, timeout_ms + tonumber(ARGV[8]))
append_event(KEYS[6], ARGV[7],
  'k', 'started', 'l', license_id, 't', token, 'd', device, 'f', fp, 's', now, 'at', now,
  'n', 0, 'v', ARGV[5], 'ip', ARGV[6])
return {'STARTED', token, deadline, lic[5], lic[6]}
