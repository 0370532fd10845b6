-- Prelude shared by every plane script: scripts.py prepends this file to each one before loading it
-- (Redis scripts cannot include files).  It only defines local functions; it touches no key.
--
-- A license's keys are reached from its base `hl:{sN}:L<id>:` plus the suffixes fixed in keys.py:
-- 'lic', 'dev', 'live', 'fp', 's:<token>'.  All of them share the shard's hash tag with the shard's
-- deadline index and streams, so every script runs on one cluster slot.

-- Redis server time in ms: the one clock every deadline is measured with (callers' clocks drift).
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Ends one session of a license: removes it from the live set, the shard's deadline index, the
-- fingerprint map and its hash, and appends exactly one `ended` event (fields: heartline/plane/events.py).
-- A session already past its deadline is ended as 'timeout' whatever the caller asked, so history keeps
-- the true reason.  Returns 0 when the token was not live (nothing emitted: an end racing another end or
-- the reaper is harmless), 1 when ended with `reason`, 2 when ended as timeout.
local function end_session(base, license_id, token, reason, now, deadlines, events, maxlen)
  local live = base .. 'live'
  local score = redis.call('ZSCORE', live, token)
  redis.call('ZREM', deadlines, license_id .. ':' .. token)
  if not score then
    return 0
  end
  redis.call('ZREM', live, token)
  local result = 1
  if tonumber(score) <= now then
    reason = 'timeout'
    result = 2
  end
  local skey = base .. 's:' .. token
  local s = redis.call('HMGET', skey, 'd', 'f', 's', 'lh', 'n', 'v', 'ip')
  redis.call('DEL', skey)
  local fp = s[2]
  if fp and redis.call('HGET', base .. 'fp', fp) == token then
    redis.call('HDEL', base .. 'fp', fp)
  end
  redis.call('XADD', events, 'MAXLEN', '~', maxlen, '*',
    'k', 'ended', 'l', license_id, 't', token, 'd', s[1] or '', 'f', fp or '', 's', s[3] or '',
    'at', now, 'r', reason, 'n', s[5] or '0', 'lh', s[4] or '', 'v', s[6] or '', 'ip', s[7] or '')
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

