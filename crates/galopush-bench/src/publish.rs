//! The business side of a run: logins and messages published over HTTP with nsqd's `/pub` and
//! `/mpub` semantics (raw JSON, one message per line), or at QoS 1 to an MQTT broker, in
//! batches, optionally paced.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use galopush_protocol::bus::{self, UserOnlineState};
use tokio::task::JoinSet;

use crate::body;
use crate::fleet::micros;
use crate::mqtt::{self, Topics};

/// Logins per `/mpub` request.
const LOGIN_BATCH: usize = 1000;
/// Largest `/mpub` body the bench sends (nsqd refuses bodies over 5 MiB by default).
const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;

/// An HTTP endpoint with `/pub` and `/mpub`, and the bearer token it takes.
#[derive(Debug, Clone)]
pub(crate) struct Bus {
    client: reqwest::Client,
    base: String,
    token: Option<Arc<str>>,
}

impl Bus {
    pub fn new(client: reqwest::Client, base: &str, token: Option<&str>) -> Bus {
        Bus {
            client,
            base: base.trim_end_matches('/').to_owned(),
            token: token.filter(|t| !t.is_empty()).map(Arc::from),
        }
    }

    /// The URL publishing several messages on `topic`.
    pub fn mpub_url(&self, topic: &str) -> String {
        format!("{}/mpub?topic={topic}", self.base)
    }

    /// The URL publishing one message on `topic`.
    pub fn pub_url(&self, topic: &str) -> String {
        format!("{}/pub?topic={topic}", self.base)
    }

    /// POSTs `body` to `url`; anything but a 2xx answer is an error, described.
    pub async fn post(&self, url: &str, body: Vec<u8>) -> Result<(), String> {
        let mut request = self.client.post(url).body(body);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let response = request
            .send()
            .await
            .map_err(|e| format!("POST {url}: {e}"))?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let text = response.text().await.unwrap_or_default();
        Err(format!("POST {url}: HTTP {status}: {}", text.trim()))
    }

    /// Publishes a `userOnlineState` login for each `(uid, code)`, `/mpub` batches of
    /// [`LOGIN_BATCH`], `publishers` at a time.
    pub async fn login_all(
        &self,
        topic: &str,
        logins: &[(String, String)],
        termtype: u8,
        publishers: usize,
    ) -> Result<(), String> {
        let url = Arc::<str>::from(self.mpub_url(topic));
        let mut in_flight = JoinSet::new();
        for chunk in logins.chunks(LOGIN_BATCH) {
            let mut lines = Vec::with_capacity(chunk.len() * 96);
            for (uid, code) in chunk {
                lines.extend_from_slice(&login_line(uid, code, termtype));
                lines.push(b'\n');
            }
            if in_flight.len() >= publishers {
                joined(in_flight.join_next().await)?;
            }
            let (bus, url) = (self.clone(), url.clone());
            in_flight.spawn(async move { bus.post(&url, lines).await });
        }
        while let Some(done) = in_flight.join_next().await {
            joined(Some(done))?;
        }
        Ok(())
    }

    /// Publishes one login with `/pub`.
    pub async fn login_one(
        &self,
        topic: &str,
        uid: &str,
        code: &str,
        termtype: u8,
    ) -> Result<(), String> {
        self.post(&self.pub_url(topic), login_line(uid, code, termtype))
            .await
    }
}

/// The result of a publishing task, as an error when it failed or panicked.
fn joined(done: Option<Result<Result<(), String>, tokio::task::JoinError>>) -> Result<(), String> {
    match done {
        None | Some(Ok(Ok(()))) => Ok(()),
        Some(Ok(Err(e))) => Err(e),
        Some(Err(e)) => Err(format!("publishing task failed: {e}")),
    }
}

/// A `userOnlineState` message as raw JSON.
fn login_line(uid: &str, code: &str, termtype: u8) -> Vec<u8> {
    bus::encode(
        &UserOnlineState {
            uid: uid.to_owned(),
            termtype,
            code: code.to_owned(),
            device_token: String::new(),
            online: true,
        },
        false,
    )
}

/// Who receives each message.
#[derive(Debug)]
pub(crate) enum Receivers {
    /// Message `seq` goes to `uids[seq % uids.len()]`.
    Unicast { uids: Vec<String>, termtype: u8 },
    /// Every message goes to everyone: the line up to the body, written once.
    Fanout { head: Vec<u8> },
}

impl Receivers {
    /// Every uid in one receivers list.
    pub fn fanout(uids: &[String], termtype: u8) -> Receivers {
        let mut head = br#"{"receivers":["#.to_vec();
        for (i, uid) in uids.iter().enumerate() {
            if i > 0 {
                head.push(b',');
            }
            // Writing into a Vec cannot fail.
            let _ = write!(head, r#"{{"uid":"{uid}","termtype":{termtype}}}"#);
        }
        head.extend_from_slice(br#"],"flag":0,"body":""#);
        Receivers::Fanout { head }
    }

    /// Appends message `seq`, sent at `sent_us`, as one `/mpub` line.
    fn write_line(&self, out: &mut Vec<u8>, seq: u64, sent_us: u64, body_size: usize) {
        match self {
            Receivers::Unicast { uids, termtype } => {
                let uid = &uids[(seq % uids.len() as u64) as usize];
                let _ = write!(
                    out,
                    r#"{{"receivers":[{{"uid":"{uid}","termtype":{termtype}}}],"flag":0,"body":""#
                );
            }
            Receivers::Fanout { head } => out.extend_from_slice(head),
        }
        body::write_escaped(out, seq, sent_us, body_size);
        out.extend_from_slice(b"\"}\n");
    }

    /// About how long one line is, with bodies of `body_size`.
    fn line_len(&self, body_size: usize) -> usize {
        let head = match self {
            Receivers::Unicast { uids, .. } => 60 + uids.iter().map(String::len).max().unwrap_or(0),
            Receivers::Fanout { head } => head.len(),
        };
        head + 48.max(body_size + 16)
    }
}

/// Where and how the messages of a run go.
#[derive(Debug)]
pub(crate) enum Route {
    /// `/mpub` requests to `url` on `bus`.
    Mpub {
        bus: Bus,
        url: String,
        receivers: Receivers,
    },
    /// QoS 1 PUBLISHes to the MQTT broker at `broker`, one connection per publisher, named
    /// `client_prefix` and the publisher's number.
    Mqtt {
        broker: String,
        client_prefix: String,
        topics: Topics,
    },
}

impl Route {
    /// What a publisher sends through: the bus, or a connection of its own to the broker.
    async fn outlet(&self, publisher: usize) -> Result<Outlet<'_>, String> {
        match self {
            Route::Mpub {
                bus,
                url,
                receivers,
            } => Ok(Outlet::Mpub {
                bus,
                url,
                receivers,
            }),
            Route::Mqtt {
                broker,
                client_prefix,
                topics,
            } => {
                let client = format!("{client_prefix}{publisher}");
                let publisher = mqtt::Publisher::open(broker, &client)
                    .await
                    .map_err(|e| format!("publisher {client} at {broker}: {e}"))?;
                Ok(Outlet::Mqtt { publisher, topics })
            }
        }
    }
}

/// One publisher's way to the server.
enum Outlet<'a> {
    Mpub {
        bus: &'a Bus,
        url: &'a str,
        receivers: &'a Receivers,
    },
    Mqtt {
        publisher: mqtt::Publisher,
        topics: &'a Topics,
    },
}

impl Outlet<'_> {
    /// Publishes messages `seqs`, sent at `sent_us`, with bodies of `body_size`.
    async fn send(
        &mut self,
        seqs: std::ops::Range<u64>,
        sent_us: u64,
        body_size: usize,
        line_len: usize,
    ) -> Result<(), String> {
        match self {
            Outlet::Mpub {
                bus,
                url,
                receivers,
            } => {
                let mut lines =
                    Vec::with_capacity(seqs.end.saturating_sub(seqs.start) as usize * line_len);
                for seq in seqs {
                    receivers.write_line(&mut lines, seq, sent_us, body_size);
                }
                bus.post(url, lines).await
            }
            Outlet::Mqtt { publisher, topics } => {
                let topics = &**topics;
                let messages = seqs.map(|seq| {
                    let mut payload = Vec::with_capacity(body_size.max(32));
                    body::write_raw(&mut payload, seq, sent_us, body_size);
                    (topics.of(seq), payload)
                });
                publisher.publish(messages).await
            }
        }
    }
}

/// The messages of a run and how to publish them.
#[derive(Debug)]
pub(crate) struct Messages {
    pub route: Route,
    pub count: u64,
    /// Messages per `/mpub` request, as asked.
    pub batch: u64,
    /// Messages per second, if paced.
    pub rate: Option<f64>,
    pub publishers: usize,
    /// Bytes of each body at least (`--body-size`).
    pub body_size: usize,
}

impl Messages {
    /// Messages per request: as asked, but keeping each body under [`MAX_BATCH_BYTES`].
    pub fn effective_batch(&self) -> u64 {
        let fit = (MAX_BATCH_BYTES / self.line_len()).max(1) as u64;
        self.batch.clamp(1, fit)
    }

    /// About how long one `/mpub` line (or MQTT PUBLISH) is.
    pub fn line_len(&self) -> usize {
        match &self.route {
            Route::Mpub { receivers, .. } => receivers.line_len(self.body_size),
            Route::Mqtt { topics, .. } => {
                let topic = match topics {
                    Topics::Own(own) => own.iter().map(String::len).max().unwrap_or(0),
                    Topics::Shared(shared) => shared.len(),
                };
                topic + 48.max(self.body_size + 16)
            }
        }
    }
}

/// How publishing went.
#[derive(Debug, Default)]
pub(crate) struct Published {
    /// When the first request started (µs since the bench started).
    pub first_start_us: u64,
    /// When the last answer arrived (µs since the bench started).
    pub last_done_us: u64,
    /// Messages the server accepted.
    pub accepted: u64,
    /// Messages in requests that failed.
    pub refused: u64,
    /// Requests that failed.
    pub errors: u64,
    pub first_error: Option<String>,
}

impl Published {
    fn merge(&mut self, other: Published) {
        self.last_done_us = self.last_done_us.max(other.last_done_us);
        self.accepted += other.accepted;
        self.refused += other.refused;
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }
}

/// Publishes every message, `publishers` requests (or batches of PUBLISH) at a time, each
/// message's body carrying its send time in µs since `epoch`.
pub(crate) async fn publish_messages(messages: Arc<Messages>, epoch: Instant) -> Published {
    let start = Instant::now();
    let batch = messages.effective_batch();
    let batches = messages.count.div_ceil(batch);
    let next = Arc::new(AtomicU64::new(0));
    let mut workers = JoinSet::new();
    for publisher in 0..messages.publishers.max(1) {
        let (messages, next) = (messages.clone(), next.clone());
        workers.spawn(async move {
            let mut published = Published::default();
            let mut outlet = match messages.route.outlet(publisher).await {
                Ok(outlet) => outlet,
                Err(e) => {
                    published.errors += 1;
                    published.first_error = Some(e);
                    return published;
                }
            };
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                if index >= batches {
                    return published;
                }
                let first = index * batch;
                let n = batch.min(messages.count - first);
                let sent_us = match messages.rate {
                    Some(rate) => {
                        let due = start + Duration::from_secs_f64(first as f64 / rate);
                        if Instant::now() < due {
                            // On schedule: the batch leaves when the timer wakes, up to a
                            // millisecond after `due` (the timer's resolution); that wait is
                            // the bench's, not the server's.
                            tokio::time::sleep_until(due.into()).await;
                            micros(epoch.elapsed())
                        } else {
                            // Behind schedule (every publisher was waiting on the server): the
                            // batch counts from when it was due.
                            micros(due - epoch)
                        }
                    }
                    None => micros(epoch.elapsed()),
                };
                let sent = outlet.send(
                    first..first + n,
                    sent_us,
                    messages.body_size,
                    messages.line_len(),
                );
                match sent.await {
                    Ok(()) => published.accepted += n,
                    Err(e) => {
                        published.refused += n;
                        published.errors += 1;
                        published.first_error.get_or_insert(e);
                    }
                }
                published.last_done_us = micros(epoch.elapsed());
            }
        });
    }
    let mut published = Published {
        first_start_us: micros(start - epoch),
        ..Published::default()
    };
    while let Some(done) = workers.join_next().await {
        match done {
            Ok(worker) => published.merge(worker),
            Err(e) => {
                published.errors += 1;
                published
                    .first_error
                    .get_or_insert(format!("publisher task failed: {e}"));
            }
        }
    }
    published
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(receivers: &Receivers, seqs: std::ops::Range<u64>) -> Vec<serde_json::Value> {
        let mut out = Vec::new();
        for seq in seqs {
            receivers.write_line(&mut out, seq, 77, 0);
        }
        out.split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).expect("each line is JSON"))
            .collect()
    }

    #[test]
    fn unicast_lines_are_downward_messages() {
        let receivers = Receivers::Unicast {
            uids: vec!["a".into(), "b".into()],
            termtype: 1,
        };
        let got = lines(&receivers, 0..3);
        assert_eq!(got.len(), 3);
        assert_eq!(
            got[1]["receivers"],
            serde_json::json!([{"uid": "b", "termtype": 1}])
        );
        assert_eq!(got[2]["receivers"][0]["uid"], "a");
        assert_eq!(got[2]["body"], r#"{"seq":2,"t":77}"#);
        let parsed: bus::Downward =
            bus::decode(serde_json::to_vec(&got[0]).expect("JSON").as_slice()).expect("Downward");
        assert_eq!(parsed.flag, 0);
    }

    #[test]
    fn fanout_lines_list_everyone() {
        let receivers = Receivers::fanout(&["a".into(), "b".into(), "c".into()], 8);
        let got = lines(&receivers, 5..6);
        assert_eq!(got[0]["receivers"].as_array().map(Vec::len), Some(3));
        assert_eq!(
            got[0]["receivers"][2],
            serde_json::json!({"uid": "c", "termtype": 8})
        );
        assert_eq!(got[0]["body"], r#"{"seq":5,"t":77}"#);
    }

    #[test]
    fn big_fanout_batches_stay_small() {
        let uids: Vec<String> = (0..15_000).map(|i| format!("b0a1b2c-{i}")).collect();
        let messages = Messages {
            route: Route::Mpub {
                bus: Bus::new(reqwest::Client::new(), "http://127.0.0.1:1", None),
                url: String::new(),
                receivers: Receivers::fanout(&uids, 1),
            },
            count: 10,
            batch: 100,
            rate: None,
            publishers: 1,
            body_size: 4096,
        };
        let batch = messages.effective_batch();
        assert!((1..100).contains(&batch));
        assert!(batch as usize * messages.line_len() <= MAX_BATCH_BYTES);
    }

    #[test]
    fn login_lines_are_user_online_states() {
        let line = login_line("u1", "c1", 8);
        let state: UserOnlineState = bus::decode(&line).expect("a login");
        assert_eq!(
            (state.uid.as_str(), state.termtype, state.online),
            ("u1", 8, true)
        );
        assert_eq!(state.code, "c1");
    }
}
