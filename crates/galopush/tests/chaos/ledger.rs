//! The chaos run's accounting: every down-message the business side had accepted (`200` from
//! `/mpub`), every receipt by a terminal, every IM up a terminal had IMRESP 0 for, and every IM
//! the webhook received; at the end, each message's outcome and the table of a run.
//!
//! Bodies are unique: `p<n>`, `c<n>`, `i<n>` down, `u<n>` up. A push is accounted for when a
//! terminal received it, or when the same terminal later received a PUSH with `offline ≥ 1`
//! (SPEC §6: pushes missed while offline are coalesced into the latest one).
//!
//! Receipts are told apart by the phase they came in: while the run goes and until it is
//! quiet; when the terminals kept away at the end came back (stored for a terminal that was
//! away); and when every terminal registered once more at the very end (stored while its
//! terminal was online, so held until that terminal's next REGISTER: not lost, but late).

use std::collections::HashMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::time::Instant;

/// The kinds of down-message, with their topic and body prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Push,
    Callback,
    Im,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Push, Kind::Callback, Kind::Im];

    pub fn topic(self) -> &'static str {
        match self {
            Kind::Push => "push",
            Kind::Callback => "callback",
            Kind::Im => "msgDownward",
        }
    }

    fn prefix(self) -> char {
        match self {
            Kind::Push => 'p',
            Kind::Callback => 'c',
            Kind::Im => 'i',
        }
    }
}

struct Sent {
    kind: Kind,
    terminal: usize,
    /// When its first `/mpub` attempt started: it cannot have been applied before.
    at: Instant,
}

/// When a message was first received.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Phase {
    #[default]
    Running,
    /// The terminals kept away came back.
    Returned,
    /// Every terminal registered once more.
    Reregistered,
}

#[derive(Default)]
struct Receipt {
    times: u32,
    phase: Phase,
}

/// A coalesced PUSH a terminal received: it stands for the pushes to that terminal missed
/// before it.
struct Coalesced {
    terminal: usize,
    at: Instant,
}

#[derive(Default)]
struct Books {
    sent: HashMap<u64, Sent>,
    received: HashMap<u64, Receipt>,
    coalesced: Vec<Coalesced>,
    up_accepted: HashMap<u64, usize>,
    up_at_webhook: HashMap<u64, u32>,
    faults: Vec<(&'static str, u32)>,
    unexpected: Vec<String>,
}

/// Shared by the publisher, the terminals, the webhook and the fault injector.
#[derive(Default)]
pub struct Ledger {
    next: AtomicU64,
    up_sent: AtomicU64,
    phase: Mutex<Phase>,
    books: Mutex<Books>,
}

impl Ledger {
    /// A fresh unique body of `kind`.
    pub fn body(&self, kind: Kind) -> String {
        format!(
            "{}{}",
            kind.prefix(),
            self.next.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// A fresh unique IM up body.
    pub fn up_body(&self) -> String {
        self.up_sent.fetch_add(1, Ordering::Relaxed);
        format!("u{}", self.next.fetch_add(1, Ordering::Relaxed))
    }

    /// Messages the business side had accepted (`200`), first attempted at `at`.
    pub fn sent(&self, messages: &[(Kind, usize, String)], at: Instant) {
        let mut books = self.books.lock().expect("ledger");
        for (kind, terminal, body) in messages {
            books.sent.insert(
                number(body),
                Sent {
                    kind: *kind,
                    terminal: *terminal,
                    at,
                },
            );
        }
    }

    /// Terminal `terminal` received `body` (a PUSH with `offline`, or another down-message).
    pub fn received(&self, terminal: usize, body: &[u8], offline: u16) {
        let Some(n) = std::str::from_utf8(body)
            .ok()
            .and_then(|b| b.get(1..)?.parse().ok())
        else {
            self.unexpected(format!(
                "terminal {terminal} received a body no one sent: {:?}",
                String::from_utf8_lossy(body)
            ));
            return;
        };
        let phase = *self.phase.lock().expect("phase");
        let mut books = self.books.lock().expect("ledger");
        let receipt = books.received.entry(n).or_default();
        if receipt.times == 0 {
            receipt.phase = phase;
        }
        receipt.times += 1;
        if offline >= 1 {
            books.coalesced.push(Coalesced {
                terminal,
                at: Instant::now(),
            });
        }
    }

    /// Terminal `terminal` had IMRESP 0 for the IM up `body`.
    pub fn up_accepted(&self, terminal: usize, body: &str) {
        let mut books = self.books.lock().expect("ledger");
        books.up_accepted.insert(number(body), terminal);
    }

    /// The webhook received the IM up `body`.
    pub fn up_at_webhook(&self, body: &str) {
        let Some(n) = body.get(1..).and_then(|b| b.parse().ok()) else {
            self.unexpected(format!("the webhook received an IM no one sent: {body:?}"));
            return;
        };
        *self
            .books
            .lock()
            .expect("ledger")
            .up_at_webhook
            .entry(n)
            .or_default() += 1;
    }

    /// Something that should never happen and is not a loss (a body no one sent, a REGRESP
    /// other than 0 or 3): listed in the table and failing the run.
    pub fn unexpected(&self, what: String) {
        self.books.lock().expect("ledger").unexpected.push(what);
    }

    pub fn fault(&self, name: &'static str) {
        let mut books = self.books.lock().expect("ledger");
        match books.faults.iter_mut().find(|(n, _)| *n == name) {
            Some((_, count)) => *count += 1,
            None => books.faults.push((name, 1)),
        }
    }

    /// From now on, receipts are of messages stored until `phase`.
    pub fn enter(&self, phase: Phase) {
        *self.phase.lock().expect("phase") = phase;
    }

    /// How many receipts (with repeats) and webhook IMs there are so far: quiet is when this
    /// stops moving.
    pub fn activity(&self) -> u64 {
        let books = self.books.lock().expect("ledger");
        let received: u64 = books.received.values().map(|r| u64::from(r.times)).sum();
        let hooked: u64 = books.up_at_webhook.values().map(|&t| u64::from(t)).sum();
        received + hooked + books.coalesced.len() as u64
    }

    /// IMs up accepted that the webhook has not received yet.
    pub fn up_missing(&self) -> usize {
        let books = self.books.lock().expect("ledger");
        books
            .up_accepted
            .keys()
            .filter(|n| !books.up_at_webhook.contains_key(n))
            .count()
    }

    /// The outcome of every message.
    pub fn account(&self) -> Account {
        let books = self.books.lock().expect("ledger");
        let mut account = Account {
            faults: books.faults.clone(),
            unexpected: books.unexpected.clone(),
            up_sent: self.up_sent.load(Ordering::Relaxed),
            up_accepted: books.up_accepted.len() as u64,
            ..Account::default()
        };
        let mut last_coalesced: HashMap<usize, Instant> = HashMap::new();
        for c in &books.coalesced {
            let last = last_coalesced.entry(c.terminal).or_insert(c.at);
            *last = (*last).max(c.at);
        }
        for (n, sent) in &books.sent {
            let row = account.row(sent.kind);
            row.sent += 1;
            match books.received.get(n) {
                Some(r) if r.phase == Phase::Returned => row.returned += 1,
                Some(r) if r.phase == Phase::Reregistered => {
                    row.held += 1;
                    example(&mut account.held_examples, sent, *n);
                }
                Some(r) if r.times == 1 => row.once += 1,
                Some(_) => row.repeated += 1,
                None if sent.kind == Kind::Push
                    && last_coalesced
                        .get(&sent.terminal)
                        .is_some_and(|&at| at >= sent.at) =>
                {
                    row.coalesced += 1
                }
                None => {
                    row.lost += 1;
                    example(&mut account.lost_examples, sent, *n);
                }
            }
        }
        for (n, terminal) in &books.up_accepted {
            match books.up_at_webhook.get(n) {
                Some(1) => account.up_once += 1,
                Some(_) => account.up_repeated += 1,
                None => {
                    account.up_lost += 1;
                    if account.lost_examples.len() < 20 {
                        account
                            .lost_examples
                            .push(format!("u{n} from terminal {terminal}"));
                    }
                }
            }
        }
        account
    }
}

/// Keeps the first 20 examples of an outcome, for the table.
fn example(examples: &mut Vec<String>, sent: &Sent, n: u64) {
    if examples.len() < 20 {
        examples.push(format!(
            "{}{n} for terminal {}",
            sent.kind.prefix(),
            sent.terminal
        ));
    }
}

fn number(body: &str) -> u64 {
    body[1..].parse().expect("a body made by the ledger")
}

/// Down-messages of one kind by outcome.
#[derive(Debug, Default, Clone, Copy)]
pub struct Row {
    pub sent: u64,
    pub once: u64,
    pub repeated: u64,
    pub coalesced: u64,
    pub returned: u64,
    /// Stored while its terminal was online; delivered at its next REGISTER.
    pub held: u64,
    pub lost: u64,
}

/// The end of a run: faults injected, messages by outcome.
#[derive(Debug, Default)]
pub struct Account {
    pub faults: Vec<(&'static str, u32)>,
    pub rows: Vec<(Kind, Row)>,
    pub up_sent: u64,
    pub up_accepted: u64,
    pub up_once: u64,
    pub up_repeated: u64,
    pub up_lost: u64,
    pub lost_examples: Vec<String>,
    pub held_examples: Vec<String>,
    pub unexpected: Vec<String>,
}

impl Account {
    fn row(&mut self, kind: Kind) -> &mut Row {
        let at = match self.rows.iter().position(|(k, _)| *k == kind) {
            Some(at) => at,
            None => {
                self.rows.push((kind, Row::default()));
                self.rows.len() - 1
            }
        };
        &mut self.rows[at].1
    }

    pub fn lost(&self) -> u64 {
        self.rows.iter().map(|(_, r)| r.lost).sum::<u64>() + self.up_lost
    }

    /// The run's table, as Markdown.
    pub fn table(&self) -> String {
        let mut out = String::new();
        out.push_str("| fault | injected |\n|---|---:|\n");
        for (name, count) in &self.faults {
            let _ = writeln!(out, "| {name} | {count} |");
        }
        out.push_str(
            "\n| messages | accepted | delivered once | more than once | coalesced | stored, delivered on return | stored while online, delivered at the next REGISTER | lost |\n|---|---:|---:|---:|---:|---:|---:|---:|\n",
        );
        for kind in Kind::ALL {
            let r = self
                .rows
                .iter()
                .find(|(k, _)| *k == kind)
                .map(|(_, r)| *r)
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "| {} down | {} | {} | {} | {} | {} | {} | {} |",
                kind.topic(),
                r.sent,
                r.once,
                r.repeated,
                r.coalesced,
                r.returned,
                r.held,
                r.lost
            );
        }
        let _ = writeln!(
            out,
            "| IM up (IMRESP 0 of {} sent) | {} | {} | {} | – | – | – | {} |",
            self.up_sent, self.up_accepted, self.up_once, self.up_repeated, self.up_lost
        );
        for example in &self.lost_examples {
            let _ = writeln!(out, "lost: {example}");
        }
        for example in &self.held_examples {
            let _ = writeln!(out, "held while online: {example}");
        }
        for what in &self.unexpected {
            let _ = writeln!(out, "unexpected: {what}");
        }
        out
    }
}
