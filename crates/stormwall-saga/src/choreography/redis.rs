//! Redis Streams as the broker: the relay's publisher ([`RedisStreams`]) and consumer
//! groups ([`RedisSubscription`]: `XREADGROUP`, `XACK`, `XAUTOCLAIM`).
//!
//! Keys, for a topic `T` and a group `G`: the stream `T` (entries `<position>-0` from the
//! relay); `T:attempts:G` (a hash: attempts per pending entry); `T:dead:G` (a stream: the
//! group's dead letters). The group's checkpoint is Redis's own: its last-delivered id and
//! its pending entries list. For checkpoints and events to survive a Redis restart, Redis
//! must persist them (`appendonly yes`; `appendfsync always` loses nothing
//! acknowledged).

use super::consumer::{DeadLetter, Delivery, Subscription};
use super::relay::Publisher;
use super::Message;
use crate::SagaError;
use redis::aio::MultiplexedConnection;
use redis::streams::{StreamAutoClaimReply, StreamId, StreamRangeReply, StreamReadReply};
use redis::AsyncConnectionConfig;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Publishes entries `<position>-0`; a position already in the stream is skipped (the
/// relay published it before it crashed); a position below the stream's last id that is
/// not in it is refused (the stream is fed by another outbox, or the outbox was reset).
const PUBLISH: &str = r"
local added = 0
for i = 1, #ARGV, 6 do
  local id = ARGV[i] .. '-0'
  if #redis.call('XRANGE', KEYS[1], id, id) == 0 then
    local ok = redis.pcall('XADD', KEYS[1], id, 'position', ARGV[i], 'id', ARGV[i+1],
      'key', ARGV[i+2], 'kind', ARGV[i+3], 'correlation', ARGV[i+4], 'payload', ARGV[i+5])
    if type(ok) == 'table' and ok.err then
      return redis.error_reply('outbox position ' .. ARGV[i] .. ' is behind stream ' .. KEYS[1] ..
        ' (fed by another outbox, or the outbox was reset?): ' .. ok.err)
    end
    added = added + 1
  end
end
return added
";

/// Moves dead letter ARGV[1] of stream KEYS[2] back into the topic KEYS[1], for group
/// ARGV[2] only, after its last entry (`<last ms>-*`: the relay's next position stays
/// above it).
const REQUEUE: &str = r"
local entry = redis.call('XRANGE', KEYS[2], ARGV[1], ARGV[1])
if #entry == 0 then return 0 end
local fields = entry[1][2]
local info = redis.call('XINFO', 'STREAM', KEYS[1])
local last = '0-0'
for i = 1, #info, 2 do
  if info[i] == 'last-generated-id' then last = info[i + 1] end
end
local ms = string.match(last, '^(%d+)-')
local out = {}
for i = 1, #fields, 2 do
  local f = fields[i]
  if f ~= 'reason' and f ~= 'attempts' and f ~= 'receipt' and f ~= 'group' then
    table.insert(out, f)
    table.insert(out, fields[i + 1])
  end
end
table.insert(out, 'group')
table.insert(out, ARGV[2])
redis.call('XADD', KEYS[1], ms .. '-*', unpack(out))
redis.call('XDEL', KEYS[2], ARGV[1])
return 1
";

/// Renews this consumer's claim (ARGV[2]) of group ARGV[1] on each entry ARGV[3..] it
/// still owns (resetting its idle time); the entries another consumer took over.
const KEEP_ALIVE: &str = r"
local lost = {}
for i = 3, #ARGV do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if #p == 1 and p[1][2] == ARGV[2] then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
  else
    table.insert(lost, ARGV[i])
  end
end
return lost
";

fn broker(operation: &'static str) -> impl Fn(redis::RedisError) -> SagaError {
    move |e| SagaError::Broker {
        operation,
        reason: e.to_string(),
    }
}

/// A topic on Redis Streams: the [`Publisher`] of a [`Relay`](super::Relay), and the
/// factory of its consumer groups' [`RedisSubscription`]s. Clones share the connection;
/// a broken connection is replaced on the next call.
#[derive(Clone)]
pub struct RedisStreams {
    client: redis::Client,
    topic: String,
    timeout: Duration,
    connection: Arc<Mutex<Option<MultiplexedConnection>>>,
}

impl std::fmt::Debug for RedisStreams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStreams")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl RedisStreams {
    /// The stream `topic` on the Redis at `url` (`redis://127.0.0.1:6379`); connects on
    /// first use. Commands time out after 5 s.
    pub fn new(url: &str, topic: impl Into<String>) -> Result<Self, SagaError> {
        let client = redis::Client::open(url).map_err(|e| SagaError::InvalidUrl {
            url: url.to_owned(),
            reason: e.to_string(),
        })?;
        Ok(RedisStreams {
            client,
            topic: topic.into(),
            timeout: Duration::from_secs(5),
            connection: Arc::new(Mutex::new(None)),
        })
    }

    /// The topic (the stream's key).
    pub fn topic(&self) -> &str {
        &self.topic
    }

    async fn connect(
        &self,
        response_timeout: Duration,
    ) -> Result<MultiplexedConnection, SagaError> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(self.timeout)
            .set_response_timeout(response_timeout);
        self.client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(broker("connect"))
    }

    async fn connection(&self) -> Result<MultiplexedConnection, SagaError> {
        let cached = self
            .connection
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some(c) = cached {
            return Ok(c);
        }
        let c = self.connect(self.timeout).await?;
        *self.connection.lock().unwrap_or_else(|p| p.into_inner()) = Some(c.clone());
        Ok(c)
    }

    /// Forgets the connection after an error (unreachable errors only: a refused command
    /// leaves it usable).
    fn check<T>(&self, result: Result<T, redis::RedisError>) -> Result<T, redis::RedisError> {
        if let Err(e) = &result {
            if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() {
                *self.connection.lock().unwrap_or_else(|p| p.into_inner()) = None;
            }
        }
        result
    }

    /// The number of entries in the stream.
    pub async fn len(&self) -> Result<usize, SagaError> {
        let mut c = self.connection().await?;
        let r = redis::cmd("XLEN")
            .arg(&self.topic)
            .query_async(&mut c)
            .await;
        self.check(r).map_err(broker("XLEN"))
    }

    /// Whether the stream is empty (or absent).
    pub async fn is_empty(&self) -> Result<bool, SagaError> {
        Ok(self.len().await? == 0)
    }

    /// Every entry of the stream, decoded (for inspection and tests).
    pub async fn entries(&self) -> Result<Vec<Message>, SagaError> {
        let mut c = self.connection().await?;
        let r = redis::cmd("XRANGE")
            .arg(&self.topic)
            .arg("-")
            .arg("+")
            .query_async::<StreamRangeReply>(&mut c)
            .await;
        let reply = self.check(r).map_err(broker("XRANGE"))?;
        Ok(reply.ids.iter().filter_map(|e| decode(e).ok()).collect())
    }

    /// A consumer named `consumer` of group `group` (created, from the stream's first
    /// entry, if it does not exist). A consumer restarted under the same name takes its
    /// pending entries back at once; another consumer takes a dead one's after
    /// `claim_idle` (see [`RedisSubscription::claim_idle`]).
    pub fn subscribe(
        &self,
        group: impl Into<String>,
        consumer: impl Into<String>,
    ) -> RedisSubscription {
        RedisSubscription {
            streams: self.clone(),
            group: group.into(),
            consumer: consumer.into(),
            claim_idle: Duration::from_secs(30),
            block: Duration::from_secs(1),
            connection: None,
            read_own_pending: true,
            unsettled: false,
        }
    }
}

impl Publisher for RedisStreams {
    async fn publish(&self, batch: &[Message]) -> Result<(), String> {
        let mut c = self.connection().await.map_err(|e| e.to_string())?;
        let script = redis::Script::new(PUBLISH);
        let mut invocation = script.key(&self.topic);
        for m in batch {
            invocation
                .arg(m.position)
                .arg(&m.id)
                .arg(&m.stream_key)
                .arg(&m.kind)
                .arg(&m.correlation_id)
                .arg(&m.payload);
        }
        let r = invocation.invoke_async::<i64>(&mut c).await;
        self.check(r).map(|_| ()).map_err(|e| e.to_string())
    }
}

fn field(entry: &StreamId, name: &str) -> Result<String, String> {
    match entry.map.get(name) {
        Some(v) => redis::from_redis_value::<String>(v).map_err(|e| e.to_string()),
        None => Err(format!("no field {name:?}")),
    }
}

/// An entry as a message (the relay's fields).
fn decode(entry: &StreamId) -> Result<Message, String> {
    Ok(Message {
        id: field(entry, "id")?,
        position: field(entry, "position")?
            .parse()
            .map_err(|e| format!("position: {e}"))?,
        stream_key: field(entry, "key")?,
        kind: field(entry, "kind")?,
        correlation_id: field(entry, "correlation")?,
        payload: field(entry, "payload")?,
    })
}

/// One consumer of a consumer group on a Redis stream (see [`RedisStreams::subscribe`]).
/// It has its own connection (its reads block).
#[derive(Debug)]
pub struct RedisSubscription {
    streams: RedisStreams,
    group: String,
    consumer: String,
    claim_idle: Duration,
    block: Duration,
    connection: Option<MultiplexedConnection>,
    /// Set on (re)connecting and when a round left entries unacknowledged (or was not
    /// settled at all): the next receive reads this consumer's pending entries first.
    read_own_pending: bool,
    /// Whether the last receive's round is still to be settled.
    unsettled: bool,
}

impl RedisSubscription {
    /// How long a delivered entry may go without its consumer renewing its claim before
    /// another consumer of the group takes it (`XAUTOCLAIM`): the time to notice a dead
    /// consumer. A live consumer renews every `claim_idle / 3`. Default 30 s; valid ≥ 30 ms.
    pub fn claim_idle(mut self, idle: Duration) -> Self {
        self.claim_idle = idle.max(Duration::from_millis(30));
        self
    }

    /// The consumer's name.
    pub fn consumer(&self) -> &str {
        &self.consumer
    }

    fn attempts_key(&self) -> String {
        format!("{}:attempts:{}", self.streams.topic, self.group)
    }

    fn dead_key(&self) -> String {
        format!("{}:dead:{}", self.streams.topic, self.group)
    }

    /// The connection, made (and the group created) if needed.
    async fn connection(&mut self) -> Result<MultiplexedConnection, SagaError> {
        if let Some(c) = &self.connection {
            return Ok(c.clone());
        }
        let mut c = self
            .streams
            .connect(self.block + self.streams.timeout)
            .await?;
        let created = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&self.streams.topic)
            .arg(&self.group)
            .arg("0")
            .arg("MKSTREAM")
            .query_async::<()>(&mut c)
            .await;
        match created {
            Err(e) if e.code() != Some("BUSYGROUP") => return Err(broker("XGROUP CREATE")(e)),
            _ => {}
        }
        self.read_own_pending = true;
        self.connection = Some(c.clone());
        Ok(c)
    }

    /// Runs `command`; an unreachable Redis drops the connection (the next call makes a
    /// new one).
    async fn query<T: redis::FromRedisValue>(
        &mut self,
        operation: &'static str,
        command: &redis::Cmd,
    ) -> Result<T, SagaError> {
        let mut c = self.connection().await?;
        let result = command.query_async::<T>(&mut c).await;
        if let Err(e) = &result {
            if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() {
                self.connection = None;
            }
        }
        result.map_err(broker(operation))
    }

    /// Entries as deliveries; entries that are not for this group (a dead letter
    /// requeued for another group) or do not decode are acknowledged and left out.
    async fn deliveries(&mut self, entries: Vec<StreamId>) -> Result<Vec<Delivery>, SagaError> {
        let mut deliveries = Vec::with_capacity(entries.len());
        let mut skip = Vec::new();
        for entry in &entries {
            let for_other_group = field(entry, "group").is_ok_and(|g| g != self.group);
            match decode(entry) {
                Ok(message) if !for_other_group => deliveries.push(Delivery {
                    message,
                    receipt: entry.id.clone(),
                }),
                Ok(_) => skip.push(entry.id.clone()),
                Err(reason) => {
                    tracing::warn!(entry = %entry.id, %reason, "skipping an entry that is not an event");
                    skip.push(entry.id.clone());
                }
            }
        }
        if !skip.is_empty() {
            let mut ack = redis::cmd("XACK");
            ack.arg(&self.streams.topic).arg(&self.group).arg(&skip);
            self.query::<i64>("XACK", &ack).await?;
        }
        Ok(deliveries)
    }
}

impl RedisSubscription {
    async fn receive_round(&mut self, max: usize) -> Result<Vec<Delivery>, SagaError> {
        self.connection().await?;
        let topic = self.streams.topic.clone();
        // 1. This consumer's own pending entries (after a restart, or a failed handler).
        if self.read_own_pending {
            let mut read = redis::cmd("XREADGROUP");
            read.arg("GROUP").arg(&self.group).arg(&self.consumer);
            read.arg("COUNT")
                .arg(max)
                .arg("STREAMS")
                .arg(&topic)
                .arg("0");
            let reply: StreamReadReply = self.query("XREADGROUP", &read).await?;
            let entries: Vec<StreamId> = reply.keys.into_iter().flat_map(|k| k.ids).collect();
            if !entries.is_empty() {
                return self.deliveries(entries).await;
            }
            self.read_own_pending = false;
        }
        // 2. Entries of consumers that stopped renewing their claim (dead ones).
        let mut claim = redis::cmd("XAUTOCLAIM");
        claim.arg(&topic).arg(&self.group).arg(&self.consumer);
        claim
            .arg(self.claim_idle.as_millis() as u64)
            .arg("0-0")
            .arg("COUNT")
            .arg(max);
        let claimed: StreamAutoClaimReply = self.query("XAUTOCLAIM", &claim).await?;
        if !claimed.claimed.is_empty() {
            return self.deliveries(claimed.claimed).await;
        }
        // 3. New entries, waiting up to `block` for one.
        let mut read = redis::cmd("XREADGROUP");
        read.arg("GROUP").arg(&self.group).arg(&self.consumer);
        read.arg("COUNT")
            .arg(max)
            .arg("BLOCK")
            .arg(self.block.as_millis() as u64);
        read.arg("STREAMS").arg(&topic).arg(">");
        let reply: Option<StreamReadReply> = self.query("XREADGROUP", &read).await?;
        let entries = reply
            .map(|r| r.keys.into_iter().flat_map(|k| k.ids).collect())
            .unwrap_or_default();
        self.deliveries(entries).await
    }
}

impl Subscription for RedisSubscription {
    fn group(&self) -> &str {
        &self.group
    }

    async fn receive(&mut self, max: usize) -> Result<Vec<Delivery>, SagaError> {
        if std::mem::take(&mut self.unsettled) {
            // The last round's caller gave up on it: its entries are still ours.
            self.read_own_pending = true;
        }
        let deliveries = self.receive_round(max).await?;
        self.unsettled = !deliveries.is_empty();
        Ok(deliveries)
    }

    async fn begin_attempt(&mut self, delivery: &Delivery) -> Result<u32, SagaError> {
        let mut incr = redis::cmd("HINCRBY");
        incr.arg(self.attempts_key()).arg(&delivery.receipt).arg(1);
        let n: i64 = self.query("HINCRBY", &incr).await?;
        Ok(u32::try_from(n).unwrap_or(u32::MAX))
    }

    fn keep_alive_every(&self) -> Option<Duration> {
        Some(self.claim_idle / 3)
    }

    async fn keep_alive(&mut self, deliveries: &[Delivery]) -> Result<Vec<String>, SagaError> {
        let mut c = self.connection().await?;
        let script = redis::Script::new(KEEP_ALIVE);
        let mut invocation = script.key(&self.streams.topic);
        invocation.arg(&self.group).arg(&self.consumer);
        for d in deliveries {
            invocation.arg(&d.receipt);
        }
        let result = invocation.invoke_async::<Vec<String>>(&mut c).await;
        if let Err(e) = &result {
            if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() {
                self.connection = None;
            }
        }
        result.map_err(broker("XCLAIM"))
    }

    async fn settle(
        &mut self,
        acked: &[Delivery],
        dead: &[(Delivery, String, u32)],
    ) -> Result<(), SagaError> {
        let mut pipe = redis::pipe();
        pipe.atomic();
        let topic = self.streams.topic.clone();
        for (d, reason, attempts) in dead {
            let m = &d.message;
            pipe.cmd("XADD")
                .arg(self.dead_key())
                .arg("*")
                .arg(&[("position", m.position.to_string()), ("id", m.id.clone())])
                .arg(&[("key", &m.stream_key), ("kind", &m.kind)])
                .arg(&[("correlation", &m.correlation_id), ("payload", &m.payload)])
                .arg(&[
                    ("reason", reason.clone()),
                    ("attempts", attempts.to_string()),
                ])
                .arg(&[("receipt", &d.receipt)])
                .ignore();
        }
        let receipts: Vec<&str> = acked
            .iter()
            .chain(dead.iter().map(|(d, _, _)| d))
            .map(|d| d.receipt.as_str())
            .collect();
        if !receipts.is_empty() {
            pipe.cmd("XACK")
                .arg(&topic)
                .arg(&self.group)
                .arg(&receipts)
                .ignore();
            pipe.cmd("HDEL")
                .arg(self.attempts_key())
                .arg(&receipts)
                .ignore();
        }
        // Whatever was received and not settled is this consumer's to read again.
        self.read_own_pending = true;
        self.unsettled = false;
        let mut c = self.connection().await?;
        let result = pipe.query_async::<()>(&mut c).await;
        if let Err(e) = &result {
            if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() {
                self.connection = None;
            }
        }
        result.map_err(broker("XACK"))
    }

    async fn dead_letters(&mut self) -> Result<Vec<DeadLetter>, SagaError> {
        let mut range = redis::cmd("XRANGE");
        range.arg(self.dead_key()).arg("-").arg("+");
        let reply: StreamRangeReply = self.query("XRANGE", &range).await?;
        reply
            .ids
            .iter()
            .map(|entry| {
                let message = decode(entry).map_err(|reason| SagaError::Corrupt {
                    what: "dead letter",
                    id: entry.id.clone(),
                    reason,
                })?;
                Ok(DeadLetter {
                    id: entry.id.clone(),
                    message,
                    reason: field(entry, "reason").unwrap_or_default(),
                    attempts: field(entry, "attempts")
                        .ok()
                        .and_then(|a| a.parse().ok())
                        .unwrap_or(0),
                })
            })
            .collect()
    }

    async fn requeue(&mut self, id: &str) -> Result<(), SagaError> {
        let mut c = self.connection().await?;
        let moved: i64 = redis::Script::new(REQUEUE)
            .key(&self.streams.topic)
            .key(self.dead_key())
            .arg(id)
            .arg(&self.group)
            .invoke_async(&mut c)
            .await
            .map_err(broker("requeue"))?;
        if moved == 0 {
            return Err(SagaError::UnknownDeadLetter {
                group: self.group.clone(),
                id: id.to_owned(),
            });
        }
        Ok(())
    }
}
