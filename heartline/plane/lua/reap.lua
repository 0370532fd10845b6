-- reap: end the expired sessions of some licenses of one shard, as timeout.
-- KEYS: 1-3 the shard's keys (deadlines, events, count), then the four keys of each license in ARGV
--       (lic, dev, live, ss), license after license
-- ARGV: 1 stream max length, 2 .. license ids (as due.lua found them)
-- Reply: number of sessions ended.
-- A session is expired once its deadline plus the license's resume grace has passed (see
-- resume_grace_ms in the prelude).  Each license is re-checked here (a heartbeat may have come between due.lua and this script): only
-- sessions past their deadline now are ended, and the license is re-indexed with its next deadline (or
-- leaves the index), so a license never stays due and the reaper's loop ends.
local shard = shard_keys(1, ARGV[1])
local now = now_ms()
local ended = 0
for i = 2, #ARGV do
  local license_id = ARGV[i]
  local lk = license_keys(4 + 4 * (i - 2))
  -- a lapsed session stays revivable for the license's resume grace (0 unless the license sets it)
  local resume_ms = resume_grace_ms(lk)
  for _, token in ipairs(redis.call('ZRANGEBYSCORE', lk.live, '-inf', now - resume_ms)) do
    if end_session(lk, license_id, token, 'timeout', now, shard) > 0 then
      ended = ended + 1
    end
  end
  index_license(lk, license_id, shard, resume_ms)
end
return ended
