-- borrow: turn a live session into a borrowed seat, held until `until` whether or not the client beats.
-- KEYS: 1-4 the license's keys (lic, dev, live, ss), 5-7 the shard's keys (deadlines, events, count)
-- ARGV: 1 license id, 2 token, 3 until ms (Redis server clock), 4 stream max length,
--       5 grace ms the session keys outlive their last write
-- Reply: {'BORROWED', until ms, offline grace s, the session's fingerprint ('' if its device is not in
--        the devices cache)}
--        or {code}: LICENSE_NOT_CACHED (caller reloads the license and retries), LICENSE_SUSPENDED /
--        _REVOKED / _EXPIRED / _NOT_YET_VALID, SESSION_NOT_FOUND, BORROW_NOT_ALLOWED (the license's
--        max_borrow_s is 0), BORROW_TOO_LONG {code, latest until ms}, BORROW_IN_PAST.
-- The session keeps its seat, so borrowed seats count against the limit in the same atomic checks as
-- live ones; its deadline becomes `until` (heartbeats and resumes never shorten it), and the reaper
-- ends it then as borrow_expired.  A later borrow of the same session replaces the end.
local license_id, token = ARGV[1], ARGV[2]
local lk = license_keys(1)
local shard = shard_keys(5, ARGV[4])
local lic, now, refusal = serving_license(lk, 'max_borrow_s', 'offline_grace_s', 'resume_grace_s')
if refusal then
  return {refusal}
end
local score = redis.call('ZSCORE', lk.live, token)
if not score then
  return {'SESSION_NOT_FOUND'}
end
local resume_ms = (tonumber(lic[6]) or 0) * 1000
if tonumber(score) <= now then
  -- lapsed: not borrowable (a heartbeat or a start revives it within the resume grace)
  if tonumber(score) + resume_ms <= now then
    end_session(lk, license_id, token, 'timeout', now, shard)
  end
  return {'SESSION_NOT_FOUND'}
end
local max_ms = (tonumber(lic[4]) or 0) * 1000
if max_ms <= 0 then
  return {'BORROW_NOT_ALLOWED'}
end
local until_ms = tonumber(ARGV[3])
if until_ms <= now then
  return {'BORROW_IN_PAST'}
end
if until_ms > now + max_ms then
  return {'BORROW_TOO_LONG', now + max_ms}
end
redis.call('ZADD', lk.live, until_ms, token)
redis.call('HSET', lk.ss, borrow_field(token), until_ms)
index_license(lk, license_id, shard, resume_ms)
keep_session_keys(lk, until_ms - now + resume_ms + tonumber(ARGV[5]))
local rec = read_session(lk, token)
return {'BORROWED', until_ms, lic[5] or 0, (rec and fingerprint_of(lk, rec.d)) or ''}
