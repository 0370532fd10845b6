-- Prelude shared by every plane script: scripts.py prepends this file to each one before loading it
-- (Redis scripts cannot include files).  It only defines local functions; it touches no key.
--
-- A license's keys are reached from its base `hl:{sN}:L<id>:` plus the suffixes fixed in keys.py:
-- 'lic', 'dev', 'live', 'fp', 'ss'.  All of them share the shard's hash tag with the shard's deadline
-- index and streams, so every script runs on one cluster slot.

-- Redis server time in ms: the one clock every deadline is measured with (callers' clocks drift).
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Session records are fields of the license's 'ss' hash, packed as
-- 'device id|started ms|last heartbeat ms|count|ip|client version' (the version last: it may hold '|').
local function read_session(base, token)
  local raw = redis.call('HGET', base .. 'ss', token)
  if not raw then
    return nil
  end
  local parts = {}
  local from = 1
  for i = 1, 5 do
    local sep = string.find(raw, '|', from, true)
    if not sep then
      return nil
    end
    parts[i] = string.sub(raw, from, sep - 1)
    from = sep + 1
  end
  return {d = parts[1], s = parts[2], lh = parts[3], n = parts[4], ip = parts[5], v = string.sub(raw, from)}
end

local function write_session(base, token, rec)
  redis.call('HSET', base .. 'ss', token,
    rec.d .. '|' .. rec.s .. '|' .. rec.lh .. '|' .. rec.n .. '|' .. rec.ip .. '|' .. rec.v)
end

-- The fingerprint whose live session `token` is (the fp hash maps each device to its one live token).
local function fingerprint_of(base, token)
  local entries = redis.call('HGETALL', base .. 'fp')
  for i = 1, #entries, 2 do
    if entries[i + 1] == token then
      return entries[i]
    end
  end
  return nil
end

-- The license's session keys outlive its last write by about ttl_ms (= timeout + grace), so they leave
-- Redis even if no reaper ever runs; the reaper ends sessions long before.  The expiry is only pushed
-- out once it has run down by a minute (a quarter for short TTLs), not on every heartbeat, and never
-- shortened.
local function keep_session_keys(base, ttl_ms)
  local refresh_below = ttl_ms - math.min(60000, math.floor(ttl_ms / 4))
  for _, suffix in ipairs({'live', 'fp', 'ss'}) do
    local key = base .. suffix
    if redis.call('PTTL', key) < refresh_below then
      redis.call('PEXPIRE', key, ttl_ms)
    end
  end
end

-- The shard's deadline index holds one entry per license with live sessions: the license id, scored
-- with its earliest session deadline (one entry per license, not per session, keeps the index small).
local function index_license(base, license_id, shard)
  local first = redis.call('ZRANGE', base .. 'live', 0, 0, 'WITHSCORES')
  if first[1] then
    redis.call('ZADD', shard.deadlines, first[2], license_id)
  else
    redis.call('ZREM', shard.deadlines, license_id)
  end
end

-- Appends an entry to a stream.  maxlen 0 (the default) never trims: the worker trims only entries it
-- has stored and acknowledged, so an outage of PostgreSQL grows the stream instead of losing heartbeats.
-- A positive maxlen caps the stream approximately and so, in a long outage, drops the oldest entries
-- that were not stored yet: an operator's explicit choice of bounded memory over completeness.
local function append_event(stream, maxlen, ...)
  if tonumber(maxlen) > 0 then
    return redis.call('XADD', stream, 'MAXLEN', '~', maxlen, '*', ...)
  end
  return redis.call('XADD', stream, '*', ...)
end

-- Ends one session of a license: removes it from the live set, the fingerprint map and the session
-- records, re-indexes the license, counts it off the shard's live count and appends exactly one `ended`
-- event (fields: heartline/plane/events.py).  `shard` = {deadlines=, events=, count=, maxlen=}.
-- A session already past its deadline is ended as 'timeout' whatever the caller asked, so history
-- keeps the true reason.  Returns 0 when the token was not live (nothing emitted: an end racing
-- another end or the reaper is harmless), 1 when ended with `reason`, 2 when ended as timeout.
local function end_session(base, license_id, token, reason, now, shard)
  local score = redis.call('ZSCORE', base .. 'live', token)
  if not score then
    redis.call('HDEL', base .. 'ss', token)
    return 0
  end
  redis.call('ZREM', base .. 'live', token)
  index_license(base, license_id, shard)
  redis.call('DECR', shard.count)
  local result = 1
  if tonumber(score) <= now then
    reason = 'timeout'
    result = 2
  end
  local rec = read_session(base, token) or {d = '', s = '', lh = '', n = '0', ip = '', v = ''}
  redis.call('HDEL', base .. 'ss', token)
  local fp = fingerprint_of(base, token)
  if fp then
    redis.call('HDEL', base .. 'fp', fp)
  end
  append_event(shard.events, shard.maxlen,
    'k', 'ended', 'l', license_id, 't', token, 'd', rec.d, 'f', fp or '', 's', rec.s,
    'at', now, 'r', reason, 'n', rec.n, 'lh', rec.lh, 'v', rec.v, 'ip', rec.ip)
  return result
end

-- Why a cached license refuses service at `now`, or nil when it serves.
local function license_refusal(status, valid_from_ms, valid_until_ms, now)
  if status == 'suspended' then return 'LICENSE_SUSPENDED' end
  if status == 'revoked' then return 'LICENSE_REVOKED' end
  if status ~= 'active' then return 'LICENSE_SUSPENDED' end
  if valid_until_ms and valid_until_ms ~= '' and now >= tonumber(valid_until_ms) then
    return 'LICENSE_EXPIRED'
  end
  if valid_from_ms and valid_from_ms ~= '' and now < tonumber(valid_from_ms) then
    return 'LICENSE_NOT_YET_VALID'
  end
  return nil
end

