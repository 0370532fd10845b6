-- start: start a session for a device of one license, or resume the device's live session.
-- KEYS: 1-4 the license's keys (lic, dev, live, ss), 5-7 the shard's keys (deadlines, events, count),
--       8-9 the license's seat queue (q, qx; see queue_keys in the prelude)
-- ARGV: 1 license id, 2 fingerprint, 3 token for a new session (uuid4 made by the caller),
--       4 client version, 5 client ip, 6 stream max length,
--       7 grace ms the session keys outlive the last write (memory bound if no reaper runs),
--       8 device id offered for a fingerprint missing from the devices hash ('' = none): the id of an
--         activation the caller holds uncommitted in PostgreSQL,
--       9 '1' to queue when refused for the limit, 10 the ticket the caller holds ('' = none),
--       11 the id of a new ticket (uuid4 made by the caller), 12 ms a ticket lives unless renewed,
--       13 most tickets a license's queue holds
-- Reply: {'STARTED' | 'RESUMED', token, deadline ms, heartbeat interval s, heartbeat timeout s,
--         offline grace s} (RESUMED also when the device's lapsed session is revived: resume grace)
--        or {code}: LICENSE_NOT_CACHED (caller reloads the license and retries), LICENSE_SUSPENDED,
--        LICENSE_REVOKED, LICENSE_EXPIRED, LICENSE_NOT_YET_VALID, DEVICE_NOT_ACTIVATED (caller activates
--        in PostgreSQL without committing and retries offering the device id),
--        or {'SESSION_LIMIT_REACHED', sessions limit, seats in use, tickets waiting, ticket, position}:
--        ticket and position ('' and 0 unless queued) are the caller's ticket, renewed or new, and its
--        1-based place among the live tickets.
-- Every refusal but LICENSE_NOT_CACHED and DEVICE_NOT_ACTIVATED (the caller supplies what is missing and
-- retries) appends one `refused` event (record_refusal in the prelude), except the renewal of a live
-- queue ticket.
-- Atomic, so parallel starts can never exceed the limit; no live session is ever ended to make room.
-- An offered device enters the devices hash only together with the session it starts: a refused start
-- leaves no trace in the devices hash (only its refused event), and the caller rolls its activation
-- back, so refusals never take device slots.
local license_id, fp = ARGV[1], ARGV[2]
local lk = license_keys(1)
local shard = shard_keys(5, ARGV[6])
local queue = queue_keys(8)
local lic, now, refusal = serving_license(lk, 'sessions_limit', 'interval_s', 'timeout_s', 'offline_grace_s',
  'resume_grace_s')
if refusal then
  if refusal ~= 'LICENSE_NOT_CACHED' then
    record_refusal(shard, license_id, refusal, redis.call('HGET', lk.dev, fp), fp, now)
  end
  return {refusal}
end
local grace = lic[7] or 0
local resume_ms = (tonumber(lic[8]) or 0) * 1000
local limit = tonumber(lic[4])
local device = redis.call('HGET', lk.dev, fp)
local offered = nil
if not device then
  if ARGV[8] == '' then
    return {'DEVICE_NOT_ACTIVATED'}
  end
  offered = ARGV[8]
end
-- The offered device joins the cache with the session it gets, and expires with the license hash.
local function cache_offered_device()
  redis.call('HSET', lk.dev, fp, offered)
  local ttl = redis.call('PTTL', lk.lic)
  if ttl > 0 then
    redis.call('PEXPIRE', lk.dev, ttl)
  end
  device = offered
end

-- Sessions past their deadline stop counting now (seats_in_use), not when the reaper comes by; those
-- past their resume grace too are ended here, each with its ended(timeout) event.
for _, token in ipairs(redis.call('ZRANGEBYSCORE', lk.live, '-inf', now - resume_ms)) do
  end_session(lk, license_id, token, 'timeout', now, shard)
end

-- Tickets not renewed in time leave the queue.
for _, member in ipairs(redis.call('ZRANGEBYSCORE', queue.qx, '-inf', now)) do
  redis.call('ZREM', queue.q, member)
  redis.call('ZREM', queue.qx, member)
end
local member = nil
local rank = nil
if ARGV[10] ~= '' then
  member = ARGV[10] .. '|' .. fp
  rank = redis.call('ZRANK', queue.q, member)
end
-- Tickets that come before this start: all of them, or those ahead of the caller's own.
local waiting = redis.call('ZCARD', queue.q)
local ahead = rank or waiting
local function leave_queue()
  if rank then
    redis.call('ZREM', queue.q, member)
    redis.call('ZREM', queue.qx, member)
  end
end
-- Refused for the limit: the caller's ticket is renewed (or a new one taken at the end of the queue)
-- when it asked to queue.
local function full(in_use)
  local ticket, position = '', 0
  if ARGV[9] == '1' then
    local window = tonumber(ARGV[12])
    if rank then
      ticket, position = ARGV[10], rank + 1
    elseif waiting < tonumber(ARGV[13]) then
      ticket = ARGV[11]
      member = ticket .. '|' .. fp
      local last = redis.call('ZRANGE', queue.q, -1, -1, 'WITHSCORES')
      redis.call('ZADD', queue.q, (tonumber(last[2]) or 0) + 1, member)
      waiting = waiting + 1
      position = waiting
    end
    if ticket ~= '' then
      redis.call('ZADD', queue.qx, now + window, member)
      for _, key in ipairs({queue.q, queue.qx}) do
        redis.call('PEXPIRE', key, 2 * window)
      end
    end
  end
  -- Recorded for denial analytics, except a queued device renewing its ticket: its wait was counted
  -- once, when it was refused without one.
  if not rank then
    record_refusal(shard, license_id, 'SESSION_LIMIT_REACHED', device or '', fp, now)
  end
  return {'SESSION_LIMIT_REACHED', limit, in_use, waiting, ticket, position}
end

local timeout_ms = tonumber(lic[6]) * 1000
local deadline = now + timeout_ms
-- The device's session, found by its device id in the session records (device_session in the prelude).
local current = device_session(lk, device or offered)
local current_deadline = current and redis.call('ZSCORE', lk.live, current)
if current_deadline and tonumber(current_deadline) <= now then
  -- The device's session lapsed (missed its deadline) and is within its resume grace: it comes back
  -- with its token if a seat is free; otherwise the start is refused and the session stays lapsed
  -- (the reaper ends it as timeout when the grace runs out).  A borrow that ran out does not come back.
  if redis.call('HEXISTS', lk.ss, borrow_field(current)) == 1 then
    end_session(lk, license_id, current, 'timeout', now, shard, fp)
    current_deadline = nil
  else
    local in_use = seats_in_use(lk, now)
    if limit - in_use <= ahead then
      return full(in_use)
    end
    revive_session(lk, current)
  end
end
if current_deadline then
  -- A start is a sign of life: the resumed session gets a full timeout again (a borrowed one keeps its
  -- borrow's later end).
  if offered then
    cache_offered_device()
  end
  leave_queue()
  if tonumber(current_deadline) > deadline then
    deadline = tonumber(current_deadline)
  end
  redis.call('ZADD', lk.live, deadline, current)
  index_license(lk, license_id, shard, resume_ms)
  keep_session_keys(lk, timeout_ms + resume_ms + tonumber(ARGV[7]))
  return {'RESUMED', current, deadline, lic[5], lic[6], grace}
end
local in_use = seats_in_use(lk, now)
if limit - in_use <= ahead then
  return full(in_use)
end
leave_queue()

if offered then
  cache_offered_device()
end
local token = ARGV[3]
redis.call('ZADD', lk.live, deadline, token)
index_license(lk, license_id, shard, resume_ms)
redis.call('INCR', shard.count)
write_session(lk, token, {d = device, s = now, lh = '', n = 0, ip = ARGV[5], v = ARGV[4]})
if resume_ms > 0 then
  redis.call('HSET', lk.ss, GRACE_FIELD, resume_ms)
end
keep_session_keys(lk, timeout_ms + resume_ms + tonumber(ARGV[7]))
append_event(shard.events, shard.maxlen,
  'k', 'started', 'l', license_id, 't', token, 'd', device, 'f', fp, 's', now, 'at', now,
  'n', 0, 'v', ARGV[4], 'ip', ARGV[5])
return {'STARTED', token, deadline, lic[5], lic[6], grace}
