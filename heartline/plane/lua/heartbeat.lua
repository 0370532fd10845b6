-- heartbeat: keep one session alive and record the heartbeat, in one round trip.
-- KEYS: 1-4 the license's keys (lic, dev, live, ss), 5-7 the shard's keys (deadlines, events, count),
--       8 the shard's heartbeat stream, 9 the license's seat queue expiry zset (qx)
-- ARGV: 1 license id, 2 token, 3 minimum gap ms, 4 stream max length,
--       5 grace ms the session keys outlive the last write, 6 mirror interval s (the worker updates the
--       session's row in PostgreSQL from every K-th heartbeat, K = this / the license's interval; absent
--       or 0: every heartbeat)
-- Reply: {'OK', deadline ms, heartbeat interval s, offline grace s}
--        or {'HEARTBEAT_TOO_FREQUENT', retry after ms} (nothing recorded)
--        or {'SESSION_LIMIT_REACHED', sessions limit, seats in use}: the session lapsed (missed its
--        deadline), is within the license's resume grace, and no seat is free to revive it (nothing
--        recorded; it stays revivable until the grace runs out); seats held for live queue tickets are
--        not free
--        or {code}: LICENSE_NOT_CACHED (caller reloads the license and retries),
--        LICENSE_SUSPENDED / LICENSE_REVOKED / LICENSE_NOT_YET_VALID (a live session ended as
--        license_suspended), LICENSE_EXPIRED (a live session ended as license_expired) -- answered
--        whether or not the token is still live, SESSION_NOT_FOUND.
-- The heartbeat event goes to the stream in the same script, so an accepted heartbeat is always
-- recorded and a refused one never is.
local license_id, token = ARGV[1], ARGV[2]
local lk = license_keys(1)
local shard = shard_keys(5, ARGV[4])
local lic = redis.call('HMGET', lk.lic, 'status', 'valid_from_ms', 'valid_until_ms', 'interval_s',
  'timeout_s', 'offline_grace_s', 'resume_grace_s', 'sessions_limit')
if not lic[1] then
  return {'LICENSE_NOT_CACHED'}
end
local now = now_ms()
local score = redis.call('ZSCORE', lk.live, token)
-- The license's own refusal comes first: a session that suspend_license.lua (or an earlier heartbeat)
-- already ended still hears why, not a bare SESSION_NOT_FOUND.
local refusal = license_refusal(lic[1], lic[2], lic[3], now)
if refusal then
  if score and tonumber(score) > now then
    local reason = 'license_suspended'
    if refusal == 'LICENSE_EXPIRED' then
      reason = 'license_expired'
    end
    end_session(lk, license_id, token, reason, now, shard)
  end
  return {refusal}
end
if not score then
  return {'SESSION_NOT_FOUND'}
end
local resume_ms = (tonumber(lic[7]) or 0) * 1000
local lapsed = tonumber(score) <= now
if lapsed and (tonumber(score) + resume_ms <= now or redis.call('HEXISTS', lk.ss, borrow_field(token)) == 1) then
  end_session(lk, license_id, token, 'timeout', now, shard)
  return {'SESSION_NOT_FOUND'}
end

local rec = read_session(lk, token) or {d = '', s = now, lh = '', n = '0', ip = '', v = ''}
local last = tonumber(rec.lh) or tonumber(rec.s)
local gap = tonumber(ARGV[3])
if gap > 0 and last and now - last < gap then
  return {'HEARTBEAT_TOO_FREQUENT', gap - (now - last)}
end

-- A lapsed session within its resume grace comes back if a seat is free; else it stays lapsed and
-- nothing is recorded.
if lapsed then
  local in_use = seats_in_use(lk, now)
  if in_use + tickets_waiting(KEYS[9], now) >= tonumber(lic[8]) then
    return {'SESSION_LIMIT_REACHED', lic[8], in_use}
  end
  revive_session(lk, token)
end

local timeout_ms = tonumber(lic[5]) * 1000
local deadline = now + timeout_ms
-- Never shorten: a borrowed session keeps its borrow's end.
if tonumber(score) > deadline then
  deadline = tonumber(score)
end
redis.call('ZADD', lk.live, deadline, token)
index_license(lk, license_id, shard, resume_ms)
rec.lh = now
rec.n = (tonumber(rec.n) or 0) + 1
write_session(lk, token, rec)
keep_session_keys(lk, timeout_ms + resume_ms + tonumber(ARGV[5]))
-- one field 'h' = 'license id|token|device id' (heartline/plane/events.py): a third of the stream reply
-- the worker's XREADGROUP builds and parses for three fields.  The session's first and every K-th
-- heartbeat add a field 'n' = its count: the worker updates the session's mirror row only from those
-- (one row update per session every mirror interval, not per heartbeat), setting its count to the
-- plane's own.  (A worker of an earlier release reads 'h' and passes over 'n': it stores every entry.)
local packed = license_id .. '|' .. token .. '|' .. rec.d
local every = math.floor((tonumber(ARGV[6]) or 0) / (tonumber(lic[4]) or 1))
if rec.n == 1 or every <= 1 or rec.n % every == 0 then
  append_event(KEYS[8], ARGV[4], 'h', packed, 'n', rec.n)
else
  append_event(KEYS[8], ARGV[4], 'h', packed)
end
return {'OK', deadline, lic[4], lic[6] or 0}
