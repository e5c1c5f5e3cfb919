//! The Lua scripts: every decision about a shared breaker is one atomic script, on Redis's
//! clock (`TIME`), never a replica's. Each script starts with the same prelude.
//!
//! Keys: `KEYS[1]` the state hash, `KEYS[2]` the time window hash, `KEYS[3]` the count
//! window list, `KEYS[4]` who last found every probe lease taken, `KEYS[5..]` the probe leases — all under one hash tag, so a script touches
//! one Redis Cluster slot. `ARGV[1]` how to publish and where: `PUBLISH <channel>`, or
//! `SPUBLISH <channel>` on a Redis Cluster (sharded pub/sub: the channel shares the keys'
//! hash tag, so the message stays on the slot's shard), `ARGV[2]` the keys' TTL (ms),
//! `ARGV[3]` the break durations (ms) for the 1st, 2nd, ... consecutive open, `ARGV[4]` a
//! fresh random epoch (used only if the state must be created), `ARGV[5]` the calling
//! replica's id. Script arguments start at `ARGV[6]`.
//!
//! **Epochs.** The state hash holds `e`, a random id made when the state is created: when
//! the keys are absent (a restart without persistence, `FLUSHALL`, deletion, expiry), or
//! hold something that is not a state (a wrong type, a hand-written or corrupt hash), the
//! prelude creates a closed state in a new epoch and publishes it. Replicas order states by
//! version only within one epoch. A hash written by an older version (no `e`) keeps its
//! state and gets an epoch.
//!
//! Every script answers `{state, version, remaining_ms, transitioned, reason, from,
//! corrupt, generation, lease, epoch}`, and every change of state is published as
//! `epoch|version|state|remaining_ms|reason|from|replica`.

macro_rules! script {
    ($body:expr) => {
        concat!(
            r#"
local state_key, window_key, ring_key = KEYS[1], KEYS[2], KEYS[3]
local publish_command, channel = string.match(ARGV[1], '^(%a+) (.*)$')
local ttl, replica = tonumber(ARGV[2]), ARGV[5]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local corrupt = 0
local function expect(key, kind)
  local have = redis.call('TYPE', key).ok
  if have ~= 'none' and have ~= kind then
    redis.call('DEL', key)
    corrupt = 1
  end
end
expect(state_key, 'hash')
expect(window_key, 'hash')
expect(ring_key, 'list')
local raw = redis.call('HMGET', state_key, 's', 'v', 'u', 'o', 'c', 'g', 'p', 'e', 'mt', 'ws')
local valid = {closed = true, open = true, half_open = true, isolated = true, disabled = true}
-- Integers below 1e14 only: Lua prints larger ones in exponent form, and a replica reads
-- them as unsigned 64-bit integers.
local function num(x)
  local n = tonumber(x)
  if n == nil or n < 0 or n ~= math.floor(n) or n >= 1e14 then
    if x then corrupt = 1 end
    return 0
  end
  return n
end
local st = raw[1]
local version, until_at, opens = num(raw[2]), num(raw[3]), num(raw[4])
local consec, gen, probes_ok = num(raw[5]), num(raw[6]), num(raw[7])
local epoch = raw[8]
local manual_at = num(raw[9])
local window_since = num(raw[10])
local from = st
local function break_for(n)
  local list = {}
  for v in string.gmatch(ARGV[3], '[^,]+') do list[#list + 1] = tonumber(v) end
  return list[math.min(math.max(n, 1), #list)]
end
local longest = 0
for v in string.gmatch(ARGV[3], '[^,]+') do longest = math.max(longest, tonumber(v)) end
-- A break never lasts longer than the longest this breaker is configured for.
if until_at > now + longest then until_at = now + longest end
local function save()
  redis.call('HSET', state_key, 's', st, 'v', version, 'u', until_at, 'o', opens, 'c', consec, 'g', gen, 'p', probes_ok, 'e', epoch, 'mt', manual_at, 'ws', window_since)
  redis.call('PEXPIRE', state_key, ttl)
end
local function publish(reason)
  redis.call(publish_command, channel, epoch .. '|' .. version .. '|' .. st .. '|' .. math.max(until_at - now, 0) .. '|' .. reason .. '|' .. from .. '|' .. replica)
end
local created = 0
if (not st) or (not valid[st]) or corrupt == 1 then
  -- Absent or unreadable: a new epoch, closed, with a fresh window.
  if st then corrupt = 1 end
  st, from, version, until_at, opens, consec, gen, probes_ok, manual_at, window_since = 'closed', 'closed', 0, 0, 0, 0, 0, 0, 0, 0
  epoch = ARGV[4]
  redis.call('DEL', window_key, ring_key)
  save()
  publish('created')
  created = 1
elseif (not epoch) or epoch == '' then
  -- Written by a version without epochs: keep the state, give it one.
  epoch = ARGV[4]
  save()
  publish('created')
  created = 1
else
  redis.call('PEXPIRE', state_key, ttl)
end
local function move(to, break_ms, reason)
  from = st
  st = to
  version = version + 1
  gen = gen + 1
  probes_ok = 0
  if to == 'open' then until_at = now + break_ms end
  if to == 'closed' then
    opens = 0
    consec = 0
    window_since = 0
    redis.call('DEL', window_key, ring_key)
  end
  save()
  publish(reason)
end
local function reply(transitioned, reason, lease)
  return {st, version, math.max(until_at - now, 0), transitioned, reason or '', from, corrupt, gen, lease or 0, epoch}
end
"#,
            $body
        )
    };
}

/// Reads the state (creating it in a new epoch if it is absent), and refreshes its TTL.
pub const READ: &str = script!("return reply(0)");

/// Records outcomes of calls admitted while closed, and trips the circuit when they call
/// for it. `ARGV[6]` calls that failed (not slow), `ARGV[7]` slow calls that succeeded,
/// `ARGV[16]` calls that failed and were slow, `ARGV[8]` successes as
/// `age_ms:count,...`, `ARGV[9]` consecutive-failure threshold (0 = off), `ARGV[10]` failure
/// ratio (-1 = off), `ARGV[11]` slow-call ratio (-1 = off), `ARGV[12]` minimum throughput,
/// `ARGV[13]` time-bucket width in ms (0 = count window), `ARGV[14]` count-window size,
/// `ARGV[15]` `1` when a success came before these failures (resets the consecutive count),
/// `ARGV[17]` the replicas' flush interval (ms): the ratios decide only once the window has
/// run that long, so every replica's successes are in it (failures are reported at once,
/// successes within a flush interval).
pub const RECORD: &str = script!(
    r#"
if st ~= 'closed' then return reply(0) end
local failed_only, slow_only, both = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[16])
local failures, slow = failed_only + both, slow_only + both
local calls = failed_only + slow_only + both
if window_since == 0 then window_since = now end
if ARGV[15] == '1' then consec = 0 end
consec = consec + failures
local total, fails, slows = 0, 0, 0
local bucket_ms, ring = tonumber(ARGV[13]), tonumber(ARGV[14])
if bucket_ms > 0 then
  local current = math.floor(now / bucket_ms)
  for age, count in string.gmatch(ARGV[8], '(%d+):(%d+)') do
    local e = math.floor((now - tonumber(age)) / bucket_ms)
    if e > current - 10 then redis.call('HINCRBY', window_key, e .. ':t', count) end
  end
  if calls > 0 then
    redis.call('HINCRBY', window_key, current .. ':t', calls)
    if failures > 0 then redis.call('HINCRBY', window_key, current .. ':f', failures) end
    if slow > 0 then redis.call('HINCRBY', window_key, current .. ':s', slow) end
  end
  local all = redis.call('HGETALL', window_key)
  for i = 1, #all, 2 do
    local e, kind = string.match(all[i], '^(%-?%d+):(%a)$')
    e = tonumber(e)
    if e == nil or e <= current - 10 then
      redis.call('HDEL', window_key, all[i])
    else
      local n = tonumber(all[i + 1]) or 0
      if kind == 't' then total = total + n elseif kind == 'f' then fails = fails + n else slows = slows + n end
    end
  end
  redis.call('PEXPIRE', window_key, ttl)
elseif ring > 0 then
  local succ = 0
  for _, count in string.gmatch(ARGV[8], '(%d+):(%d+)') do succ = succ + tonumber(count) end
  for i = 1, math.min(succ, ring) do redis.call('LPUSH', ring_key, 0) end
  for i = 1, math.min(failed_only, ring) do redis.call('LPUSH', ring_key, 1) end
  for i = 1, math.min(slow_only, ring) do redis.call('LPUSH', ring_key, 2) end
  for i = 1, math.min(both, ring) do redis.call('LPUSH', ring_key, 3) end
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
local threshold = tonumber(ARGV[9])
if threshold > 0 and consec >= threshold then
  reason = 'consecutive_failures'
elseif total > 0 and total >= tonumber(ARGV[12]) and now - window_since >= tonumber(ARGV[17]) then
  local fr, sr = tonumber(ARGV[10]), tonumber(ARGV[11])
  if fr >= 0 and fails / total >= fr then
    reason = 'failure_ratio'
  elseif sr >= 0 and slows / total >= sr then
    reason = 'slow_call_ratio'
  end
end
if reason then
  opens = opens + 1
  move('open', break_for(opens), reason)
  return reply(1, reason)
end
save()
return reply(0)
"#
);

/// Moves an open circuit whose break ended to half-open, and takes a probe lease for this
/// generation if one is free. A lease's value is `generation:token`, the token unique per
/// acquisition; a lease of an earlier generation counts as free. `ARGV[6]` permitted
/// probes, `ARGV[7]` lease TTL (ms), `ARGV[8]` the token, `ARGV[9]` how long a "wanted"
/// mark lives (ms).
pub const ACQUIRE: &str = script!(
    r#"
local transitioned, reason = 0, nil
if st == 'open' and now >= until_at then
  move('half_open', 0, 'break_elapsed')
  transitioned, reason = 1, 'break_elapsed'
end
if st == 'half_open' then
  local prefix = tostring(gen) .. ':'
  for i = 1, tonumber(ARGV[6]) do
    local key = KEYS[4 + i]
    local holder = redis.call('GET', key)
    if (not holder) or string.sub(holder, 1, #prefix) ~= prefix then
      redis.call('SET', key, prefix .. ARGV[8], 'PX', tonumber(ARGV[7]))
      return reply(transitioned, reason, i)
    end
  end
  -- Every lease is taken: say so, so that a holder with no call for its lease yields it.
  redis.call('SET', KEYS[4], replica, 'PX', tonumber(ARGV[9]))
end
return reply(transitioned, reason)
"#
);

/// A lease this replica holds but no call of its own has claimed: given back (by
/// compare-and-delete) if another replica found every lease taken, kept otherwise (until it
/// expires, so a replica whose calls are far apart still gets its probe). `ARGV[6]` the
/// slot, `ARGV[7]` the token, `ARGV[8]` the generation. Answers lease `1` when given back.
pub const YIELD: &str = script!(
    r#"
local wanted = redis.call('GET', KEYS[4])
local key = KEYS[4 + tonumber(ARGV[6])]
if wanted and wanted ~= replica and key and redis.call('GET', key) == ARGV[8] .. ':' .. ARGV[7] then
  redis.call('DEL', key)
  redis.call('DEL', KEYS[4])
  return reply(0, nil, 1)
end
return reply(0)
"#
);

/// A probe ended. `ARGV[6]` its lease slot, `ARGV[7]` its token, `ARGV[8]` its
/// generation, `ARGV[9]` `succeeded` or `failed`, `ARGV[10]` success threshold. (An unused
/// lease goes back through `YIELD`.) The lease is deleted only if it
/// still holds this token (compare-and-delete). A success counts only while the lease is
/// held; a failure reopens the circuit whenever its half-open period is current.
pub const PROBE: &str = script!(
    r#"
local key = KEYS[4 + tonumber(ARGV[6])]
local held = false
if key and redis.call('GET', key) == ARGV[8] .. ':' .. ARGV[7] then
  redis.call('DEL', key)
  held = true
end
local result = ARGV[9]
if st ~= 'half_open' or tostring(gen) ~= ARGV[8] then return reply(0) end
if result == 'failed' then
  opens = opens + 1
  move('open', break_for(opens), 'probe_failed')
  return reply(1, 'probe_failed')
end
if not held then return reply(0) end
probes_ok = probes_ok + 1
if probes_ok >= tonumber(ARGV[10]) then
  move('closed', 0, 'probes_succeeded')
  return reply(1, 'probes_succeeded')
end
save()
return reply(0)
"#
);

/// Manual control from any replica: `ARGV[6]` `isolated`, `closed` or `disabled`, `ARGV[7]`
/// when the operator gave it (ms since the Unix epoch, the replica's clock). The latest
/// command by that time wins: one given before the last applied one (a command that waited
/// out a partition) is dropped as `superseded`. Applied whatever the state otherwise
/// (automatic scripts never leave isolated or disabled, and only act on the state they
/// expect, so a command is never undone by a decision made before it).
pub const COMMAND: &str = script!(
    r#"
local to, at = ARGV[6], tonumber(ARGV[7])
if at < manual_at then return reply(0, 'superseded') end
manual_at = at
if to == 'closed' and st == 'closed' then
  redis.call('DEL', window_key, ring_key)
  window_since = 0
  consec = 0
  save()
  return reply(0)
end
if st == to then
  save()
  return reply(0)
end
move(to, 0, 'manual')
return reply(1, 'manual')
"#
);

/// Starts a new epoch, if the state is still the one the replica read (`ARGV[6]` epoch,
/// `ARGV[7]` version), from the newer state the replica has seen (`ARGV[8]` the state,
/// `ARGV[9]` the rest of its break in ms): a replica that finds Redis behind what it has
/// seen (a failover to a lagging replica) calls it, so that every replica adopts one state
/// and the fleet goes on from the newest it knew.
pub const REBASE: &str = script!(
    r#"
if created == 0 and epoch == ARGV[6] and tostring(version) == ARGV[7] and valid[ARGV[8]] then
  local to = ARGV[8]
  if to == 'half_open' then to = 'open' end
  epoch = ARGV[4]
  move(to, tonumber(ARGV[9]), 'rebased')
  return reply(1, 'rebased')
end
return reply(0)
"#
);
