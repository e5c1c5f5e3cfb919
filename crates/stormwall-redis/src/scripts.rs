//! The Lua scripts: every decision about a shared breaker is one atomic script, on Redis's
//! clock (`TIME`), never a replica's. Each script starts with the same prelude.
//!
//! Keys: `KEYS[1]` the state hash, `KEYS[2]` the time window hash, `KEYS[3]` the count
//! window list, `KEYS[4..]` the probe leases — all under one hash tag, so a script touches
//! one Redis Cluster slot. `ARGV[1]` the pub/sub channel, `ARGV[2]` the keys' TTL (ms),
//! `ARGV[3]` the break durations (ms) for the 1st, 2nd, ... consecutive open.
//!
//! Every script answers `{state, version, remaining_ms, transitioned, reason, from,
//! corrupt, generation, lease}`.

macro_rules! script {
    ($body:expr) => {
        concat!(
            r#"
local state_key, window_key, ring_key = KEYS[1], KEYS[2], KEYS[3]
local channel, ttl = ARGV[1], tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local raw = redis.call('HMGET', state_key, 's', 'v', 'u', 'o', 'c', 'g', 'p')
local valid = {closed = true, open = true, half_open = true, isolated = true, disabled = true}
local corrupt = 0
local st = raw[1]
if not st then st = 'closed' elseif not valid[st] then st = 'closed'; corrupt = 1 end
local function num(x)
  local n = tonumber(x)
  if n == nil then
    if x then corrupt = 1 end
    return 0
  end
  return n
end
local version, until_at, opens = num(raw[2]), num(raw[3]), num(raw[4])
local consec, gen, probes_ok = num(raw[5]), num(raw[6]), num(raw[7])
local from = st
local function break_for(n)
  local list = {}
  for v in string.gmatch(ARGV[3], '[^,]+') do list[#list + 1] = tonumber(v) end
  return list[math.min(n, #list)]
end
local function save()
  redis.call('HSET', state_key, 's', st, 'v', version, 'u', until_at, 'o', opens, 'c', consec, 'g', gen, 'p', probes_ok)
  redis.call('PEXPIRE', state_key, ttl)
end
local function move(to, break_ms)
  from = st
  st = to
  version = version + 1
  gen = gen + 1
  probes_ok = 0
  if to == 'open' then until_at = now + break_ms end
  if to == 'closed' then
    opens = 0
    consec = 0
    redis.call('DEL', window_key, ring_key)
  end
  save()
  redis.call('PUBLISH', channel, version .. '|' .. st .. '|' .. math.max(until_at - now, 0))
end
local function reply(transitioned, reason, lease)
  return {st, version, math.max(until_at - now, 0), transitioned, reason or '', from, corrupt, gen, lease or 0}
end
"#,
            $body
        )
    };
}

/// Reads the state (writes nothing).
pub const READ: &str = script!("return reply(0)");

/// Records outcomes of calls admitted while closed, and trips the circuit when they call
/// for it. `ARGV[4]` failures, `ARGV[5]` slow calls, `ARGV[6]` successes as
/// `age_ms:count,...`, `ARGV[7]` consecutive-failure threshold (0 = off), `ARGV[8]` failure
/// ratio (-1 = off), `ARGV[9]` slow-call ratio (-1 = off), `ARGV[10]` minimum throughput,
/// `ARGV[11]` time-bucket width in ms (0 = count window), `ARGV[12]` count-window size,
/// `ARGV[13]` `1` when a success came after the previous failure report.
pub const RECORD: &str = script!(
    r#"
if st ~= 'closed' then return reply(0) end
local failures, slow = tonumber(ARGV[4]), tonumber(ARGV[5])
if ARGV[13] == '1' then consec = 0 end
consec = consec + failures
local total, fails, slows = 0, 0, 0
local bucket_ms, ring = tonumber(ARGV[11]), tonumber(ARGV[12])
if bucket_ms > 0 then
  local epoch = math.floor(now / bucket_ms)
  for age, count in string.gmatch(ARGV[6], '(%d+):(%d+)') do
    local e = math.floor((now - tonumber(age)) / bucket_ms)
    if e > epoch - 10 then redis.call('HINCRBY', window_key, e .. ':t', count) end
  end
  if failures + slow > 0 then
    redis.call('HINCRBY', window_key, epoch .. ':t', 1)
    if failures > 0 then redis.call('HINCRBY', window_key, epoch .. ':f', failures) end
    if slow > 0 then redis.call('HINCRBY', window_key, epoch .. ':s', slow) end
  end
  local all = redis.call('HGETALL', window_key)
  for i = 1, #all, 2 do
    local e, kind = string.match(all[i], '^(%-?%d+):(%a)$')
    e = tonumber(e)
    if e == nil or e <= epoch - 10 then
      redis.call('HDEL', window_key, all[i])
    else
      local n = tonumber(all[i + 1]) or 0
      if kind == 't' then total = total + n elseif kind == 'f' then fails = fails + n else slows = slows + n end
    end
  end
  redis.call('PEXPIRE', window_key, ttl)
elseif ring > 0 then
  local succ = 0
  for _, count in string.gmatch(ARGV[6], '(%d+):(%d+)') do succ = succ + tonumber(count) end
  for i = 1, math.min(succ, ring) do redis.call('LPUSH', ring_key, 0) end
  if failures + slow > 0 then redis.call('LPUSH', ring_key, failures + 2 * slow) end
  redis.call('LTRIM', ring_key, 0, ring - 1)
  local all = redis.call('LRANGE', ring_key, 0, -1)
  total = #all
  for i = 1, #all do
    local v = tonumber(all[i]) or 0
    if v % 2 == 1 then fails = fails + 1 end
    if v >= 2 then slows = slows + 1 end
  end
  redis.call('PEXPIRE', ring_key, ttl)
end
local reason = nil
local threshold = tonumber(ARGV[7])
if threshold > 0 and consec >= threshold then
  reason = 'consecutive_failures'
elseif total > 0 and total >= tonumber(ARGV[10]) then
  local fr, sr = tonumber(ARGV[8]), tonumber(ARGV[9])
  if fr >= 0 and fails / total >= fr then
    reason = 'failure_ratio'
  elseif sr >= 0 and slows / total >= sr then
    reason = 'slow_call_ratio'
  end
end
if reason then
  opens = opens + 1
  move('open', break_for(opens))
  return reply(1, reason)
end
save()
return reply(0)
"#
);

/// Moves an open circuit whose break ended to half-open, and takes a probe lease for this
/// generation if one is free. `ARGV[4]` permitted probes, `ARGV[5]` lease TTL (ms).
pub const ACQUIRE: &str = script!(
    r#"
local transitioned, reason = 0, nil
if st == 'open' and now >= until_at then
  move('half_open', 0)
  transitioned, reason = 1, 'break_elapsed'
end
if st == 'half_open' then
  for i = 1, tonumber(ARGV[4]) do
    local key = KEYS[3 + i]
    local holder = redis.call('GET', key)
    if (not holder) or holder ~= tostring(gen) then
      redis.call('SET', key, gen, 'PX', tonumber(ARGV[5]))
      return reply(transitioned, reason, i)
    end
  end
end
return reply(transitioned, reason)
"#
);

/// A probe ended: `ARGV[4]` its lease, `ARGV[5]` its generation, `ARGV[6]` `1` failed,
/// `0` succeeded, `2` cancelled (gives the lease back only), `ARGV[7]` success threshold.
pub const PROBE: &str = script!(
    r#"
local lease = KEYS[3 + tonumber(ARGV[4])]
if lease and redis.call('GET', lease) == ARGV[5] then redis.call('DEL', lease) end
if ARGV[6] == '2' or st ~= 'half_open' or tostring(gen) ~= ARGV[5] then return reply(0) end
if ARGV[6] == '1' then
  opens = opens + 1
  move('open', break_for(opens))
  return reply(1, 'probe_failed')
end
probes_ok = probes_ok + 1
if probes_ok >= tonumber(ARGV[7]) then
  move('closed', 0)
  return reply(1, 'probes_succeeded')
end
save()
return reply(0)
"#
);

/// Manual control from any replica: `ARGV[4]` `isolated`, `closed` or `disabled`.
pub const COMMAND: &str = script!(
    r#"
local to = ARGV[4]
if to == 'closed' and st == 'closed' then
  redis.call('DEL', window_key, ring_key)
  consec = 0
  save()
  return reply(0)
end
if st == to then return reply(0) end
move(to, 0)
return reply(1, 'manual')
"#
);
