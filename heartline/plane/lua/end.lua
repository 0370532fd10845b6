-- end: end one session of a license with a reason (client end, admin).
-- KEYS: 1-4 the license's keys (lic, dev, live, ss), 5-7 the shard's keys (deadlines, events, count)
-- ARGV: 1 license id, 2 token, 3 end reason, 4 stream max length
-- Reply: 1 when the session was live and is now ended with the reason; 0 when it was not live, or had
--        already timed out (then it is ended as timeout, which is the truth).
if end_session(license_keys(1), ARGV[1], ARGV[2], ARGV[3], now_ms(), shard_keys(5, ARGV[4])) == 1 then
  return 1
end
return 0
