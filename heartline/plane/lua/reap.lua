-- reap: end the sessions of one shard whose deadline has passed, as timeout.
-- KEYS: 1 shard deadline index, 2 shard event stream, 3 shard live count
-- ARGV: 1 shard base 'hl:{sN}:', 2 limit: stop once this many sessions are ended (the license being
--       visited is finished, so a few more may end), 3 stream max length
-- Reply: number of sessions ended; less than the limit means the shard has no expired session left.
-- Index members are license ids scored with their earliest deadline.  Visiting a license ends all its
-- expired sessions and re-indexes it with its next deadline (or drops it), so each visit moves the
-- entry out of the due range and the loop ends.
local shard = {deadlines = KEYS[1], events = KEYS[2], count = KEYS[3], maxlen = ARGV[3]}
local now = now_ms()
local limit = tonumber(ARGV[2])
local ended = 0
while ended < limit do
  local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, 100)
  if #due == 0 then
    break
  end
  for _, license_id in ipairs(due) do
    local base = ARGV[1] .. 'L' .. license_id .. ':'
    for _, token in ipairs(redis.call('ZRANGEBYSCORE', base .. 'live', '-inf', now)) do
      if end_session(base, license_id, token, 'timeout', now, shard) > 0 then
        ended = ended + 1
      end
    end
    index_license(base, license_id, shard)
    if ended >= limit then
      break
    end
  end
end
return ended
