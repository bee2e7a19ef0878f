//! `GET /v1/stats` (SPEC §13): the figures an operator watches, as one JSON object — live
//! sessions by terminal type and by comet, deliveries by kind and outcome, drops, refusals,
//! kicks, IMs up, registrations, the inbox and outbox depth — and their rates over the last
//! second and the last minute.
//!
//! Sessions come from the router's location table, which the comets' reports keep, so a cluster
//! router shows every comet's sessions as standalone shows its own. The counters are this
//! process's `/metrics`: in a cluster, deliveries, drops, kicks and the bus are counted on the
//! router; refusals of the terminal limits on each comet (its own `/metrics`).
//!
//! Rates need the counters as they were a while ago. A sampler task copies them (a few dozen
//! numbers) once a second into a ring of the last [`KEPT`] copies, and a request compares the
//! counters now with the newest copy at least 1 s (60 s) old. The ring is all the sampler holds:
//! [`KEPT`] copies, under 20 KB, whatever the traffic; it ends when the API's routes are
//! dropped.

use std::collections::VecDeque;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use galopush_protocol::TermType;
use parking_lot::Mutex;
use serde_json::{Map, Value, json};

use crate::bus::Topic;
use crate::config::{BusKind, Config};
use crate::link::{DeliveryKind, Outcome};
use crate::metrics::{Dropped, KICK_REASONS, Metrics, Refusal};
use crate::router::{Router, unix_ms};

/// How often the sampler copies the counters.
const SAMPLE_EVERY: Duration = Duration::from_secs(1);
/// Copies kept: one a second for a minute, and two more so that one at least 60 s old is
/// there even when a tick came late.
const KEPT: usize = 62;
/// The windows rates are given over, with their names in the JSON.
const WINDOWS: [(&str, Duration); 2] = [
    ("1s", Duration::from_secs(1)),
    ("1m", Duration::from_secs(60)),
];

/// Where one counter goes in the JSON: `group.name`, or `group.subgroup.name`.
type Place = (&'static str, Option<&'static str>, &'static str);

/// The counters rates are taken of, with their places, in one fixed order.
fn counters(metrics: &Metrics) -> Vec<(Place, u64)> {
    let mut out = Vec::with_capacity(48);
    for kind in [
        DeliveryKind::Push { offline: 0 },
        DeliveryKind::Callback,
        DeliveryKind::Im,
    ] {
        let group = Some(kind.name());
        for (name, value) in [
            ("acked", metrics.delivery(kind, Outcome::Acked).get()),
            ("failed", metrics.delivery(kind, Outcome::Failed).get()),
            ("stored", metrics.offline_stored(kind).get()),
            ("fromStore", metrics.offline_delivered(kind).get()),
        ] {
            out.push((("deliveries", group, name), value));
        }
    }
    for why in Dropped::ALL {
        out.push((("dropped", None, why.label()), metrics.dropped(why).get()));
    }
    for why in Refusal::ALL {
        out.push((("refused", None, why.key()), metrics.refusals(why)));
    }
    for (reason, label) in KICK_REASONS {
        out.push((("kicks", None, label), metrics.kick(reason).get()));
    }
    out.push((("imUp", None, "accepted"), metrics.im_up_accepted.get()));
    out.push((("imUp", None, "failed"), metrics.im_up_failed.get()));
    out.push((
        ("registrations", None, "accepted"),
        metrics.registrations_accepted.get(),
    ));
    out.push((
        ("registrations", None, "refused"),
        metrics.registrations_refused.get(),
    ));
    out
}

/// Puts `value` at `place` in `object`.
fn put(object: &mut Map<String, Value>, (group, subgroup, name): Place, value: Value) {
    let mut at = object
        .entry(group)
        .or_insert_with(|| Value::Object(Map::new()));
    if let Some(subgroup) = subgroup {
        at = match at {
            Value::Object(o) => o
                .entry(subgroup)
                .or_insert_with(|| Value::Object(Map::new())),
            other => other,
        };
    }
    if let Value::Object(o) = at {
        o.insert(name.to_owned(), value);
    }
}

/// One copy of the counters.
struct Sample {
    at: Instant,
    values: Box<[u64]>,
}

/// What `/v1/stats` reads, and the sampler's ring.
pub struct Stats {
    router: Arc<Router>,
    metrics: Arc<Metrics>,
    bus: BusKind,
    inbox_limit: usize,
    outbox_limit: usize,
    samples: Mutex<VecDeque<Sample>>,
}

impl Stats {
    /// Takes the first sample and starts the sampler, which stops once the returned `Stats` is
    /// dropped.
    pub fn start(router: Arc<Router>, metrics: Arc<Metrics>, config: &Config) -> Arc<Stats> {
        let stats = Arc::new(Stats {
            router,
            metrics,
            bus: config.bus.kind,
            inbox_limit: config.limits.inbox_pending,
            outbox_limit: config.limits.outbox_pending,
            samples: Mutex::new(VecDeque::with_capacity(KEPT + 1)),
        });
        stats.sample();
        let sampled: Weak<Stats> = Arc::downgrade(&stats);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SAMPLE_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            tick.tick().await;
            loop {
                tick.tick().await;
                match sampled.upgrade() {
                    Some(stats) => stats.sample(),
                    None => return,
                }
            }
        });
        stats
    }

    fn sample(&self) {
        let values = counters(&self.metrics)
            .into_iter()
            .map(|(_, v)| v)
            .collect();
        let mut samples = self.samples.lock();
        samples.push_back(Sample {
            at: Instant::now(),
            values,
        });
        while samples.len() > KEPT {
            samples.pop_front();
        }
    }

    /// The rates of `now` against the newest sample at least `window` old (the oldest sample
    /// while the process is younger than that), with the seconds they cover.
    fn rates(&self, now: &[(Place, u64)], at: Instant, window: Duration) -> Value {
        let samples = self.samples.lock();
        let earlier = samples
            .iter()
            .rev()
            .find(|s| at.duration_since(s.at) >= window)
            .or_else(|| samples.front());
        let mut out = Map::new();
        let seconds = earlier.map_or(0.0, |s| at.duration_since(s.at).as_secs_f64());
        out.insert("seconds".into(), json!(round(seconds)));
        for (i, (place, value)) in now.iter().enumerate() {
            let before = earlier.and_then(|s| s.values.get(i)).copied().unwrap_or(0);
            let rate = if seconds > 0.0 {
                value.saturating_sub(before) as f64 / seconds
            } else {
                0.0
            };
            put(&mut out, *place, json!(round(rate)));
        }
        Value::Object(out)
    }

    /// The JSON of `GET /v1/stats`.
    pub fn json(&self) -> Value {
        let at = Instant::now();
        let now = counters(&self.metrics);
        let mut out = Map::new();
        out.insert("at".into(), json!(unix_ms()));
        out.insert(
            "bus".into(),
            json!(match self.bus {
                BusKind::Embedded => "embedded",
                BusKind::Nsq => "nsq",
            }),
        );
        out.insert("sessions".into(), self.sessions());
        out.insert(
            "inbox".into(),
            json!({"pending": self.metrics.inbox_pending.get().max(0), "limit": self.inbox_limit}),
        );
        out.insert(
            "outbox".into(),
            json!({"pending": self.metrics.outbox_pending.get().max(0), "limit": self.outbox_limit}),
        );
        let topics = self.router.topics();
        let names: Map<String, Value> = Topic::ALL
            .iter()
            .map(|t| (t.label().to_owned(), json!(t.name(topics))))
            .collect();
        out.insert("topics".into(), Value::Object(names));
        for (place, value) in &now {
            put(&mut out, *place, json!(value));
        }
        let rates: Map<String, Value> = WINDOWS
            .iter()
            .map(|(name, window)| ((*name).to_owned(), self.rates(&now, at, *window)))
            .collect();
        out.insert("rates".into(), Value::Object(rates));
        Value::Object(out)
    }

    /// Live sessions in all, by terminal type, and by comet.
    fn sessions(&self) -> Value {
        let by_name = |counts: &[i64; 5]| -> Value {
            TermType::ALL
                .iter()
                .map(|t| (t.name().to_owned(), json!(counts[t.index()])))
                .collect::<Map<String, Value>>()
                .into()
        };
        let comets = self.router.sessions_by_comet();
        let mut all = [0i64; 5];
        for c in &comets {
            for (sum, n) in all.iter_mut().zip(c.by_term) {
                *sum += n;
            }
        }
        let comets: Vec<Value> = comets
            .iter()
            .map(|c| {
                json!({
                    "id": c.id,
                    "total": c.by_term.iter().sum::<i64>(),
                    "termtypes": by_name(&c.by_term),
                })
            })
            .collect();
        json!({
            "total": all.iter().sum::<i64>(),
            "termtypes": by_name(&all),
            "comets": comets,
        })
    }
}

/// A rate as shown: three decimals are plenty.
fn round(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_land_in_their_groups() {
        let mut object = Map::new();
        put(&mut object, ("deliveries", Some("push"), "acked"), json!(3));
        put(
            &mut object,
            ("deliveries", Some("push"), "failed"),
            json!(1),
        );
        put(&mut object, ("refused", None, "max_body"), json!(2));
        assert_eq!(
            Value::Object(object),
            json!({"deliveries": {"push": {"acked": 3, "failed": 1}}, "refused": {"max_body": 2}})
        );
    }

    #[test]
    fn every_counter_has_its_own_place() {
        let places: Vec<Place> = counters(&Metrics::new())
            .into_iter()
            .map(|(p, _)| p)
            .collect();
        let unique: std::collections::HashSet<&Place> = places.iter().collect();
        assert_eq!(unique.len(), places.len(), "{places:?}");
        assert!(places.contains(&("deliveries", Some("im"), "fromStore")));
        assert!(places.contains(&("refused", None, "inbox_pending")));
        assert!(places.contains(&("kicks", None, "logged_out")));
    }
}
