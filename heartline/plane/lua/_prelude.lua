-- Prelude shared by every plane script: scripts.py prepends this file to each one before loading it
-- (Redis scripts cannot include files).  It only defines local functions; it touches no key.
--
-- Every key a script touches is declared in its KEYS (Redis Cluster routes a script by its keys, and
-- only declared keys are known to be on the node): a license's four keys come as one block
-- (license_keys), a shard's deadline index, event stream and live count as another (shard_keys).
-- They all share the shard's hash tag, so every script runs on one cluster slot
-- (tests/heartline/test_plane_keys.py holds every script to both).

-- The license's keys from KEYS[first .. first+3], in the order keys.license_keys() gives them.
local function license_keys(first)
  return {lic = KEYS[first], dev = KEYS[first + 1], live = KEYS[first + 2], ss = KEYS[first + 3]}
end

-- The shard's keys from KEYS[first .. first+2], in the order keys.shard_keys() gives them, and the
-- stream length cap that appending events to it uses.
local function shard_keys(first, maxlen)
  return {deadlines = KEYS[first], events = KEYS[first + 1], count = KEYS[first + 2], maxlen = maxlen}
end

-- Redis server time in ms: the one clock every deadline is measured with (callers' clocks drift).
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Session records are fields of the license's 'ss' hash, packed as
-- 'device id|started|last heartbeat|count|ip|client version' (the version last: it may hold '|'), with
-- started in ms since the epoch, the last heartbeat in ms after started ('' before the first) and the
-- count, all three in base 36: ~13 bytes less than decimal ms per record.  Records written before are
-- decimal (started in 13 digits, the last heartbeat in ms since the epoch) and still read: a started of
-- 12 characters or more is decimal; the next write stores the record in base 36.
-- A record stays at most RECORD_MAX bytes, Redis's default hash-max-listpack-value: one longer value
-- turns the license's whole hash from a listpack into a hashtable (~80 bytes more per session).  A
-- longer one (a full IPv6 address, a long client version) is split: 'device id|started|last
-- heartbeat|count' under the token and 'ip|client version' in field 'x:<token>' -- unless that is
-- longer than RECORD_MAX itself (then nothing keeps the hash a listpack, and the record stays whole).
local RECORD_MAX = 64
local B36 = '0123456789abcdefghijklmnopqrstuvwxyz'

local function to_b36(n)
  n = math.floor(tonumber(n) or 0)
  if n < 0 then
    return '-' .. to_b36(-n)
  end
  local digits = {}
  repeat
    local d = n % 36
    digits[#digits + 1] = string.sub(B36, d + 1, d + 1)
    n = (n - d) / 36
  until n == 0
  return string.reverse(table.concat(digits))
end

local function from_b36(text)
  if string.sub(text, 1, 1) == '-' then
    return -tonumber(string.sub(text, 2), 36)
  end
  return tonumber(text, 36)
end

local function tail_field(token)
  return 'x:' .. token
end

-- The session's record with started, last heartbeat ('' before the first) and count as numbers (ms since
-- the epoch), or nil.  `with_tail`: also the ip and client version of a split record (rec.split).
local function read_session(lk, token, with_tail)
  local raw = redis.call('HGET', lk.ss, token)
  if not raw then
    return nil
  end
  local parts = {}
  local from = 1
  for i = 1, 5 do
    local sep = string.find(raw, '|', from, true)
    if not sep then
      if i ~= 4 then
        return nil
      end
      parts[4] = string.sub(raw, from)
      from = nil
      break
    end
    parts[i] = string.sub(raw, from, sep - 1)
    from = sep + 1
  end
  local rec = {d = parts[1], ip = parts[5] or '', v = ''}
  if #parts[2] >= 12 then
    rec.s, rec.lh, rec.n = tonumber(parts[2]), tonumber(parts[3]) or '', tonumber(parts[4]) or 0
  else
    rec.s, rec.n = from_b36(parts[2]), from_b36(parts[4]) or 0
    if #parts[3] >= 12 then  -- ms since the epoch, written by a heartbeat script older than the record
      rec.lh = tonumber(parts[3])
    else
      rec.lh = parts[3] ~= '' and rec.s + from_b36(parts[3]) or ''
    end
  end
  if from then
    rec.v = string.sub(raw, from)
  else
    rec.split = true
    if with_tail then
      local tail = redis.call('HGET', lk.ss, tail_field(token)) or '|'
      local sep = string.find(tail, '|', 1, true) or #tail + 1
      rec.ip, rec.v = string.sub(tail, 1, sep - 1), string.sub(tail, sep + 1)
    end
  end
  return rec
end

local function write_session(lk, token, rec)
  local s = tonumber(rec.s) or 0
  local lh = ''
  if tonumber(rec.lh) then
    lh = to_b36(tonumber(rec.lh) - s)
  end
  local head = rec.d .. '|' .. to_b36(s) .. '|' .. lh .. '|' .. to_b36(rec.n)
  if rec.split then  -- its ip and client version are in 'x:<token>' already
    redis.call('HSET', lk.ss, token, head)
    return
  end
  local tail = rec.ip .. '|' .. rec.v
  if #head + 1 + #tail <= RECORD_MAX or #tail > RECORD_MAX then
    -- (a tail too long for a listpack value would turn the hash into a hashtable either way)
    redis.call('HSET', lk.ss, token, head .. '|' .. tail)
  else
    redis.call('HSET', lk.ss, token, head, tail_field(token), tail)
    rec.split = true
  end
end

-- The fingerprint of a device of the license: the devices hash maps fingerprint -> device id (one
-- fingerprint per device, at most 10 devices per license), read backwards.  nil when the device is not
-- in the cache (the license's cache expired or was dropped; readers of the events fill it in from
-- PostgreSQL).
local function fingerprint_of(lk, device)
  if not device or device == '' then
    return nil
  end
  local entries = redis.call('HGETALL', lk.dev)
  for i = 1, #entries, 2 do
    if entries[i + 1] == device then
      return entries[i]
    end
  end
  return nil
end

-- The device's session in the live set (lapsed ones included), or nil: a device has at most one.  Found
-- by scanning the license's session records for the device id they start with (at most 10 concurrent
-- sessions per license, so a small listpack hash); the fields that are not records ('!g', 'l:<token>',
-- 'b:<token>') are skipped.  No separate fingerprint -> token map: it cost ~67 bytes per session.
local function device_session(lk, device)
  if not device or device == '' then
    return nil
  end
  local prefix = device .. '|'
  local entries = redis.call('HGETALL', lk.ss)
  for i = 1, #entries, 2 do
    local field = entries[i]
    if string.sub(entries[i + 1], 1, #prefix) == prefix and string.byte(field, 1) ~= 33
        and not string.find(field, ':', 1, true) and redis.call('ZSCORE', lk.live, field) then
      return field
    end
  end
  return nil
end

-- The license's session keys outlive its last write by about ttl_ms (= timeout + grace), so they leave
-- Redis even if no reaper ever runs; the reaper ends sessions long before.  The expiry is only pushed
-- out once it has run down by a minute (a quarter for short TTLs), not on every heartbeat, and never
-- shortened.
local function keep_session_keys(lk, ttl_ms)
  local refresh_below = ttl_ms - math.min(60000, math.floor(ttl_ms / 4))
  for _, key in ipairs({lk.live, lk.ss}) do
    if redis.call('PTTL', key) < refresh_below then
      redis.call('PEXPIRE', key, ttl_ms)
    end
  end
end

-- Grace after a missed heartbeat (the license's resume_grace_s): a session past its deadline holds no
-- seat (seats_in_use() counts only deadlines still ahead), but it stays in the live set until deadline
-- + grace, and until then the same device may bring it back (revive) when a seat is free; after it, it
-- ends as timeout.  Scripts that have the license hash read the grace there; the others (reap, end)
-- read the copy in the session records' hash, field '!g' (ms, absent = 0), which start.lua and
-- cache_license.lua write and which lives exactly as long as the sessions it concerns.
local GRACE_FIELD = '!g'

local function resume_grace_ms(lk)
  return tonumber(redis.call('HGET', lk.ss, GRACE_FIELD) or 0)
end

-- The seats held at `now`: sessions whose deadline is still ahead (a lapsed session holds none).
local function seats_in_use(lk, now)
  return redis.call('ZCOUNT', lk.live, '(' .. now, '+inf')
end

-- A revived session's revivals so far, field 'l:<token>' of the 'ss' hash (absent until the first).
local function lapse_field(token)
  return 'l:' .. token
end

-- The shard's deadline index holds one entry per license with live sessions: the license id, scored
-- with the time its earliest session is to be ended if nothing happens (one entry per license, not per
-- session, keeps the index small): its deadline, plus the license's resume grace (`grace_ms`; nil
-- reads the copy in the 'ss' hash).
local function index_license(lk, license_id, shard, grace_ms)
  local first = redis.call('ZRANGE', lk.live, 0, 0, 'WITHSCORES')
  if first[1] then
    redis.call('ZADD', shard.deadlines, tonumber(first[2]) + (grace_ms or resume_grace_ms(lk)), license_id)
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

-- A refused start (denial analytics): one `refused` entry in the shard's event stream, written by the
-- script that refuses, so every refusal it answers is recorded and nothing else is.  Fields
-- (heartline/plane/events.py RefusalEvent): k=refused, l=license id, c=refusal code, d=device id (''
-- when the device is not activated), f=fingerprint, at=Redis time ms, o=operation ('start').
local function record_refusal(shard, license_id, code, device, fp, now)
  append_event(shard.events, shard.maxlen,
    'k', 'refused', 'l', license_id, 'c', code, 'd', device or '', 'f', fp or '', 'at', now, 'o', 'start')
end

-- A borrowed session (borrow.lua) carries a marker beside its record in the 'ss' hash: field
-- 'b:<token>' = the borrow's end in ms.  Its deadline in the live set is that end, so it holds its seat
-- (and counts against the limit) whether or not the client beats.
local function borrow_field(token)
  return 'b:' .. token
end

-- Ends one session of a license: removes it from the live set and the session records, re-indexes the
-- license, counts it off the shard's live count and appends exactly one `ended` event (fields:
-- heartline/plane/events.py).  `lk` from license_keys(), `shard` from shard_keys().  The event's
-- fingerprint is `fp` when the caller knows it, else the device's in the devices hash ('' when the
-- license's cache is gone).
-- A session already past its deadline is ended as 'timeout' whatever the caller asked (as
-- 'borrow_expired' when it was borrowed), so history keeps the true reason.  The event carries `lp`,
-- how many times the session missed its deadline (its revivals, plus this end when it is a timeout),
-- when that is not 0.  Returns 0 when the token was not live (nothing emitted: an end racing another
-- end or the reaper is harmless), 1 when ended with `reason`, 2 when ended as timeout.
local function end_session(lk, license_id, token, reason, now, shard, fp)
  local score = redis.call('ZSCORE', lk.live, token)
  local borrowed = redis.call('HDEL', lk.ss, borrow_field(token)) == 1
  local lapses = tonumber(redis.call('HGET', lk.ss, lapse_field(token)) or 0)
  if not score then
    redis.call('HDEL', lk.ss, token, lapse_field(token), tail_field(token))
    return 0
  end
  redis.call('ZREM', lk.live, token)
  index_license(lk, license_id, shard)
  redis.call('DECR', shard.count)
  local result = 1
  if tonumber(score) <= now then
    reason = 'timeout'
    if borrowed then
      reason = 'borrow_expired'
    end
    lapses = lapses + 1
    result = 2
  end
  local rec = read_session(lk, token, true) or {d = '', s = '', lh = '', n = '0', ip = '', v = ''}
  redis.call('HDEL', lk.ss, token, lapse_field(token), tail_field(token))
  fp = fp or fingerprint_of(lk, rec.d)
  if lapses > 0 then
    append_event(shard.events, shard.maxlen,
      'k', 'ended', 'l', license_id, 't', token, 'd', rec.d, 'f', fp or '', 's', rec.s,
      'at', now, 'r', reason, 'n', rec.n, 'lh', rec.lh, 'v', rec.v, 'ip', rec.ip, 'lp', lapses)
  else
    append_event(shard.events, shard.maxlen,
      'k', 'ended', 'l', license_id, 't', token, 'd', rec.d, 'f', fp or '', 's', rec.s,
      'at', now, 'r', reason, 'n', rec.n, 'lh', rec.lh, 'v', rec.v, 'ip', rec.ip)
  end
  return result
end

-- Brings a lapsed session back (see resume_grace_ms): the caller checked that a seat is free.  Counts
-- the lapse; the caller then gives it a new deadline as it would a live one.
local function revive_session(lk, token)
  redis.call('HINCRBY', lk.ss, lapse_field(token), 1)
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

-- The license check that opens the scripts granting a seat (start, borrow): the cached license's status
-- and validity plus the fields named in `...`, in one HMGET, and the Redis time.  Returns the HMGET
-- reply (1-3 status, valid_from_ms, valid_until_ms; 4 on the fields asked for), the time, and nil when
-- the license serves, else why not: LICENSE_NOT_CACHED (the caller reloads it and retries) or
-- license_refusal()'s code.
local function serving_license(lk, ...)
  local lic = redis.call('HMGET', lk.lic, 'status', 'valid_from_ms', 'valid_until_ms', ...)
  if not lic[1] then
    return lic, nil, 'LICENSE_NOT_CACHED'
  end
  local now = now_ms()
  return lic, now, license_refusal(lic[1], lic[2], lic[3], now)
end

-- The seat queue of a license (start.lua with queue): two zsets over the same members '<ticket>|<fp>'
-- (a ticket is bound to the device that took it): `q` scores them by arrival (FIFO), `qx` by the time
-- they expire unless renewed.  A ticket is live while its expiry is ahead.  Seats are granted in ticket
-- order: a start with the live ticket ranked r among live tickets (0 = head) gets a seat only when more
-- than r seats are free, any other start (or a revival) only when more seats are free than live tickets
-- wait; so no seat goes to a later arrival while an earlier live ticket waits, and the seats that free
-- are held for the head of the queue for as long as it renews.
local function queue_keys(first)
  return {q = KEYS[first], qx = KEYS[first + 1]}
end

-- Live tickets waiting, without touching the queue (heartbeat: only the expiry zset is declared there).
local function tickets_waiting(qx, now)
  return redis.call('ZCOUNT', qx, '(' .. now, '+inf')
end
