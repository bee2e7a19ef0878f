//! The Redis store (`store.kind = "redis"`): login records, offline messages and the embedded
//! bus's queues in one Redis, or one Redis Cluster, shared by several routers.
//!
//! `store.redis_url` names either
//! - one Redis, as a Redis URL: `redis://[user:password@]host[:port][/db]`, or
//! - a Redis Cluster, as `redis+cluster://[user:password@]host[:port][,host[:port]...]`: one or
//!   more of its nodes, sharing the credentials (the other nodes are found from these).
//!
//! Every key starts with `store.redis_prefix` (default `galopush:`; with a cluster it must not
//! contain `{` or `}`) and carries a hash tag, `{...}`: Redis Cluster places a key by its tag,
//! and every key one script call touches has the same one, so it is in one hash slot.
//!
//! | key | type | holds |
//! |---|---|---|
//! | `{<uid>}:login` | hash | field `<bit>` → `{"code","deviceToken","login"}` (JSON) |
//! | `{<uid>}:push:<bit>` | hash | the coalesced push: `count`, `body`, `version` |
//! | `{<uid>}:callbacks:<bit>` | list | `<id>:<body>`, oldest first |
//! | `{<uid>}:ims:<bit>` | list | `<id>:<flag>:<body>`, oldest first |
//! | `{<n>}:seq` | string | the counter (INCR) of ids and push versions for the users in `<n>`'s slot |
//! | `{inbox}:messages`, `{outbox}:messages` | hash | field `<seq>` → `<topic length>:<topic><body>` |
//! | `{inbox}:seq`, `{outbox}:seq` | string | the queue's sequence counter |
//!
//! `<bit>` is the terminal type's bit of SPEC §2; `<uid>` is the uid with `%` and `}` written
//! `%25` and `%7D` (the empty uid is `%`), so a tag never ends early; `<n>` is the smallest
//! number in the user's slot, so the user's keys and counter share the slot and a user's ids never
//! repeat ([`keys`]). The same names serve one Redis, where tags change nothing.
//!
//! Upgrading: a store written before hash tags (names `login:<uid>`, `push:<bit>:<uid>`, ...,
//! `inbox`, `outbox` and the store-wide counter `seq`) is renamed in place the first time a store
//! opens on it ([`upgrade`]); stop every router of the old version first.
//!
//! Every write that must be atomic (the offline rules, login records, queue appends) and the
//! read of a terminal's stored messages run in one Lua script (`SCRIPT`, called by EVALSHA), so
//! several routers writing the same terminal never interleave inside a rule. The other reads
//! (and HDEL) are plain commands.
//!
//! Ordering: one task owns the command stream. Every operation becomes calls, each on the keys
//! of one user (or one queue), and is sent to the task over a channel before the call returns
//! (unbounded itself, bounded by its callers: see [`Store`](super::Store)). The task takes
//! everything queued, a batch, and sends it:
//! - to one Redis, as one pipeline on one connection, which Redis runs in order;
//! - to a cluster, per hash slot: the batch's calls on that slot in call order, as one script
//!   call running them in turn (or, if all are plain, as one pipeline), to the master owning the
//!   slot; the slots' commands at once.
//!
//! The next batch goes only once every command of this one is answered. So the calls on one slot
//! run in call order, and with them every call on one user or one queue (their keys share one
//! slot). That is all a read can tell apart: it reads the keys of one slot (`logged_in` one slot
//! per user, each read after every write to its user called before it), so a read sees every
//! write called before it: what the router relies on under a user's lock (a registration takes
//! the session as live, then reads the user's stored messages; a message for the user is either
//! delivered live or its offline write is called before that read). Dropping a write's future
//! does not cancel the write, and a burst of operations costs one round trip (per node).
//!
//! Failures: a command that fails (Redis down or stalled) fails every call in it, and only those,
//! within [`RESPONSE_TIMEOUT`]. The cluster connection follows MOVED and ASK redirects and waits
//! out a slot migration or a failover within that time, sending a command again, a pipeline
//! whole: a pipeline holds plain calls only, which may run twice, and a script call runs whole
//! or, redirected, not at all, so a write never runs twice for a redirect, nor ahead of a read
//! queued before it. (While a slot migrates, a pipeline of several reads on it may fail instead:
//! ASK holds for one command.) A command sent again after its connection broke may have run
//! already, as a command that fails on one Redis may have (its bus message is then applied
//! again): writes are at-least-once either way.

#[cfg(test)]
mod cluster_tests;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
mod keys;
#[cfg(any(test, feature = "test-support"))]
pub mod test_cluster;
mod upgrade;

use std::collections::HashMap;
use std::fmt::Display;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::future::join_all;
use galopush_protocol::{TermMask, TermType};
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{MultipleNodeRoutingInfo, ResponsePolicy, RoutingInfo};
use redis::io::tcp::{TcpSettings, socket2::TcpKeepalive};
use redis::{
    Client, Cmd, ConnectionInfo, ErrorKind, IntoConnectionInfo, RedisResult, ServerErrorKind, Value,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use self::keys::{Keys, Queue};
use super::offline::{OfflineKey, OfflineMessage, StoredItem, StoredPush};
use super::{
    LoggedIn, LoginRecord, Offline, OfflineLimits, OfflineWrite, QueuedMessage, Store, StoreError,
    StoreFuture, StoredKey, resolved,
};

/// Each connection attempt gives up after this long.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// A command without an answer after this long fails (Redis stalled or unreachable); with a
/// cluster, redirects and retries included.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(3);
/// Idle connections are probed, so a vanished Redis is noticed.
const TCP_KEEPALIVE: Duration = Duration::from_secs(30);
/// Unacknowledged data on the connection for this long drops it and a new one is made.
#[cfg(target_os = "linux")]
const TCP_USER_TIMEOUT: Duration = Duration::from_secs(10);
/// Opening the store (connect, load the script) gives up after this long.
const OPEN_TIMEOUT: Duration = Duration::from_secs(5);
/// Most operations sent in one batch.
const MAX_BATCH: usize = 1024;
/// How often the cluster connection sends a command again (redirected, or while a slot moves or
/// a master fails over), all of it within [`RESPONSE_TIMEOUT`].
const CLUSTER_RETRIES: u32 = 8;
/// The least and most the cluster connection waits before sending a command again
/// (milliseconds, growing between the two).
const CLUSTER_RETRY_WAIT: (u64, u64) = (10, 500);
/// The scheme of a Redis Cluster's `store.redis_url`.
const CLUSTER_SCHEME: &str = "redis+cluster://";

/// The store's operations. One call runs one operation (ARGV: its name, its other arguments;
/// KEYS: its keys), answering its reply, or a batch of them (ARGV: `batch`, then per operation
/// its name, its number of keys, its number of other arguments and those arguments; KEYS: the
/// operations' keys in turn), answering one reply per operation: an operation that fails answers
/// its error, and the others go on.
const SCRIPT: &str = r#"
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

-- Runs one operation: its keys are KEYS[k + 1] to KEYS[k + nkeys], its other arguments
-- ARGV[a + 1] to ARGV[a + nargs]. (Offsets, not tables, and one function, not one per
-- operation: what the script builds, it builds on every call.)
local function run(op, k, nkeys, a, nargs)
  if op == 'store' then
    -- KEYS: the ids counter, then one key per write (its push hash, callbacks or IMs list).
    -- ARGV: max callbacks, max IMs, then kind, flag, body per write.
    local counter = KEYS[k + 1]
    local max_callbacks, max_ims = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
    for w = 1, nkeys - 1 do
      local key = KEYS[k + 1 + w]
      local kind, flag, body = ARGV[a + 3 * w], ARGV[a + 3 * w + 1], ARGV[a + 3 * w + 2]
      local id = string.format('%d', redis.call('INCR', counter))
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
  elseif op == 'offline' then
    -- KEYS: push hash, callbacks list, IMs list.
    return {
      redis.call('HMGET', KEYS[k + 1], 'count', 'body', 'version'),
      redis.call('LRANGE', KEYS[k + 2], 0, -1),
      redis.call('LRANGE', KEYS[k + 3], 0, -1),
    }
  elseif op == 'remove' then
    -- KEYS: one key per delivered item. ARGV: kind, id (or version), count per item.
    for i = 1, nkeys do
      local key = KEYS[k + i]
      local kind, id, count = ARGV[a + 3 * i - 2], ARGV[a + 3 * i - 1], ARGV[a + 3 * i]
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
  elseif op == 'set_login' then
    -- KEYS: the login hash. ARGV: field, [record]; no record removes it.
    if nargs > 1 then
      redis.call('HSET', KEYS[k + 1], ARGV[a + 1], ARGV[a + 2])
    else
      redis.call('HDEL', KEYS[k + 1], ARGV[a + 1])
    end
    return 1
  elseif op == 'log_in' then
    -- KEYS: the login hash. ARGV: field, record. Answers the record it replaced (nil if none).
    local replaced = redis.call('HGET', KEYS[k + 1], ARGV[a + 1])
    redis.call('HSET', KEYS[k + 1], ARGV[a + 1], ARGV[a + 2])
    return replaced
  elseif op == 'forget_token' then
    -- KEYS: the login hash. ARGV: field, token. Clears the record's deviceToken if it is still
    -- that token.
    local stored = redis.call('HGET', KEYS[k + 1], ARGV[a + 1])
    if stored then
      local record = cjson.decode(stored)
      if record.deviceToken == ARGV[a + 2] then
        record.deviceToken = ''
        redis.call('HSET', KEYS[k + 1], ARGV[a + 1], cjson.encode(record))
      end
    end
    return 1
  elseif op == 'append' then
    -- KEYS: the queue's counter, the queue hash. ARGV: one encoded message each.
    local seqs = {}
    for i = 1, nargs do
      local seq = redis.call('INCR', KEYS[k + 1])
      redis.call('HSET', KEYS[k + 2], string.format('%d', seq), ARGV[a + i])
      seqs[i] = seq
    end
    return seqs
  elseif op == 'hkeys' then
    -- The plain operations, here when they share a script call with others. KEYS: a hash.
    return redis.call('HKEYS', KEYS[k + 1])
  elseif op == 'hget' then
    -- ARGV: a field.
    return redis.call('HGET', KEYS[k + 1], ARGV[a + 1])
  elseif op == 'hgetall' then
    return redis.call('HGETALL', KEYS[k + 1])
  elseif op == 'hdel' then
    -- ARGV: the fields to delete.
    for i = 1, nargs do
      redis.call('HDEL', KEYS[k + 1], ARGV[a + i])
    end
    return 1
  elseif op == 'rename' then
    -- Upgrading (one Redis only). KEYS: a key under its old name, its new name, [the counter
    -- of its ids]. ARGV: the old store-wide counter. Answers 0 if the new name is taken
    -- (nothing done).
    local old, new, counter = KEYS[k + 1], KEYS[k + 2], KEYS[k + 3]
    if redis.call('EXISTS', old) == 0 then
      return 1
    end
    if redis.call('EXISTS', new) == 1 then
      return 0
    end
    redis.call('RENAME', old, new)
    if nkeys > 2 and tonumber(redis.call('GET', counter) or '0') < tonumber(ARGV[a + 1]) then
      redis.call('SET', counter, ARGV[a + 1])
    end
    return 1
  end
  return redis.error_reply('galopush: unknown store operation ' .. tostring(op))
end

if ARGV[1] ~= 'batch' then
  return run(ARGV[1], 0, #KEYS, 1, #ARGV - 1)
end
local replies = {}
local k, a, n = 0, 1, #ARGV
while a < n do
  local op, nkeys, nargs = ARGV[a + 1], tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
  local ok, reply = pcall(run, op, k, nkeys, a + 3, nargs)
  if not ok and not (type(reply) == 'table' and reply.err) then
    reply = redis.error_reply(tostring(reply))
  end
  replies[#replies + 1] = reply
  k, a = k + nkeys, a + 3 + nargs
end
return replies
"#;

/// A [`Store`] in Redis or a Redis Cluster.
pub struct RedisStore {
    keys: Keys,
    limits: OfflineLimits,
    jobs: mpsc::UnboundedSender<Job>,
}

/// The calls of one store operation and where their replies go.
struct Job {
    calls: Vec<Call>,
    reply: oneshot::Sender<Result<Vec<Value>, StoreError>>,
}

/// One operation of [`SCRIPT`]: its name, its keys (all in one hash slot) and its other
/// arguments. The plain ones are Redis commands of the same name, sent as themselves where they
/// may be (see [`Call::plain`]).
struct Call {
    op: &'static str,
    keys: Vec<String>,
    args: Vec<Bytes>,
}

impl Call {
    fn new(op: &'static str, keys: Vec<String>) -> Call {
        Call {
            op,
            keys,
            args: Vec::new(),
        }
    }

    fn number(mut self, n: impl Display) -> Call {
        self.args.push(Bytes::from(n.to_string()));
        self
    }

    fn bytes(mut self, bytes: impl Into<Bytes>) -> Call {
        self.args.push(bytes.into());
        self
    }

    /// Whether the operation is one Redis command that may run twice to the same effect (a
    /// read, or HDEL): sent as itself, it costs Redis less than through the script.
    fn plain(&self) -> bool {
        matches!(self.op, "hget" | "hkeys" | "hgetall" | "hdel")
    }

    /// The call as one command: itself if plain, else the script running it alone.
    fn command(&self, hash: &str) -> Cmd {
        if !self.plain() {
            return script_call(Some(hash), &[self]);
        }
        let mut cmd = redis::cmd(self.op);
        cmd.arg(&self.keys);
        for arg in &self.args {
            cmd.arg(&arg[..]);
        }
        cmd
    }

    /// The hash slot of its keys.
    fn slot(&self) -> u16 {
        self.keys
            .first()
            .map_or(0, |k| keys::key_slot(k.as_bytes()))
    }
}

/// Where the store's calls go.
enum Server {
    /// One Redis: a batch is one pipeline of its calls.
    Single(ConnectionManager),
    /// A Redis Cluster: a batch is one script call, or one pipeline of plain calls, per slot.
    Cluster(ClusterConnection),
}

impl Server {
    /// Runs `calls`, in order per slot (see the module doc); one result per call, in order.
    async fn run(&self, hash: &str, calls: &[&Call]) -> Vec<Result<Value, String>> {
        let conn = match self {
            Server::Single(conn) => {
                return spread(pipelined(conn.clone(), hash, calls).await, calls.len());
            }
            Server::Cluster(conn) => conn,
        };
        let mut slots: HashMap<u16, usize> = HashMap::new();
        let mut groups: Vec<Vec<&Call>> = Vec::new();
        let mut group_of = Vec::with_capacity(calls.len());
        for &call in calls {
            let group = *slots.entry(call.slot()).or_insert_with(|| {
                groups.push(Vec::new());
                groups.len() - 1
            });
            groups[group].push(call);
            group_of.push(group);
        }
        let answers = join_all(groups.iter().map(|g| on_slot(conn.clone(), hash, g))).await;
        let mut answers: Vec<_> = answers
            .into_iter()
            .zip(&groups)
            .map(|(answer, group)| spread(answer, group.len()).into_iter())
            .collect();
        group_of
            .into_iter()
            .map(|g| {
                answers[g]
                    .next()
                    .unwrap_or_else(|| Err("a slot's calls answered too few replies".into()))
            })
            .collect()
    }
}

/// One result per call of a command or pipeline that answered `answer`.
fn spread(answer: Result<Vec<Value>, String>, calls: usize) -> Vec<Result<Value, String>> {
    match answer {
        Ok(replies) => replies.into_iter().map(Ok).collect(),
        Err(e) => vec![Err(e); calls],
    }
}

/// A batch's calls on one slot of a cluster. Plain calls alone go as a pipeline: should the
/// cluster connection send it again (redirected while the slot moves), running some twice does
/// no harm. Anything else goes as one script call: a command runs whole or, redirected, not at
/// all, so a write never runs twice, nor ahead of the reads before it.
async fn on_slot(
    conn: ClusterConnection,
    hash: &str,
    calls: &[&Call],
) -> Result<Vec<Value>, String> {
    if calls.iter().all(|c| c.plain()) {
        let mut pipe = redis::pipe();
        for call in calls {
            pipe.add_command(call.command(hash));
        }
        send(conn, &pipe).await
    } else {
        eval(conn, hash, calls).await
    }
}

/// One Redis's calls as one pipeline, which it runs in order. A Redis that lost its script cache
/// (restarted or flushed) answers NOSCRIPT: the script is loaded and the commands from the first
/// NOSCRIPT on are sent again, in order, unless a script call after it did run (the cache changed
/// during the pipeline): sending those again would reorder writes, so they fail instead.
async fn pipelined(
    conn: ConnectionManager,
    hash: &str,
    calls: &[&Call],
) -> Result<Vec<Value>, String> {
    let mut pipe = redis::pipe();
    for call in calls {
        pipe.add_command(call.command(hash));
    }
    let mut replies = send(conn.clone(), &pipe).await?;
    let Some(first) = replies.iter().position(is_noscript) else {
        return Ok(replies);
    };
    let ran_later = replies[first..]
        .iter()
        .zip(&calls[first..])
        .any(|(reply, call)| !call.plain() && !is_noscript(reply));
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

async fn send<C: ConnectionLike + Send>(
    mut conn: C,
    pipe: &redis::Pipeline,
) -> Result<Vec<Value>, String> {
    let n = pipe.len();
    let replies = conn
        .req_packed_commands(pipe, 0, n)
        .await
        .map_err(|e| e.to_string())?;
    if replies.len() != n {
        return Err(format!("{} replies to {n} commands", replies.len()));
    }
    Ok(replies)
}

/// Runs `calls` as one script call; one reply per call (a call alone answers its own reply, an
/// error included). A Redis without the script in its cache (restarted, flushed, a node new to
/// the cluster) answers NOSCRIPT: nothing ran, and the call is sent again with the script's
/// text, which caches it.
async fn eval<C: ConnectionLike + Send>(
    mut conn: C,
    hash: &str,
    calls: &[&Call],
) -> Result<Vec<Value>, String> {
    let mut answer = conn
        .req_packed_command(&script_call(Some(hash), calls))
        .await;
    let lost = match &answer {
        Ok(value) => is_noscript(value),
        Err(e) => e.kind() == ErrorKind::Server(ServerErrorKind::NoScript),
    };
    if lost {
        tracing::info!("Redis lacks the store script; sending it again");
        answer = conn.req_packed_command(&script_call(None, calls)).await;
    }
    match answer.map_err(|e| e.to_string())? {
        reply if calls.len() == 1 => Ok(vec![reply]),
        Value::Array(replies) if replies.len() == calls.len() => Ok(replies),
        Value::Array(replies) => Err(format!(
            "the store script answered {} replies to {} operations",
            replies.len(),
            calls.len()
        )),
        Value::ServerError(e) => Err(e.to_string()),
        _ => Err("the store script answered something else than replies".into()),
    }
}

/// An EVALSHA of the script by `hash`, or without one an EVAL of its text, running `calls`: one
/// alone, several as a batch.
fn script_call(hash: Option<&str>, calls: &[&Call]) -> Cmd {
    let mut cmd = match hash {
        Some(hash) => {
            let mut cmd = redis::cmd("EVALSHA");
            cmd.arg(hash);
            cmd
        }
        None => {
            let mut cmd = redis::cmd("EVAL");
            cmd.arg(SCRIPT);
            cmd
        }
    };
    cmd.arg(calls.iter().map(|c| c.keys.len()).sum::<usize>());
    for call in calls {
        cmd.arg(&call.keys);
    }
    if let [call] = calls {
        cmd.arg(call.op);
    } else {
        cmd.arg("batch");
    }
    for call in calls {
        if calls.len() > 1 {
            cmd.arg(call.op).arg(call.keys.len()).arg(call.args.len());
        }
        for arg in &call.args {
            cmd.arg(&arg[..]);
        }
    }
    cmd
}

fn is_noscript(value: &Value) -> bool {
    matches!(value, Value::ServerError(e) if e.kind() == Some(ServerErrorKind::NoScript))
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

fn bad_url(e: impl Display) -> StoreError {
    StoreError::Unavailable(format!("store.redis_url is not a usable Redis URL: {e}"))
}

impl RedisStore {
    /// Connects to the Redis or Redis Cluster at `url` (`store.redis_url`, see the module doc)
    /// and keeps every key under `prefix` (`store.redis_prefix`). Fails within a few seconds if
    /// Redis does not answer. On one Redis, first renames keys of the scheme before hash tags.
    pub async fn open(
        url: &str,
        prefix: &str,
        limits: OfflineLimits,
    ) -> Result<RedisStore, StoreError> {
        let hash: Arc<str> = Arc::from(redis::Script::new(SCRIPT).get_hash());
        let keys = Keys::new(prefix);
        let (server, name) = match cluster_nodes(url) {
            None => {
                let (conn, name) = connect_single(url, &hash).await?;
                upgrade::upgrade(&conn, &keys, &name, &hash).await?;
                (Server::Single(conn), name)
            }
            Some(nodes) => {
                if prefix.contains(['{', '}']) {
                    return Err(StoreError::Unavailable(format!(
                        "store.redis_prefix {prefix:?} contains `{{` or `}}`, which a Redis Cluster \
                         would read as the hash tag of every key"
                    )));
                }
                let (conn, name) = connect_cluster(nodes?, &hash).await?;
                (Server::Cluster(conn), name)
            }
        };
        let (jobs, queued) = mpsc::unbounded_channel();
        tokio::spawn(serve(server, name, hash, queued));
        Ok(RedisStore { keys, limits, jobs })
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

    /// Queues a write; resolves once Redis has applied every operation of it.
    fn write(&self, calls: Vec<Call>) -> StoreFuture {
        let done = self.submit(calls);
        Box::pin(async move {
            for value in done.await? {
                reply(value)?;
            }
            Ok(())
        })
    }

    /// Queues a one-operation read; resolves to its reply.
    fn read(&self, call: Call) -> impl Future<Output = Result<Value, StoreError>> + Send + 'static {
        let done = self.submit(vec![call]);
        async move { only(done.await?) }
    }

    fn queue_append(&self, queue: Queue, messages: Vec<(String, Bytes)>) -> StoreFuture<Vec<u64>> {
        if messages.is_empty() {
            return resolved(Ok(Vec::new()));
        }
        let mut call = Call::new(
            "append",
            vec![self.keys.queue_counter(queue), self.keys.queue(queue)],
        );
        for (topic, body) in &messages {
            call = call.bytes(encode_queued(topic, body));
        }
        let done = self.read(call);
        let expected = messages.len();
        Box::pin(async move {
            let seqs = array(done.await?)?
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
        let call = seqs.into_iter().fold(
            Call::new("hdel", vec![self.keys.queue(queue)]),
            Call::number,
        );
        self.write(vec![call])
    }

    async fn queue_load(&self, queue: Queue) -> Result<Vec<QueuedMessage>, StoreError> {
        let value = self
            .read(Call::new("hgetall", vec![self.keys.queue(queue)]))
            .await?;
        let mut messages = hash_pairs(value)?
            .into_iter()
            .map(|(seq, value)| decode_queued(&seq, value))
            .collect::<Result<Vec<_>, _>>()?;
        messages.sort_by_key(|m| m.seq);
        Ok(messages)
    }
}

/// The nodes of a `redis+cluster://` URL, each as a `redis://` URL with the credentials, path
/// and query of the whole; `None` for any other URL (one Redis).
fn cluster_nodes(url: &str) -> Option<Result<Vec<ConnectionInfo>, StoreError>> {
    let rest = url.strip_prefix(CLUSTER_SCHEME)?;
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let (credentials, hosts) = match authority.rsplit_once('@') {
        Some((credentials, hosts)) => (format!("{credentials}@"), hosts),
        None => (String::new(), authority),
    };
    Some(
        hosts
            .split(',')
            .map(|host| {
                let host = host.trim();
                if host.is_empty() {
                    return Err(bad_url(format!("{CLUSTER_SCHEME} lists an empty node")));
                }
                format!("redis://{credentials}{host}{tail}")
                    .into_connection_info()
                    .map_err(bad_url)
            })
            .collect(),
    )
}

/// Connects to one Redis and loads the script.
async fn connect_single(
    url: &str,
    hash: &str,
) -> Result<(ConnectionManager, Arc<str>), StoreError> {
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
    let connect = async {
        let mut conn = ConnectionManager::new_with_config(client, config).await?;
        let loaded: String = script_load().query_async(&mut conn).await?;
        Ok::<_, redis::RedisError>((conn, loaded))
    };
    let (conn, loaded) = opened(&name, connect).await?;
    check_loaded(&name, &loaded, hash)?;
    Ok((conn, name))
}

/// Connects to a Redis Cluster and loads the script on every master.
async fn connect_cluster(
    nodes: Vec<ConnectionInfo>,
    hash: &str,
) -> Result<(ClusterConnection, Arc<str>), StoreError> {
    let addrs: Vec<String> = nodes.iter().map(|n| n.addr().to_string()).collect();
    let name: Arc<str> = Arc::from(format!("Redis Cluster at {}", addrs.join(",")));
    let client = ClusterClientBuilder::new(nodes)
        .connection_timeout(CONNECT_TIMEOUT)
        .response_timeout(RESPONSE_TIMEOUT)
        .retries(CLUSTER_RETRIES)
        .min_retry_wait(CLUSTER_RETRY_WAIT.0)
        .max_retry_wait(CLUSTER_RETRY_WAIT.1)
        .tcp_settings(tcp_settings())
        .build()
        .map_err(bad_url)?;
    let connect = async {
        let mut conn = client.get_async_connection().await?;
        let every_master = RoutingInfo::MultiNode((
            MultipleNodeRoutingInfo::AllMasters,
            Some(ResponsePolicy::AllSucceeded),
        ));
        let loaded = conn.route_command(script_load(), every_master).await?;
        Ok::<_, redis::RedisError>((conn, redis::from_redis_value::<String>(loaded)?))
    };
    let (conn, loaded) = opened(&name, connect).await?;
    check_loaded(&name, &loaded, hash)?;
    Ok((conn, name))
}

/// Waits at most [`OPEN_TIMEOUT`] for `connect`.
async fn opened<T>(
    name: &str,
    connect: impl Future<Output = RedisResult<T>>,
) -> Result<T, StoreError> {
    let unreachable = |e: &dyn Display| {
        StoreError::Unavailable(format!("cannot reach {name} (store.redis_url): {e}"))
    };
    tokio::time::timeout(OPEN_TIMEOUT, connect)
        .await
        .map_err(|_| unreachable(&format!("no answer within {OPEN_TIMEOUT:?}")))?
        .map_err(|e| unreachable(&e))
}

fn check_loaded(name: &str, loaded: &str, hash: &str) -> Result<(), StoreError> {
    if loaded == hash {
        Ok(())
    } else {
        Err(StoreError::Unavailable(format!(
            "cannot use {name} (store.redis_url): SCRIPT LOAD answered {loaded}, expected {hash}"
        )))
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

/// The task owning the command stream: sends what is queued as script calls (see the module
/// doc), answers each job. Ends once the store is dropped and everything queued before has been
/// answered.
async fn serve(
    server: Server,
    name: Arc<str>,
    hash: Arc<str>,
    mut jobs: mpsc::UnboundedReceiver<Job>,
) {
    let mut batch: Vec<Job> = Vec::with_capacity(MAX_BATCH);
    // Whether the last batch failed: an outage is logged when it starts and when it ends.
    let mut failing = false;
    while jobs.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let calls: Vec<&Call> = batch.iter().flat_map(|job| &job.calls).collect();
        let results = server.run(&hash, &calls).await;
        match results.iter().find_map(|r| r.as_ref().err()) {
            None if failing => {
                failing = false;
                tracing::info!("{name} answers again");
            }
            None => {}
            Some(e) if failing => tracing::debug!(error = %e, "{name}: Redis store batch failed"),
            Some(e) => {
                failing = true;
                tracing::warn!(error = %e, "{name}: Redis store failing; calls fail until it answers");
            }
        }
        let mut results = results.into_iter();
        for job in batch.drain(..) {
            let replies: Vec<_> = results.by_ref().take(job.calls.len()).collect();
            let replies = replies
                .into_iter()
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| StoreError::Unavailable(format!("{name}: {e}")));
            let _ = job.reply.send(replies);
        }
    }
}

/// One operation's reply, or the error Redis answered with.
fn reply(value: Value) -> Result<Value, StoreError> {
    match value {
        Value::ServerError(e) if e.code() == "WRONGTYPE" => Err(corrupt(e)),
        Value::ServerError(e) => Err(StoreError::Unavailable(format!("Redis: {e}"))),
        value => Ok(value),
    }
}

/// The reply of a one-operation job.
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

/// The terminal types of a login hash's fields.
fn decode_mask(value: Value) -> Result<TermMask, StoreError> {
    array(value)?
        .into_iter()
        .try_fold(TermMask(0), |mask, field| {
            let field = bulk(field)?.ok_or_else(|| corrupt("empty login field"))?;
            let term = TermType::from_bit(number(&field, "login field")?)
                .ok_or_else(|| corrupt("login field is not a terminal type"))?;
            Ok(mask.with(term))
        })
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
    // A length past the value (up to usize::MAX when corrupt) ends nowhere, without overflow.
    let end = (colon + 1)
        .checked_add(len)
        .filter(|&end| end <= value.len())
        .ok_or_else(|| corrupt("queued message topic"))?;
    let topic = std::str::from_utf8(&value[colon + 1..end])
        .map_err(|_| corrupt("queued message topic"))?
        .to_owned();
    Ok(QueuedMessage {
        seq,
        topic,
        body: value.slice(end..),
    })
}

#[async_trait]
impl Store for RedisStore {
    async fn login(&self, uid: &str, term: TermType) -> Result<Option<LoginRecord>, StoreError> {
        let call = Call::new("hget", vec![self.keys.login(uid)]).number(term.bit());
        let value = self.read(call).await?;
        bulk(value)?.map(|bytes| decode_login(&bytes)).transpose()
    }

    async fn logged_in(&self, uids: &[&str]) -> Result<Vec<TermMask>, StoreError> {
        let calls = uids
            .iter()
            .map(|uid| Call::new("hkeys", vec![self.keys.login(uid)]))
            .collect();
        let replies = self.submit(calls).await?;
        if replies.len() != uids.len() {
            return Err(corrupt("login read answered the wrong number of replies"));
        }
        replies
            .into_iter()
            .map(|value| decode_mask(reply(value)?))
            .collect()
    }

    fn set_login(&self, uid: &str, term: TermType, record: Option<LoginRecord>) -> StoreFuture {
        let mut call = Call::new("set_login", vec![self.keys.login(uid)]).number(term.bit());
        if let Some(record) = record {
            match encode_login(record) {
                Ok(json) => call = call.bytes(json),
                Err(e) => return resolved(Err(e)),
            }
        }
        self.write(vec![call])
    }

    fn log_in(&self, uid: &str, term: TermType, record: LoginRecord) -> StoreFuture<LoggedIn> {
        let json = match encode_login(record) {
            Ok(json) => json,
            Err(e) => return resolved(Err(e)),
        };
        let call = Call::new("log_in", vec![self.keys.login(uid)])
            .number(term.bit())
            .bytes(json);
        // Redis answers once the script ran: the new record is then as durable as Redis makes
        // any write.
        let done = self.read(call);
        Box::pin(async move {
            let replaced = bulk(done.await?)?
                .map(|bytes| decode_login(&bytes))
                .transpose()?;
            Ok(LoggedIn {
                replaced,
                durable: resolved(Ok(())),
            })
        })
    }

    fn forget_device_token(&self, uid: &str, term: TermType, token: &str) -> StoreFuture {
        let call = Call::new("forget_token", vec![self.keys.login(uid)])
            .number(term.bit())
            .bytes(token.to_owned());
        self.write(vec![call])
    }

    fn store_offline(&self, writes: Vec<OfflineWrite>) -> StoreFuture {
        // One call per run of writes to one user: its keys and its slot's counter.
        let calls = writes
            .chunk_by(|a, b| a.uid == b.uid)
            .map(|run| {
                let counter = run.first().map(|w| self.keys.ids(&w.uid));
                let boxes = run.iter().map(|w| match w.message {
                    OfflineMessage::Push { .. } => self.keys.push(&w.uid, w.term),
                    OfflineMessage::Callback { .. } => self.keys.callbacks(&w.uid, w.term),
                    OfflineMessage::Im { .. } => self.keys.ims(&w.uid, w.term),
                });
                let call = Call::new("store", counter.into_iter().chain(boxes).collect())
                    .number(self.limits.max_callbacks)
                    .number(self.limits.max_ims);
                run.iter().fold(call, |call, w| {
                    let (kind, flag, body) = match &w.message {
                        OfflineMessage::Push { body } => ("push", 0, body),
                        OfflineMessage::Callback { body } => ("callback", 0, body),
                        OfflineMessage::Im { flag, body } => ("im", *flag, body),
                    };
                    call.bytes(kind).number(flag).bytes(body.clone())
                })
            })
            .collect();
        self.write(calls)
    }

    fn offline(&self, uid: &str, term: TermType) -> StoreFuture<Offline> {
        let done = self.read(Call::new(
            "offline",
            vec![
                self.keys.push(uid, term),
                self.keys.callbacks(uid, term),
                self.keys.ims(uid, term),
            ],
        ));
        Box::pin(async move { decode_offline(done.await?) })
    }

    fn remove_offline(&self, keys: Vec<StoredKey>) -> StoreFuture {
        // One call per run of items of one user.
        let calls = keys
            .chunk_by(|a, b| a.uid == b.uid)
            .map(|run| {
                let names = run.iter().map(|k| match k.item {
                    OfflineKey::Push { .. } => self.keys.push(&k.uid, k.term),
                    OfflineKey::Callback { .. } => self.keys.callbacks(&k.uid, k.term),
                    OfflineKey::Im { .. } => self.keys.ims(&k.uid, k.term),
                });
                run.iter()
                    .fold(Call::new("remove", names.collect()), |call, k| {
                        let (kind, id, count) = match k.item {
                            OfflineKey::Push { version, count } => ("push", version, count),
                            OfflineKey::Callback { id } => ("callback", id, 0),
                            OfflineKey::Im { id } => ("im", id, 0),
                        };
                        call.bytes(kind).number(id).number(count)
                    })
            })
            .collect();
        self.write(calls)
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

    fn outbox_append(&self, messages: Vec<(String, Bytes)>) -> StoreFuture<Vec<u64>> {
        self.queue_append(Queue::Outbox, messages)
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

    pub(super) fn limits() -> OfflineLimits {
        OfflineLimits {
            max_callbacks: 3,
            max_ims: 2,
        }
    }

    /// A Redis a test needs is missing: outside CI the test says so and is skipped (returns
    /// `None`); with `CI=true` it fails.
    pub(super) fn missing<T>(why: impl Display) -> Option<T> {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{why} (CI=true: Redis tests must run)");
        }
        eprintln!("SKIPPED (this Redis test does not run): {why}");
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
    pub(super) async fn raw(url: &str) -> redis::aio::MultiplexedConnection {
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

    pub(super) fn record(code: &str) -> LoginRecord {
        LoginRecord {
            code: code.into(),
            device_token: String::new(),
            login: true,
        }
    }

    pub(super) fn write(uid: &str, term: TermType, message: OfflineMessage) -> OfflineWrite {
        OfflineWrite {
            uid: Arc::from(uid),
            term,
            message,
        }
    }

    pub(super) fn push(body: &str) -> OfflineMessage {
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
        let (_, found) = keys_under(&prefix.0).expect("scan");
        assert_eq!(found, left_after_conformance(&prefix.0));
    }

    /// The keys [`conformance::check_store`] leaves: a login record and the counters.
    pub(super) fn left_after_conformance(prefix: &str) -> Vec<String> {
        let keys = Keys::new(prefix);
        let mut left = vec![
            keys.login("u1"),
            keys.ids("u2"),
            keys.queue_counter(Queue::Inbox),
            keys.queue_counter(Queue::Outbox),
        ];
        left.sort();
        left
    }

    #[tokio::test]
    async fn logins_through_two_routers_each_see_the_record_they_replace() {
        let prefix = TestPrefix::new();
        let (Some(a), Some(b)) = (prefix.store().await, prefix.store().await) else {
            return;
        };
        let t = TermType::Ios;
        let first = a.log_in("u", t, record("c")).await.expect("log in");
        assert_eq!(first.replaced, None);
        // The business side's retry, taken by the other router: a repeat there.
        let again = b.log_in("u", t, record("c")).await.expect("log in");
        assert!(again.is_repeat("c"), "{:?}", again.replaced);
        // Two new logins at once, one per router: one replaced "c", the other replaced that
        // one's record (read and write are one step), and the record is the last one's.
        let (x, y) = tokio::join!(a.log_in("u", t, record("x")), b.log_in("u", t, record("y")));
        let (x, y) = (x.expect("x").replaced, y.expect("y").replaced);
        let last = match (x, y) {
            (Some(before_x), Some(before_y)) if before_x == record("c") => {
                assert_eq!(before_y, record("x"));
                record("y")
            }
            (Some(before_x), Some(before_y)) => {
                assert_eq!((before_x, before_y), (record("y"), record("c")));
                record("x")
            }
            other => panic!("a login replaced nothing: {other:?}"),
        };
        assert_eq!(a.login("u", t).await.expect("read"), Some(last));
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
        check_order(&store, "u").await;
    }

    /// Reads see the writes to `uid` queued before them, awaited or not.
    pub(super) async fn check_order(store: &RedisStore, uid: &str) {
        let t = TermType::Ios;
        // Neither write is awaited, one is even dropped: both are queued at the call.
        let stored = store.store_offline(vec![write(uid, t, push("p"))]);
        drop(store.set_login(uid, t, Some(record("c"))));
        let read = store.offline(uid, t);
        let o = read.await.expect("read");
        assert_eq!(o.push.as_ref().map(|p| p.count), Some(1));
        assert_eq!(store.login(uid, t).await.expect("read"), Some(record("c")));
        stored.await.expect("durable");

        // A removal queued and not awaited is seen by the next read too.
        let version = o.push.map(|p| p.version).expect("version");
        let removed = store.remove_offline(vec![StoredKey {
            uid: Arc::from(uid),
            term: t,
            item: OfflineKey::Push { version, count: 1 },
        }]);
        assert!(store.offline(uid, t).await.expect("read").is_empty());
        removed.await.expect("durable");

        // Many writes queued back to back keep their order.
        let writes: Vec<_> = (0..200)
            .map(|i| store.store_offline(vec![write(uid, t, push(&format!("p{i}")))]))
            .collect();
        let o = store.offline(uid, t).await.expect("read");
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
        let keys = Keys::new(&prefix.0);
        let mut raw = raw(SHARED_REDIS).await;
        // `logged_in` reads the fields' names only: a record that is not JSON, under a name that
        // is not a terminal type's bit.
        let _: () = redis::cmd("HSET")
            .arg(keys.login("u"))
            .arg(1)
            .arg("not json")
            .arg("nine")
            .arg("{}")
            .query_async(&mut raw)
            .await
            .expect("hset");
        let _: () = redis::cmd("RPUSH")
            .arg(keys.callbacks("u", TermType::Android))
            .arg("no id here")
            .query_async(&mut raw)
            .await
            .expect("rpush");
        let _: () = redis::cmd("SET")
            .arg(keys.ims("u", TermType::Android))
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

    #[tokio::test]
    async fn a_store_of_the_old_key_scheme_is_renamed_and_reads_on() {
        let prefix = TestPrefix::new();
        let p = &prefix.0;
        let keys = Keys::new(p);
        let Ok(mut raw) = redis::Client::open(SHARED_REDIS)
            .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(1)))
        else {
            missing::<()>("no Redis at 127.0.0.1:6379");
            return;
        };
        let json = |code: &str| encode_login(record(code)).expect("json");
        let mut old = redis::pipe();
        old.set(format!("{p}seq"), 100)
            .hset(format!("{p}login:u:1"), 1, json("c"))
            .hset_multiple(
                format!("{p}push:2:u:1"),
                &[("count", "3"), ("body", "p"), ("version", "50")],
            )
            .rpush(format!("{p}callbacks:2:u:1"), "60:cb")
            .rpush(format!("{p}ims:2:u:1"), "70:1:im")
            .hset(format!("{p}inbox"), 80, encode_queued("push", b"in"))
            .hset(format!("{p}outbox"), 90, encode_queued("back", b"out"))
            // A user whose record was written under both names: the new one wins.
            .hset(format!("{p}login:v"), 1, json("old"))
            .hset(keys.login("v"), 1, json("new"));
        let () = old.query(&mut raw).expect("write the old scheme");

        let Some(store) = prefix.store().await else {
            return;
        };
        let (u, t) = ("u:1", TermType::Ios);
        assert_eq!(
            store.login(u, TermType::Android).await.expect("login"),
            Some(record("c"))
        );
        let o = store.offline(u, t).await.expect("offline");
        let p0 = o.push.clone().expect("push");
        assert_eq!((p0.count, &p0.body[..], p0.version), (3, &b"p"[..], 50));
        assert_eq!(
            (o.callbacks[0].id, &o.callbacks[0].body[..]),
            (60, &b"cb"[..])
        );
        assert_eq!((o.ims[0].id, o.ims[0].flag), (70, 1));
        let inbox = store.inbox_load().await.expect("inbox");
        assert_eq!((inbox[0].seq, &inbox[0].body[..]), (80, &b"in"[..]));
        let outbox = store.outbox_load().await.expect("outbox");
        assert_eq!((outbox[0].seq, outbox[0].topic.as_str()), (90, "back"));
        assert_eq!(
            store.login("v", TermType::Android).await.expect("login"),
            Some(record("new"))
        );

        // Ids go on above the old counter's.
        store
            .store_offline(vec![write(u, t, push("q"))])
            .await
            .expect("store");
        let version = store
            .offline(u, t)
            .await
            .expect("read")
            .push
            .expect("push")
            .version;
        assert!(version > 100, "{version}");
        assert!(
            store
                .inbox_append(vec![("push".into(), Bytes::new())])
                .await
                .expect("append")[0]
                > 100
        );
        assert!(
            store
                .outbox_append(vec![("back".into(), Bytes::new())])
                .await
                .expect("append")[0]
                > 100
        );

        // Only the old key whose new name was taken is left of the old scheme; a second router
        // finds nothing to do.
        let (_, found) = keys_under(p).expect("scan");
        let old_left: Vec<_> = found
            .iter()
            .filter(|k| !k[p.len()..].starts_with('{'))
            .collect();
        assert_eq!(old_left, [&format!("{p}login:v")]);
        let again = prefix.store().await.expect("open again");
        assert_eq!(
            again
                .offline(u, t)
                .await
                .expect("read")
                .push
                .map(|p| p.count),
            Some(4)
        );
    }

    #[test]
    fn cluster_urls_name_every_node() {
        assert!(cluster_nodes("redis://127.0.0.1:6379/0").is_none());
        let nodes = cluster_nodes("redis+cluster://user:pw@10.0.0.1:7000, 10.0.0.2,[::1]:7002/")
            .expect("a cluster")
            .expect("valid");
        let addrs: Vec<String> = nodes.iter().map(|n| n.addr().to_string()).collect();
        assert_eq!(addrs, ["10.0.0.1:7000", "10.0.0.2:6379", "::1:7002"]);
        assert!(
            nodes
                .iter()
                .all(|n| n.redis_settings().password() == Some("pw"))
        );
        for bad in [
            "redis+cluster://",
            "redis+cluster://a:1,,b:2",
            "redis+cluster://a:x",
        ] {
            assert!(
                matches!(cluster_nodes(bad), Some(Err(StoreError::Unavailable(why))) if why.contains("store.redis_url")),
                "{bad}"
            );
        }
    }

    #[tokio::test]
    async fn a_cluster_refuses_a_prefix_with_braces() {
        let refused = RedisStore::open("redis+cluster://127.0.0.1:1", "a{b}:", limits()).await;
        assert!(
            matches!(refused, Err(StoreError::Unavailable(why)) if why.contains("store.redis_prefix"))
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
        assert!(decode_queued(b"5", format!("{}:t", usize::MAX).into_bytes()).is_err());
        assert!(decode_queued(b"five", encode_queued("t", b"")).is_err());
    }
}
