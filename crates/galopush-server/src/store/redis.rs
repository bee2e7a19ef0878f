//! The Redis store (`store.kind = "redis"`): login records, offline messages and the embedded
//! bus's queues in one Redis shared by several routers.
//!
//! Every key starts with `store.redis_prefix` (default `galopush:`); `<bit>` is the terminal
//! type's bit of SPEC §2 and the uid comes last, so any uid is unambiguous:
//!
//! | key | type | holds |
//! |---|---|---|
//! | `seq` | string | the store-wide counter (INCR): offline ids, push versions, queue sequences |
//! | `login:<uid>` | hash | field `<bit>` → `{"code","deviceToken","login"}` (JSON) |
//! | `push:<bit>:<uid>` | hash | the coalesced push: `count`, `body`, `version` |
//! | `callbacks:<bit>:<uid>` | list | `<id>:<body>`, oldest first |
//! | `ims:<bit>:<uid>` | list | `<id>:<flag>:<body>`, oldest first |
//! | `inbox`, `outbox` | hash | field `<seq>` → `<topic length>:<topic><body>` |
//!
//! Every write that must be atomic (the offline rules, login records, queue appends) and the
//! read of a terminal's stored messages run in one Lua script (`SCRIPT`, called by EVALSHA),
//! so several routers writing the same terminal never interleave inside a rule.
//!
//! Ordering: one task owns the command stream. Every operation becomes its Redis commands and is
//! sent to the task over a channel before the call returns (unbounded itself, bounded by its
//! callers: see [`Store`](super::Store)); the task takes everything
//! queued and sends it as one pipeline on one connection, which Redis runs in order, then answers
//! each caller. So a read sees every write called before it, dropping a write's future does not
//! cancel the write, and a burst of operations costs one round trip.

use std::fmt::Display;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use galopush_protocol::{TermMask, TermType};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::io::tcp::{TcpSettings, socket2::TcpKeepalive};
use redis::{Client, Cmd, IntoConnectionInfo, Pipeline, ServerErrorKind, Value};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use super::offline::{OfflineKey, OfflineMessage, StoredItem, StoredPush};
use super::{
    LoginRecord, Offline, OfflineLimits, OfflineWrite, QueuedMessage, Store, StoreError,
    StoreFuture, StoredKey, UserLogins, resolved,
};

/// Each connection attempt gives up after this long.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// A pipeline without an answer after this long fails (Redis stalled or unreachable).
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(3);
/// Idle connections are probed, so a vanished Redis is noticed.
const TCP_KEEPALIVE: Duration = Duration::from_secs(30);
/// Unacknowledged data on the connection for this long drops it and a new one is made.
#[cfg(target_os = "linux")]
const TCP_USER_TIMEOUT: Duration = Duration::from_secs(10);
/// Opening the store (connect, load the script) gives up after this long.
const OPEN_TIMEOUT: Duration = Duration::from_secs(5);
/// Most operations sent in one pipeline.
const MAX_BATCH: usize = 1024;

/// The store's operations that must be atomic. `ARGV[1]` names the operation.
const SCRIPT: &str = r#"
local op = ARGV[1]

-- A stored item is "<id>:<rest>".
local function split(item)
  local colon = string.find(item, ':', 1, true)
  if not colon then
    return nil, nil
  end
  return string.sub(item, 1, colon - 1), string.sub(item, colon + 1)
end

local function remove_item(list, id)
  for _, item in ipairs(redis.call('LRANGE', list, 0, -1)) do
    if split(item) == id then
      redis.call('LREM', list, 1, item)
      return
    end
  end
end

local function bound(list, max)
  if max > 0 then
    redis.call('LTRIM', list, -max, -1)
  else
    redis.call('DEL', list)
  end
end

if op == 'set_login' then
  -- KEYS: the login hash. ARGV: op, field, [record]; no record removes it.
  if ARGV[3] then
    redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
  else
    redis.call('HDEL', KEYS[1], ARGV[2])
  end
  return 1
elseif op == 'store' then
  -- KEYS: the counter, then one key per write (its push hash, callbacks or IMs list).
  -- ARGV: op, max callbacks, max IMs, then kind, flag, body per write.
  local max_callbacks, max_ims = tonumber(ARGV[2]), tonumber(ARGV[3])
  for w = 1, #KEYS - 1 do
    local key = KEYS[w + 1]
    local kind, flag, body = ARGV[3 * w + 1], ARGV[3 * w + 2], ARGV[3 * w + 3]
    local id = string.format('%d', redis.call('INCR', KEYS[1]))
    if kind == 'push' then
      local count = tonumber(redis.call('HGET', key, 'count') or '0') + 1
      if count > 4294967295 then
        count = 4294967295
      end
      redis.call('HSET', key, 'count', string.format('%d', count), 'body', body, 'version', id)
    elseif kind == 'callback' then
      local stored = false
      for _, item in ipairs(redis.call('LRANGE', key, 0, -1)) do
        local _, old = split(item)
        if old == body then
          stored = true
          break
        end
      end
      if not stored then
        redis.call('RPUSH', key, id .. ':' .. body)
        bound(key, max_callbacks)
      end
    elseif kind == 'im' then
      redis.call('RPUSH', key, id .. ':' .. flag .. ':' .. body)
      bound(key, max_ims)
    else
      return redis.error_reply('galopush: unknown offline kind ' .. tostring(kind))
    end
  end
  return 1
elseif op == 'remove' then
  -- KEYS: one key per delivered item. ARGV: op, then kind, id (or version), count per item.
  for k = 1, #KEYS do
    local key = KEYS[k]
    local kind, id, count = ARGV[3 * k - 1], ARGV[3 * k], ARGV[3 * k + 1]
    if kind == 'push' then
      local stored = redis.call('HMGET', key, 'version', 'count')
      if stored[1] == id then
        redis.call('DEL', key)
      elseif stored[1] then
        local left = tonumber(stored[2]) - tonumber(count)
        if left < 1 then
          left = 1
        end
        redis.call('HSET', key, 'count', string.format('%d', left))
      end
    else
      remove_item(key, id)
    end
  end
  return 1
elseif op == 'offline' then
  -- KEYS: push hash, callbacks list, IMs list.
  return {
    redis.call('HMGET', KEYS[1], 'count', 'body', 'version'),
    redis.call('LRANGE', KEYS[2], 0, -1),
    redis.call('LRANGE', KEYS[3], 0, -1),
  }
elseif op == 'append' then
  -- KEYS: the counter, the queue hash. ARGV: op, then one encoded message each.
  local seqs = {}
  for i = 2, #ARGV do
    local seq = redis.call('INCR', KEYS[1])
    redis.call('HSET', KEYS[2], string.format('%d', seq), ARGV[i])
    seqs[i - 1] = seq
  end
  return seqs
end
return redis.error_reply('galopush: unknown store operation ' .. tostring(op))
"#;

/// A [`Store`] in Redis.
pub struct RedisStore {
    keys: Keys,
    limits: OfflineLimits,
    /// SHA1 of [`SCRIPT`], for EVALSHA.
    script_hash: Arc<str>,
    jobs: mpsc::UnboundedSender<Job>,
}

/// The Redis commands of one operation and where their replies go.
struct Job {
    calls: Vec<Call>,
    reply: oneshot::Sender<Result<Vec<Value>, StoreError>>,
}

/// One Redis command, and whether it runs [`SCRIPT`] (the others are reads and idempotent
/// deletes, safe to send again).
struct Call {
    cmd: Cmd,
    scripted: bool,
}

#[derive(Clone, Copy)]
enum Queue {
    Inbox,
    Outbox,
}

/// The key names under the configured prefix.
struct Keys {
    prefix: String,
}

impl Keys {
    fn counter(&self) -> String {
        format!("{}seq", self.prefix)
    }

    fn login(&self, uid: &str) -> String {
        format!("{}login:{uid}", self.prefix)
    }

    fn push(&self, uid: &str, term: TermType) -> String {
        format!("{}push:{}:{uid}", self.prefix, term.bit())
    }

    fn callbacks(&self, uid: &str, term: TermType) -> String {
        format!("{}callbacks:{}:{uid}", self.prefix, term.bit())
    }

    fn ims(&self, uid: &str, term: TermType) -> String {
        format!("{}ims:{}:{uid}", self.prefix, term.bit())
    }

    fn queue(&self, queue: Queue) -> String {
        match queue {
            Queue::Inbox => format!("{}inbox", self.prefix),
            Queue::Outbox => format!("{}outbox", self.prefix),
        }
    }
}

/// A login record as stored: the JSON of the business side's `userOnlineState`.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct StoredLogin {
    code: String,
    device_token: String,
    login: bool,
}

fn corrupt(what: impl Display) -> StoreError {
    StoreError::Corrupt(format!("Redis store: {what}"))
}

fn stopped() -> StoreError {
    StoreError::Unavailable("Redis store task has stopped".into())
}

impl RedisStore {
    /// Connects to the Redis at `url` (`store.redis_url`) and keeps every key under `prefix`
    /// (`store.redis_prefix`). Fails within a few seconds if Redis does not answer.
    pub async fn open(
        url: &str,
        prefix: &str,
        limits: OfflineLimits,
    ) -> Result<RedisStore, StoreError> {
        let bad_url = |e: redis::RedisError| {
            StoreError::Unavailable(format!("store.redis_url is not a usable Redis URL: {e}"))
        };
        let info = url.into_connection_info().map_err(bad_url)?;
        // Named by address only: the URL may carry a password.
        let name: Arc<str> = Arc::from(format!("Redis at {}", info.addr()));
        let client = Client::open(info.set_tcp_settings(tcp_settings())).map_err(bad_url)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            // One attempt per batch: while Redis is down, calls fail at once instead of
            // waiting out a back-off, and the next batch tries again.
            .set_number_of_retries(0);
        let script_hash: Arc<str> = Arc::from(redis::Script::new(SCRIPT).get_hash());
        let unreachable = |e: &dyn Display| {
            StoreError::Unavailable(format!("cannot reach {name} (store.redis_url): {e}"))
        };
        let connect = async {
            let mut conn = ConnectionManager::new_with_config(client, config).await?;
            let loaded: String = script_load().query_async(&mut conn).await?;
            Ok::<_, redis::RedisError>((conn, loaded))
        };
        let (conn, loaded) = tokio::time::timeout(OPEN_TIMEOUT, connect)
            .await
            .map_err(|_| unreachable(&format!("no answer within {OPEN_TIMEOUT:?}")))?
            .map_err(|e| unreachable(&e))?;
        if loaded != *script_hash {
            return Err(unreachable(&format!(
                "SCRIPT LOAD answered {loaded}, expected {script_hash}"
            )));
        }
        let (jobs, queued) = mpsc::unbounded_channel();
        tokio::spawn(serve(conn, name, queued));
        Ok(RedisStore {
            keys: Keys {
                prefix: prefix.to_owned(),
            },
            limits,
            script_hash,
            jobs,
        })
    }

    /// Queues `calls` on the command stream now; resolves to their replies, in order.
    fn submit(
        &self,
        calls: Vec<Call>,
    ) -> impl Future<Output = Result<Vec<Value>, StoreError>> + Send + 'static {
        let (reply, done) = oneshot::channel();
        if calls.is_empty() {
            let _ = reply.send(Ok(Vec::new()));
        } else if let Err(mpsc::error::SendError(job)) = self.jobs.send(Job { calls, reply }) {
            let _ = job.reply.send(Err(stopped()));
        }
        async move { done.await.map_err(|_| stopped())? }
    }

    /// Queues a write; resolves once Redis has applied every command of it.
    fn write(&self, calls: Vec<Call>) -> StoreFuture {
        let done = self.submit(calls);
        Box::pin(async move {
            for value in done.await? {
                reply(value)?;
            }
            Ok(())
        })
    }

    /// An EVALSHA of [`SCRIPT`] for `op` on `keys`; the caller appends the other arguments.
    fn script(&self, op: &str, keys: &[String]) -> Cmd {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(&*self.script_hash).arg(keys.len());
        for key in keys {
            cmd.arg(key);
        }
        cmd.arg(op);
        cmd
    }

    fn queue_append(&self, queue: Queue, messages: Vec<(String, Bytes)>) -> StoreFuture<Vec<u64>> {
        if messages.is_empty() {
            return resolved(Ok(Vec::new()));
        }
        let mut cmd = self.script("append", &[self.keys.counter(), self.keys.queue(queue)]);
        for (topic, body) in &messages {
            cmd.arg(encode_queued(topic, body));
        }
        let done = self.submit(vec![Call {
            cmd,
            scripted: true,
        }]);
        let expected = messages.len();
        Box::pin(async move {
            let seqs = array(only(done.await?)?)?
                .into_iter()
                .map(integer)
                .collect::<Result<Vec<u64>, _>>()?;
            if seqs.len() != expected {
                return Err(corrupt(format!(
                    "queue append answered {} sequence numbers for {expected} messages",
                    seqs.len()
                )));
            }
            Ok(seqs)
        })
    }

    fn queue_remove(&self, queue: Queue, seqs: Vec<u64>) -> StoreFuture {
        if seqs.is_empty() {
            return resolved(Ok(()));
        }
        let mut cmd = redis::cmd("HDEL");
        cmd.arg(self.keys.queue(queue)).arg(seqs);
        self.write(vec![Call {
            cmd,
            scripted: false,
        }])
    }

    async fn queue_load(&self, queue: Queue) -> Result<Vec<QueuedMessage>, StoreError> {
        let mut cmd = redis::cmd("HGETALL");
        cmd.arg(self.keys.queue(queue));
        let value = only(
            self.submit(vec![Call {
                cmd,
                scripted: false,
            }])
            .await?,
        )?;
        let mut messages = hash_pairs(value)?
            .into_iter()
            .map(|(seq, value)| decode_queued(&seq, value))
            .collect::<Result<Vec<_>, _>>()?;
        messages.sort_by_key(|m| m.seq);
        Ok(messages)
    }
}

fn tcp_settings() -> TcpSettings {
    let settings = TcpSettings::default()
        .set_nodelay(true)
        .set_keepalive(TcpKeepalive::new().with_time(TCP_KEEPALIVE));
    #[cfg(target_os = "linux")]
    let settings = settings.set_user_timeout(TCP_USER_TIMEOUT);
    settings
}

fn script_load() -> Cmd {
    let mut cmd = redis::cmd("SCRIPT");
    cmd.arg("LOAD").arg(SCRIPT);
    cmd
}

/// The task owning the command stream: sends what is queued as one pipeline, answers each job.
/// Ends once the store is dropped and everything queued before has been answered.
async fn serve(
    mut conn: ConnectionManager,
    name: Arc<str>,
    mut jobs: mpsc::UnboundedReceiver<Job>,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    // Whether the last batch failed: an outage is logged when it starts and when it ends.
    let mut failing = false;
    while jobs.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let mut pipe = redis::pipe();
        let mut scripted = Vec::new();
        let mut answers = Vec::with_capacity(batch.len());
        for job in batch.drain(..) {
            answers.push((job.calls.len(), job.reply));
            for call in job.calls {
                scripted.push(call.scripted);
                pipe.add_command(call.cmd);
            }
        }
        match run(&mut conn, &pipe, &scripted).await {
            Ok(replies) => {
                if failing {
                    failing = false;
                    tracing::info!("{name} answers again");
                }
                let mut replies = replies.into_iter();
                for (n, reply) in answers {
                    let _ = reply.send(Ok(replies.by_ref().take(n).collect()));
                }
            }
            Err(e) => {
                let e = StoreError::Unavailable(format!("{name}: {e}"));
                if failing {
                    tracing::debug!(error = %e, "Redis store batch failed");
                } else {
                    failing = true;
                    tracing::warn!(error = %e, "Redis store failing; calls fail until it answers");
                }
                for (_, reply) in answers {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }
}

/// Sends one pipeline. A Redis that lost its script cache (restarted or flushed) answers
/// NOSCRIPT: the script is loaded and the commands from the first NOSCRIPT on are sent again,
/// in order, unless a script call after it did run (the cache changed during the pipeline):
/// sending those again would reorder writes, so they fail instead.
async fn run(
    conn: &mut ConnectionManager,
    pipe: &Pipeline,
    scripted: &[bool],
) -> Result<Vec<Value>, String> {
    let mut replies = send(conn, pipe).await?;
    let Some(first) = replies.iter().position(is_noscript) else {
        return Ok(replies);
    };
    let ran_later = replies[first..]
        .iter()
        .zip(&scripted[first..])
        .any(|(reply, scripted)| *scripted && !is_noscript(reply));
    if ran_later {
        return Ok(replies);
    }
    tracing::info!("Redis has lost the store script; loading it again");
    let mut again = redis::pipe();
    again.add_command(script_load());
    for cmd in pipe.cmd_iter().skip(first) {
        again.add_command(cmd.clone());
    }
    let resent = send(conn, &again).await?;
    replies.truncate(first);
    // The first reply answers SCRIPT LOAD.
    replies.extend(resent.into_iter().skip(1));
    Ok(replies)
}

async fn send(conn: &mut ConnectionManager, pipe: &Pipeline) -> Result<Vec<Value>, String> {
    let n = pipe.len();
    let replies = conn
        .send_packed_commands(pipe, 0, n)
        .await
        .map_err(|e| e.to_string())?;
    if replies.len() != n {
        return Err(format!("{} replies to {n} commands", replies.len()));
    }
    Ok(replies)
}

fn is_noscript(value: &Value) -> bool {
    matches!(value, Value::ServerError(e) if e.kind() == Some(ServerErrorKind::NoScript))
}

/// One command's reply, or the error Redis answered with.
fn reply(value: Value) -> Result<Value, StoreError> {
    match value {
        Value::ServerError(e) if e.code() == "WRONGTYPE" => Err(corrupt(e)),
        Value::ServerError(e) => Err(StoreError::Unavailable(format!("Redis: {e}"))),
        value => Ok(value),
    }
}

/// The reply of a one-command job.
fn only(replies: Vec<Value>) -> Result<Value, StoreError> {
    let mut replies = replies.into_iter();
    match (replies.next(), replies.next()) {
        (Some(value), None) => reply(value),
        _ => Err(corrupt("expected exactly one reply")),
    }
}

fn array(value: Value) -> Result<Vec<Value>, StoreError> {
    match value {
        Value::Array(values) | Value::Set(values) => Ok(values),
        Value::Nil => Ok(Vec::new()),
        _ => Err(corrupt("expected an array reply")),
    }
}

/// A string reply; `None` for a missing value.
fn bulk(value: Value) -> Result<Option<Vec<u8>>, StoreError> {
    match value {
        Value::Nil | Value::Boolean(false) => Ok(None),
        Value::BulkString(bytes) => Ok(Some(bytes)),
        Value::SimpleString(text) => Ok(Some(text.into_bytes())),
        _ => Err(corrupt("expected a string reply")),
    }
}

fn integer(value: Value) -> Result<u64, StoreError> {
    match value {
        Value::Int(n) => u64::try_from(n).map_err(|_| corrupt(format!("negative number {n}"))),
        _ => Err(corrupt("expected an integer reply")),
    }
}

fn number<T: std::str::FromStr>(text: &[u8], what: &str) -> Result<T, StoreError> {
    std::str::from_utf8(text)
        .ok()
        .and_then(|t| t.parse().ok())
        .ok_or_else(|| corrupt(format!("{what} is not a number")))
}

/// A hash field and its value.
type HashEntry = (Vec<u8>, Vec<u8>);

/// The field-value pairs of an HGETALL reply (a flat array in RESP2, a map in RESP3).
fn hash_pairs(value: Value) -> Result<Vec<HashEntry>, StoreError> {
    let pairs: Vec<(Value, Value)> = match value {
        Value::Map(pairs) => pairs,
        Value::Array(flat) => {
            if flat.len() % 2 != 0 {
                return Err(corrupt("odd number of hash fields"));
            }
            let mut flat = flat.into_iter();
            std::iter::from_fn(|| Some((flat.next()?, flat.next()?))).collect()
        }
        Value::Nil => Vec::new(),
        _ => return Err(corrupt("expected a hash reply")),
    };
    pairs
        .into_iter()
        .map(|(field, value)| match (bulk(field)?, bulk(value)?) {
            (Some(field), Some(value)) => Ok((field, value)),
            _ => Err(corrupt("empty hash field")),
        })
        .collect()
}

fn encode_login(record: LoginRecord) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(&StoredLogin {
        code: record.code,
        device_token: record.device_token,
        login: record.login,
    })
    .map_err(|e| corrupt(format!("cannot encode login record: {e}")))
}

fn decode_login(bytes: &[u8]) -> Result<LoginRecord, StoreError> {
    let stored: StoredLogin =
        serde_json::from_slice(bytes).map_err(|e| corrupt(format!("login record: {e}")))?;
    Ok(LoginRecord {
        code: stored.code,
        device_token: stored.device_token,
        login: stored.login,
    })
}

fn decode_logins(value: Value) -> Result<UserLogins, StoreError> {
    let mut logins = UserLogins::default();
    for (field, record) in hash_pairs(value)? {
        let term = TermType::from_bit(number(&field, "login field")?)
            .ok_or_else(|| corrupt("login field is not a terminal type"))?;
        logins.set(term, Some(decode_login(&record)?));
    }
    Ok(logins)
}

/// `<id>:<rest>`, as the script stores callbacks and IMs.
fn split_item(item: Vec<u8>) -> Result<(u64, Bytes), StoreError> {
    let item = Bytes::from(item);
    let colon = item
        .iter()
        .position(|&b| b == b':')
        .ok_or_else(|| corrupt("stored item without an id"))?;
    Ok((
        number(&item[..colon], "stored item id")?,
        item.slice(colon + 1..),
    ))
}

fn decode_callback(value: Value) -> Result<StoredItem, StoreError> {
    let item = bulk(value)?.ok_or_else(|| corrupt("empty callback"))?;
    let (id, body) = split_item(item)?;
    Ok(StoredItem { id, flag: 0, body })
}

fn decode_im(value: Value) -> Result<StoredItem, StoreError> {
    let item = bulk(value)?.ok_or_else(|| corrupt("empty IM"))?;
    let (id, rest) = split_item(item)?;
    let colon = rest
        .iter()
        .position(|&b| b == b':')
        .ok_or_else(|| corrupt("stored IM without a flag"))?;
    Ok(StoredItem {
        id,
        flag: number(&rest[..colon], "stored IM flag")?,
        body: rest.slice(colon + 1..),
    })
}

fn decode_offline(value: Value) -> Result<Offline, StoreError> {
    let mut parts = array(value)?.into_iter();
    let (Some(push), Some(callbacks), Some(ims), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(corrupt("offline read answered the wrong shape"));
    };
    let mut fields = array(push)?.into_iter().map(bulk);
    let (Some(count), Some(body), Some(version)) = (fields.next(), fields.next(), fields.next())
    else {
        return Err(corrupt("push read answered the wrong shape"));
    };
    let push = match (count?, body?, version?) {
        (None, None, None) => None,
        (Some(count), Some(body), Some(version)) => Some(StoredPush {
            count: u32::try_from(number::<u64>(&count, "push count")?).unwrap_or(u32::MAX),
            body: Bytes::from(body),
            version: number(&version, "push version")?,
        }),
        _ => return Err(corrupt("push stored without its count, body or version")),
    };
    Ok(Offline {
        push,
        callbacks: array(callbacks)?
            .into_iter()
            .map(decode_callback)
            .collect::<Result<_, _>>()?,
        ims: array(ims)?
            .into_iter()
            .map(decode_im)
            .collect::<Result<_, _>>()?,
    })
}

fn encode_queued(topic: &str, body: &[u8]) -> Vec<u8> {
    let mut out = format!("{}:{topic}", topic.len()).into_bytes();
    out.extend_from_slice(body);
    out
}

fn decode_queued(seq: &[u8], value: Vec<u8>) -> Result<QueuedMessage, StoreError> {
    let seq = number(seq, "queue sequence")?;
    let value = Bytes::from(value);
    let colon = value
        .iter()
        .position(|&b| b == b':')
        .ok_or_else(|| corrupt("queued message without a topic"))?;
    let len: usize = number(&value[..colon], "queued topic length")?;
    let topic = value
        .get(colon + 1..colon + 1 + len)
        .and_then(|t| std::str::from_utf8(t).ok())
        .ok_or_else(|| corrupt("queued message topic"))?
        .to_owned();
    Ok(QueuedMessage {
        seq,
        topic,
        body: value.slice(colon + 1 + len..),
    })
}

#[async_trait]
impl Store for RedisStore {
    async fn login(&self, uid: &str, term: TermType) -> Result<Option<LoginRecord>, StoreError> {
        let mut cmd = redis::cmd("HGET");
        cmd.arg(self.keys.login(uid)).arg(term.bit());
        let value = only(
            self.submit(vec![Call {
                cmd,
                scripted: false,
            }])
            .await?,
        )?;
        bulk(value)?.map(|bytes| decode_login(&bytes)).transpose()
    }

    async fn logged_in(&self, uids: &[&str]) -> Result<Vec<TermMask>, StoreError> {
        let calls = uids
            .iter()
            .map(|uid| {
                let mut cmd = redis::cmd("HGETALL");
                cmd.arg(self.keys.login(uid));
                Call {
                    cmd,
                    scripted: false,
                }
            })
            .collect();
        let replies = self.submit(calls).await?;
        if replies.len() != uids.len() {
            return Err(corrupt("login read answered the wrong number of replies"));
        }
        replies
            .into_iter()
            .map(|value| Ok(decode_logins(reply(value)?)?.mask()))
            .collect()
    }

    fn set_login(&self, uid: &str, term: TermType, record: Option<LoginRecord>) -> StoreFuture {
        let mut cmd = self.script("set_login", &[self.keys.login(uid)]);
        cmd.arg(term.bit());
        if let Some(record) = record {
            match encode_login(record) {
                Ok(json) => cmd.arg(json),
                Err(e) => return resolved(Err(e)),
            };
        }
        self.write(vec![Call {
            cmd,
            scripted: true,
        }])
    }

    fn store_offline(&self, writes: Vec<OfflineWrite>) -> StoreFuture {
        if writes.is_empty() {
            return resolved(Ok(()));
        }
        let mut keys = Vec::with_capacity(writes.len() + 1);
        keys.push(self.keys.counter());
        for w in &writes {
            keys.push(match w.message {
                OfflineMessage::Push { .. } => self.keys.push(&w.uid, w.term),
                OfflineMessage::Callback { .. } => self.keys.callbacks(&w.uid, w.term),
                OfflineMessage::Im { .. } => self.keys.ims(&w.uid, w.term),
            });
        }
        let mut cmd = self.script("store", &keys);
        cmd.arg(self.limits.max_callbacks).arg(self.limits.max_ims);
        for w in &writes {
            let (kind, flag, body) = match &w.message {
                OfflineMessage::Push { body } => ("push", 0, body),
                OfflineMessage::Callback { body } => ("callback", 0, body),
                OfflineMessage::Im { flag, body } => ("im", *flag, body),
            };
            cmd.arg(kind).arg(flag).arg(&body[..]);
        }
        self.write(vec![Call {
            cmd,
            scripted: true,
        }])
    }

    fn offline(&self, uid: &str, term: TermType) -> StoreFuture<Offline> {
        let cmd = self.script(
            "offline",
            &[
                self.keys.push(uid, term),
                self.keys.callbacks(uid, term),
                self.keys.ims(uid, term),
            ],
        );
        let done = self.submit(vec![Call {
            cmd,
            scripted: true,
        }]);
        Box::pin(async move { decode_offline(only(done.await?)?) })
    }

    fn remove_offline(&self, keys: Vec<StoredKey>) -> StoreFuture {
        if keys.is_empty() {
            return resolved(Ok(()));
        }
        let names: Vec<String> = keys
            .iter()
            .map(|k| match k.item {
                OfflineKey::Push { .. } => self.keys.push(&k.uid, k.term),
                OfflineKey::Callback { .. } => self.keys.callbacks(&k.uid, k.term),
                OfflineKey::Im { .. } => self.keys.ims(&k.uid, k.term),
            })
            .collect();
        let mut cmd = self.script("remove", &names);
        for k in &keys {
            let (kind, id, count) = match k.item {
                OfflineKey::Push { version, count } => ("push", version, count),
                OfflineKey::Callback { id } => ("callback", id, 0),
                OfflineKey::Im { id } => ("im", id, 0),
            };
            cmd.arg(kind).arg(id).arg(count);
        }
        self.write(vec![Call {
            cmd,
            scripted: true,
        }])
    }

    fn inbox_append(&self, messages: Vec<(String, Bytes)>) -> StoreFuture<Vec<u64>> {
        self.queue_append(Queue::Inbox, messages)
    }

    fn inbox_remove(&self, seqs: Vec<u64>) -> StoreFuture {
        self.queue_remove(Queue::Inbox, seqs)
    }

    async fn inbox_load(&self) -> Result<Vec<QueuedMessage>, StoreError> {
        self.queue_load(Queue::Inbox).await
    }

    fn outbox_append(&self, topic: String, body: Bytes) -> StoreFuture<u64> {
        let done = self.queue_append(Queue::Outbox, vec![(topic, body)]);
        Box::pin(async move {
            done.await?
                .first()
                .copied()
                .ok_or_else(|| corrupt("outbox append answered no sequence number"))
        })
    }

    fn outbox_remove(&self, seq: u64) -> StoreFuture {
        self.queue_remove(Queue::Outbox, vec![seq])
    }

    async fn outbox_load(&self) -> Result<Vec<QueuedMessage>, StoreError> {
        self.queue_load(Queue::Outbox).await
    }
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;
    use std::process::Stdio;
    use std::time::Instant;

    use redis::Commands;

    use super::*;
    use crate::store::conformance;

    /// The Redis the project's tests share.
    const SHARED_REDIS: &str = "redis://127.0.0.1:6379/0";

    fn limits() -> OfflineLimits {
        OfflineLimits {
            max_callbacks: 3,
            max_ims: 2,
        }
    }

    /// A Redis a test needs is missing: outside CI the test says so and is skipped (returns
    /// `None`); with `CI=true` it fails.
    fn missing<T>(why: impl Display) -> Option<T> {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{why} (CI=true: Redis tests must run)");
        }
        eprintln!("skipping this Redis test: {why}");
        None
    }

    /// A fresh key prefix on the shared Redis; its keys are deleted when it is dropped.
    struct TestPrefix(String);

    impl TestPrefix {
        fn new() -> TestPrefix {
            TestPrefix(format!("galopush-test:{:016x}:", fastrand::u64(..)))
        }

        /// A store on this prefix, or `None` if the shared Redis does not answer (see
        /// [`missing`]).
        async fn store(&self) -> Option<RedisStore> {
            match RedisStore::open(SHARED_REDIS, &self.0, limits()).await {
                Ok(store) => Some(store),
                Err(e) => missing(format!("no Redis at 127.0.0.1:6379: {e}")),
            }
        }
    }

    /// A plain connection to `url`, to look at or spoil what the store keeps.
    async fn raw(url: &str) -> redis::aio::MultiplexedConnection {
        redis::Client::open(url)
            .expect("url")
            .get_multiplexed_async_connection()
            .await
            .expect("connect")
    }

    /// The keys under `prefix` on the shared Redis, found with SCAN.
    fn keys_under(prefix: &str) -> redis::RedisResult<(redis::Connection, Vec<String>)> {
        let mut conn = redis::Client::open(SHARED_REDIS)?
            .get_connection_with_timeout(Duration::from_secs(1))?;
        let mut keys = conn
            .scan_match(format!("{prefix}*"))?
            .collect::<redis::RedisResult<Vec<String>>>()?;
        keys.sort();
        Ok((conn, keys))
    }

    impl Drop for TestPrefix {
        fn drop(&mut self) {
            if let Ok((mut conn, keys)) = keys_under(&self.0)
                && !keys.is_empty()
            {
                let _: Result<(), _> = redis::cmd("DEL").arg(keys).query(&mut conn);
            }
        }
    }

    fn record(code: &str) -> LoginRecord {
        LoginRecord {
            code: code.into(),
            device_token: String::new(),
            login: true,
        }
    }

    fn write(uid: &str, term: TermType, message: OfflineMessage) -> OfflineWrite {
        OfflineWrite {
            uid: Arc::from(uid),
            term,
            message,
        }
    }

    fn push(body: &str) -> OfflineMessage {
        OfflineMessage::Push {
            body: Bytes::from(body.to_owned()),
        }
    }

    #[tokio::test]
    async fn redis_store_conforms() {
        let prefix = TestPrefix::new();
        let Some(store) = prefix.store().await else {
            return;
        };
        conformance::check_store(&store).await;
        // Everything lives under the prefix, and removed boxes leave no keys behind.
        let (_, keys) = keys_under(&prefix.0).expect("scan");
        let expected: Vec<String> = ["login:u1", "seq"]
            .iter()
            .map(|k| format!("{}{k}", prefix.0))
            .collect();
        assert_eq!(keys, expected);
    }

    #[tokio::test]
    async fn two_routers_on_one_prefix_share_everything() {
        let prefix = TestPrefix::new();
        let (Some(a), Some(b)) = (prefix.store().await, prefix.store().await) else {
            return;
        };
        let t = TermType::Android;
        a.set_login("u", t, Some(record("c"))).await.expect("set");
        assert_eq!(b.login("u", t).await.expect("read"), Some(record("c")));
        let logged_in = b.logged_in(&["u", "v"]).await.expect("read");
        assert_eq!(logged_in, [TermMask::from(t), TermMask(0)]);

        a.store_offline(vec![write("u", t, push("from a"))])
            .await
            .expect("store");
        b.store_offline(vec![write("u", t, push("from b"))])
            .await
            .expect("store");
        let seen_by_a = a.offline("u", t).await.expect("read");
        let pushed = seen_by_a.push.clone().expect("push");
        assert_eq!((pushed.count, &pushed.body[..]), (2, &b"from b"[..]));
        assert_eq!(b.offline("u", t).await.expect("read"), seen_by_a);

        // One counter for both: ids and versions never repeat.
        a.store_offline(vec![write(
            "u",
            t,
            OfflineMessage::Im {
                flag: 1,
                body: "im".into(),
            },
        )])
        .await
        .expect("store");
        let im = b.offline("u", t).await.expect("read").ims[0].clone();
        assert!(im.id > pushed.version);

        // b delivers what a stored; a sees it gone.
        let uid: Arc<str> = Arc::from("u");
        b.remove_offline(vec![
            StoredKey {
                uid: uid.clone(),
                term: t,
                item: OfflineKey::Push {
                    version: pushed.version,
                    count: pushed.count,
                },
            },
            StoredKey {
                uid,
                term: t,
                item: OfflineKey::Im { id: im.id },
            },
        ])
        .await
        .expect("remove");
        assert!(a.offline("u", t).await.expect("read").is_empty());

        let seqs = a
            .inbox_append(vec![("push".into(), Bytes::from("x"))])
            .await
            .expect("append");
        let seen = b.inbox_load().await.expect("load");
        assert_eq!(seen.len(), 1);
        assert_eq!((seen[0].seq, &seen[0].body[..]), (seqs[0], &b"x"[..]));
        b.inbox_remove(seqs).await.expect("remove");
        assert!(a.inbox_load().await.expect("load").is_empty());
    }

    #[tokio::test]
    async fn reads_see_writes_queued_before_them() {
        let prefix = TestPrefix::new();
        let Some(store) = prefix.store().await else {
            return;
        };
        let t = TermType::Ios;
        // Neither write is awaited, one is even dropped: both are queued at the call.
        let stored = store.store_offline(vec![write("u", t, push("p"))]);
        drop(store.set_login("u", t, Some(record("c"))));
        let read = store.offline("u", t);
        let o = read.await.expect("read");
        assert_eq!(o.push.as_ref().map(|p| p.count), Some(1));
        assert_eq!(store.login("u", t).await.expect("read"), Some(record("c")));
        stored.await.expect("durable");

        // A removal queued and not awaited is seen by the next read too.
        let version = o.push.map(|p| p.version).expect("version");
        let removed = store.remove_offline(vec![StoredKey {
            uid: Arc::from("u"),
            term: t,
            item: OfflineKey::Push { version, count: 1 },
        }]);
        assert!(store.offline("u", t).await.expect("read").is_empty());
        removed.await.expect("durable");

        // Many writes queued back to back keep their order.
        let writes: Vec<_> = (0..200)
            .map(|i| store.store_offline(vec![write("u", t, push(&format!("p{i}")))]))
            .collect();
        let o = store.offline("u", t).await.expect("read");
        let p = o.push.expect("push");
        assert_eq!((p.count, &p.body[..]), (200, &b"p199"[..]));
        for w in writes {
            w.await.expect("durable");
        }
    }

    #[tokio::test]
    async fn corrupt_data_is_reported_as_corrupt() {
        let prefix = TestPrefix::new();
        let Some(store) = prefix.store().await else {
            return;
        };
        let mut raw = raw(SHARED_REDIS).await;
        let _: () = redis::cmd("HSET")
            .arg(format!("{}login:u", prefix.0))
            .arg(1)
            .arg("not json")
            .query_async(&mut raw)
            .await
            .expect("hset");
        let _: () = redis::cmd("RPUSH")
            .arg(format!("{}callbacks:1:u", prefix.0))
            .arg("no id here")
            .query_async(&mut raw)
            .await
            .expect("rpush");
        let _: () = redis::cmd("SET")
            .arg(format!("{}ims:1:u", prefix.0))
            .arg("a string, not a list")
            .query_async(&mut raw)
            .await
            .expect("set");
        fn corrupt<T>(r: Result<T, StoreError>) -> bool {
            matches!(r, Err(StoreError::Corrupt(_)))
        }
        assert!(corrupt(store.login("u", TermType::Android).await));
        assert!(corrupt(store.logged_in(&["u"]).await));
        assert!(corrupt(store.offline("u", TermType::Android).await));
        assert!(corrupt(
            store
                .store_offline(vec![write(
                    "u",
                    TermType::Android,
                    OfflineMessage::Im {
                        flag: 0,
                        body: "x".into()
                    }
                )])
                .await
        ));
    }

    #[tokio::test]
    async fn an_unreachable_redis_fails_fast() {
        let port = {
            let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
            listener.local_addr().expect("addr").port()
        };
        let started = Instant::now();
        let result = RedisStore::open(&format!("redis://127.0.0.1:{port}/0"), "x:", limits()).await;
        match result {
            Err(StoreError::Unavailable(why)) => {
                assert!(why.contains("store.redis_url"), "{why}");
                assert!(why.contains("Redis"), "{why}");
            }
            Err(e) => panic!("expected Unavailable, got {e}"),
            Ok(_) => panic!("a closed port answered"),
        }
        assert!(started.elapsed() < Duration::from_secs(5));
        let bad = RedisStore::open("http://nowhere", "x:", limits()).await;
        assert!(
            matches!(bad, Err(StoreError::Unavailable(why)) if why.contains("store.redis_url"))
        );
    }

    /// A Redis of this test's own (appendonly, in a temporary directory), so it can be stopped
    /// and started without disturbing the shared one.
    struct OwnRedis {
        port: u16,
        dir: tempfile::TempDir,
        server: Option<tokio::process::Child>,
    }

    impl OwnRedis {
        async fn start() -> Option<OwnRedis> {
            let port = {
                let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
                listener.local_addr().expect("addr").port()
            };
            let mut own = OwnRedis {
                port,
                dir: tempfile::tempdir().expect("tempdir"),
                server: None,
            };
            match own.run().await {
                Ok(()) => Some(own),
                Err(e) => missing(format!("cannot start redis-server: {e}")),
            }
        }

        fn url(&self) -> String {
            format!("redis://127.0.0.1:{}/0", self.port)
        }

        async fn run(&mut self) -> std::io::Result<()> {
            let server = tokio::process::Command::new("redis-server")
                .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
                .args([
                    "--save",
                    "",
                    "--appendonly",
                    "yes",
                    "--appendfsync",
                    "always",
                ])
                .arg("--dir")
                .arg(self.dir.path())
                .stdout(Stdio::null())
                .kill_on_drop(true)
                .spawn()?;
            self.server = Some(server);
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                    .await
                    .is_ok()
                {
                    return Ok(());
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(std::io::Error::other(
                "redis-server did not start listening",
            ))
        }

        async fn stop(&mut self) {
            if let Some(mut server) = self.server.take() {
                server.kill().await.expect("kill our redis-server");
            }
        }
    }

    /// Retries `op` until it succeeds, for at most `within`.
    async fn eventually<T, F: Future<Output = Result<T, StoreError>>>(
        within: Duration,
        mut op: impl FnMut() -> F,
    ) -> T {
        let deadline = Instant::now() + within;
        loop {
            match op().await {
                Ok(v) => return v,
                Err(e) if Instant::now() < deadline => {
                    tracing::debug!(error = %e, "not yet");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("still failing after {within:?}: {e}"),
            }
        }
    }

    #[tokio::test]
    async fn calls_fail_fast_while_redis_is_down_and_work_again_after() {
        let Some(mut own) = OwnRedis::start().await else {
            return;
        };
        let store = RedisStore::open(&own.url(), "galopush:", limits())
            .await
            .expect("open");
        let t = TermType::Pc;
        store
            .store_offline(vec![write("u", t, push("before"))])
            .await
            .expect("store");

        own.stop().await;
        for _ in 0..3 {
            let started = Instant::now();
            let read = store.offline("u", t).await;
            assert!(
                matches!(&read, Err(StoreError::Unavailable(why)) if why.contains("Redis")),
                "{read:?}"
            );
            let written = store.store_offline(vec![write("u", t, push("lost"))]).await;
            assert!(matches!(written, Err(StoreError::Unavailable(_))));
            assert!(matches!(
                store.login("u", t).await,
                Err(StoreError::Unavailable(_))
            ));
            assert!(started.elapsed() < Duration::from_secs(5));
        }

        // The restarted Redis kept its data (appendonly) and lost its script cache: the first
        // write re-loads the script and goes through, exactly once.
        own.run().await.expect("restart redis-server");
        eventually(Duration::from_secs(10), || {
            store.store_offline(vec![write("u", t, push("after"))])
        })
        .await;
        let p = store
            .offline("u", t)
            .await
            .expect("read")
            .push
            .expect("push");
        assert_eq!((p.count, &p.body[..]), (2, &b"after"[..]));

        // A script cache flushed under a queued batch: writes and reads go through in order.
        let mut raw = raw(&own.url()).await;
        let _: () = redis::cmd("SCRIPT")
            .arg("FLUSH")
            .query_async(&mut raw)
            .await
            .expect("flush");
        let queued = store.store_offline(vec![write("u", t, push("flushed"))]);
        let read = store.offline("u", t);
        let p = read.await.expect("read").push.expect("push");
        assert_eq!((p.count, &p.body[..]), (3, &b"flushed"[..]));
        queued.await.expect("durable");
        own.stop().await;
    }

    /// Sends `signal` to our own redis-server.
    fn signal(own: &OwnRedis, signal: &str) {
        let pid = own.server.as_ref().and_then(|s| s.id()).expect("running");
        let status = std::process::Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .expect("kill");
        assert!(status.success());
    }

    #[tokio::test]
    async fn a_stalled_redis_times_out_and_is_used_again_once_it_answers() {
        let Some(mut own) = OwnRedis::start().await else {
            return;
        };
        let store = RedisStore::open(&own.url(), "galopush:", limits())
            .await
            .expect("open");
        let t = TermType::Android;
        store
            .set_login("u", t, Some(record("c")))
            .await
            .expect("set");
        signal(&own, "STOP");
        let started = Instant::now();
        let read = store.login("u", t).await;
        let waited = started.elapsed();
        signal(&own, "CONT");
        assert!(matches!(read, Err(StoreError::Unavailable(_))), "{read:?}");
        assert!(
            waited < RESPONSE_TIMEOUT + Duration::from_secs(1),
            "{waited:?}"
        );
        let read = eventually(Duration::from_secs(5), || store.login("u", t)).await;
        assert_eq!(read, Some(record("c")));
        own.stop().await;
    }

    #[test]
    fn stored_items_decode_or_are_corrupt() {
        let im = decode_im(Value::BulkString(b"7:1:a:b".to_vec())).expect("im");
        assert_eq!((im.id, im.flag, &im.body[..]), (7, 1, &b"a:b"[..]));
        let cb = decode_callback(Value::BulkString(b"8:".to_vec())).expect("callback");
        assert_eq!((cb.id, &cb.body[..]), (8, &b""[..]));
        for bad in [&b"x:1:a"[..], b"7", b"7:300:a"] {
            assert!(matches!(
                decode_im(Value::BulkString(bad.to_vec())),
                Err(StoreError::Corrupt(_))
            ));
        }
        let queued = decode_queued(b"5", encode_queued("msg:Upward", b"body:1")).expect("queued");
        assert_eq!(
            (queued.seq, queued.topic.as_str(), &queued.body[..]),
            (5, "msg:Upward", &b"body:1"[..])
        );
        assert!(decode_queued(b"5", b"99:short".to_vec()).is_err());
        assert!(decode_queued(b"five", encode_queued("t", b"")).is_err());
    }
}
