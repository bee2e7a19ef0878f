//! The reference of every setting: what it does, next to the code that reads it. From it come
//! `galopush config --defaults` (a commented TOML of every key), `docs/configuration.md`
//! (`galopush config --markdown`, checked by a test against the file), and the redaction of
//! secrets in `galopush config`. A test fails when a key exists in [`Config`] but not here, or
//! the other way round.

use std::fmt::Write;

use super::{Config, ENV_PREFIX, defaults_table};

/// One setting.
pub struct Setting {
    /// `section.key`.
    pub key: &'static str,
    /// What it does.
    pub doc: &'static str,
    /// Shown as `<redacted>` by `galopush config`.
    pub secret: bool,
}

const fn s(key: &'static str, doc: &'static str) -> Setting {
    Setting {
        key,
        doc,
        secret: false,
    }
}

const fn secret(key: &'static str, doc: &'static str) -> Setting {
    Setting {
        key,
        doc,
        secret: true,
    }
}

/// The sections, in the order they are shown, with what each is about.
pub const SECTIONS: &[(&str, &str)] = &[
    (
        "router",
        "The router's listeners: the public HTTP that terminals reach, and the RPC that comets join.",
    ),
    (
        "api",
        "The business API: `/pub`, `/mpub`, `/v1/comets`, `/v1/users/…`, `/v1/stats`, `/metrics` and the operator console `/console/`, for business services and operators.",
    ),
    ("web", "Browser pages that are off by default."),
    (
        "comet",
        "A comet: the terminal listeners, what the dispatcher hands out, the routers it joins, its timeouts.",
    ),
    (
        "tls",
        "The certificate of the TLS listeners (terminals over TLS and WSS, HTTPS listeners).",
    ),
    (
        "cluster",
        "How the link between routers and comets is authenticated.",
    ),
    ("delivery", "Ack timeouts and the offline rules."),
    (
        "limits",
        "Everything a terminal or an HTTP client can make the server hold; going over a bound is refused and counted in `galopush_refused_total{reason=\"<key>\"}`.",
    ),
    ("auth", "How REGISTER is authenticated."),
    (
        "bus",
        "The business message bus: embedded (HTTP in, webhook out) or NSQ.",
    ),
    (
        "store",
        "Where login records and offline messages are kept.",
    ),
    ("topics", "Topic names of the business messages."),
    (
        "apns",
        "Apple Push Notification service: a push (and an IM with `apns.im`) for an iOS terminal that is not live also goes to Apple when its login record has a deviceToken; the offline copy is kept as always. On with `apns.key_file` (token auth) or `apns.cert_file` (certificate auth). Outcomes are counted in `galopush_provider_total{provider=\"apns\",outcome=…}`.",
    ),
    (
        "fcm",
        "Firebase Cloud Messaging (HTTP v1): the same for Android terminals. On with `fcm.service_account`. Outcomes are counted in `galopush_provider_total{provider=\"fcm\",outcome=…}`.",
    ),
    ("log", "Log output."),
];

/// Every setting, by section in the order of [`SECTIONS`].
pub const SETTINGS: &[Setting] = &[
    s(
        "router.http_addr",
        "Public HTTP listener, reached by terminals: the dispatcher `/v1/gComet.addr` and `/healthz`, nothing else.",
    ),
    s(
        "router.http_tls",
        "Serve `router.http_addr` over HTTPS with the certificate of `[tls]`.",
    ),
    s(
        "router.rpc_addr",
        "The router's RPC listener that comets join (cluster). Off loopback it needs `cluster.secret`.",
    ),
    s(
        "api.addr",
        "Business API listener. Off loopback it needs `api.token`.",
    ),
    secret(
        "api.token",
        "Bearer token every API request but `/healthz` and the console's own files (`/console/…`, which hold no data) must carry (`Authorization: Bearer <token>`); empty: none asked, allowed only on a loopback `api.addr` and `comet.http_addr`.",
    ),
    s(
        "api.tls",
        "Serve `api.addr` over HTTPS with the certificate of `[tls]`.",
    ),
    s(
        "web.demo",
        "Serve a web terminal built on the browser SDK at `/demo/` on the public listener (`router.http_addr`), with the SDK beside it at `/demo/galopush.js`, for trying the gateway by hand. It can register only a uid and code the business side logged in (or any, with `auth.mode = \"open\"`). Off in production: it is a page anyone who reaches the public listener can load.",
    ),
    s(
        "comet.id",
        "Unique name of the comet; a second comet with the id of one still joined is refused.",
    ),
    s(
        "comet.tcp_addr",
        "Listener for terminals speaking the binary protocol.",
    ),
    s(
        "comet.ws_addr",
        "Listener for Web terminals (WebSocket, paths `/ws` and `/`).",
    ),
    s(
        "comet.advertise_tcp",
        "`host:port` the dispatcher hands out for TCP terminals; port 0 means the port bound.",
    ),
    s(
        "comet.advertise_ws",
        "`host:port` the dispatcher hands out for Web terminals; port 0 means the port bound.",
    ),
    s(
        "comet.tls_addr",
        "Listener for the binary protocol inside TLS, with `[tls]` set.",
    ),
    s(
        "comet.wss_addr",
        "Listener for WebSocket over TLS (`wss://`), with `[tls]` set.",
    ),
    s(
        "comet.advertise_tls",
        "`host:port` the dispatcher hands out to TCP terminals asking with `tls=1`.",
    ),
    s(
        "comet.advertise_wss",
        "`host:port` the dispatcher hands out to Web terminals asking with `tls=1`.",
    ),
    s(
        "comet.http_addr",
        "A cluster comet's `/metrics` and `/healthz` (with `api.token`).",
    ),
    s(
        "comet.router_rpc",
        "The routers' RPC addresses the comet joins (cluster); a list, also comma-separated in the environment.",
    ),
    s(
        "comet.register_timeout",
        "A connection that has not registered within this is closed (TLS and WebSocket handshakes included).",
    ),
    s(
        "comet.idle_timeout",
        "A registered connection that sends nothing for this long is closed (twice the recommended 300 s heartbeat, plus slack).",
    ),
    s(
        "comet.write_timeout",
        "How long a write to a terminal may block before the terminal is disconnected.",
    ),
    s(
        "comet.park_after",
        "A registered terminal on plain TCP that has sent nothing for this long, with no delivery waiting for its ack, is kept without a task of its own (its socket watched by the comet's one epoll set, about 1 KB less per idle terminal) until it sends something or something is sent to it. `0s`: never.",
    ),
    s(
        "tls.cert",
        "PEM file of the certificate chain, leaf first. Empty: no TLS. Read again on SIGHUP and when the file changes.",
    ),
    s(
        "tls.key",
        "PEM file of the private key (PKCS#8, PKCS#1 or SEC1).",
    ),
    secret(
        "cluster.secret",
        "Presented by a comet when it joins; a router refuses a join without it. Required on a router whose `router.rpc_addr` is not a loopback address.",
    ),
    s(
        "cluster.ca",
        "PEM CA of the link's mutual TLS: with `cluster.cert` and `cluster.key` the link runs over TLS with certificates checked both ways.",
    ),
    s(
        "cluster.cert",
        "PEM certificate of this router or comet on the link.",
    ),
    s("cluster.key", "PEM private key of `cluster.cert`."),
    s(
        "delivery.ack_timeout",
        "A pushed or IM delivery not acked within this goes to the offline rule.",
    ),
    s("delivery.callback_ack_timeout", "The same for callbacks."),
    s(
        "delivery.max_offline_callbacks",
        "Callbacks kept per offline terminal (identical bodies once, oldest dropped first).",
    ),
    s(
        "delivery.max_offline_im",
        "IMs kept per offline terminal (the latest).",
    ),
    s(
        "limits.max_body",
        "Largest frame body or WebSocket message of a registered terminal, and largest `/pub` body, in bytes.",
    ),
    s(
        "limits.max_unregistered_frame",
        "Largest frame or WebSocket message before REGISTER succeeded (at least 256).",
    ),
    s(
        "limits.max_connections",
        "Terminal connections one comet holds; one more is closed at once.",
    ),
    s(
        "limits.connections_per_ip",
        "Terminal connections one comet holds from one source address; 0: no limit.",
    ),
    s(
        "limits.im_inflight",
        "IMs of one connection not yet answered; beyond it the comet stops reading that connection.",
    ),
    s(
        "limits.conn_queue_bytes",
        "Bytes queued for one connection; a terminal that does not read beyond it is disconnected and its messages kept offline.",
    ),
    s(
        "limits.inbox_pending",
        "Messages accepted by `/pub`/`/mpub` and not yet done; beyond it `503` with `Retry-After: 1`, nothing taken.",
    ),
    s(
        "limits.outbox_pending",
        "Outbound messages not yet taken by the webhook or nsqd; beyond it an IM up is answered IMRESP 1.",
    ),
    s(
        "limits.max_mpub",
        "Bytes of one `/mpub` request; beyond it `413`.",
    ),
    s(
        "limits.http_concurrency",
        "Requests in progress on one HTTP listener; beyond it `503`.",
    ),
    s(
        "limits.http_header_timeout",
        "How long an HTTP client may take to send a request's headers (idle keep-alive connections too); then the connection is closed.",
    ),
    s(
        "limits.http_request_timeout",
        "How long one HTTP request may take, body included; then `408`.",
    ),
    s(
        "auth.mode",
        "`business`: REGISTER must match a login record from the business side. `open`: every REGISTER succeeds and creates its login record (demos, tests).",
    ),
    s(
        "bus.kind",
        "`embedded` (HTTP `/pub` in, webhook out, one machine) or `nsq`.",
    ),
    s(
        "bus.nsqd_tcp",
        "NSQ: the nsqd galopush publishes to (and consumes from when `bus.nsqlookupd_http` is empty).",
    ),
    s(
        "bus.nsqlookupd_http",
        "NSQ: nsqlookupd HTTP addresses that list the producers of the inbound topics.",
    ),
    s(
        "bus.channel",
        "NSQ: the channel the inbound topics are consumed on.",
    ),
    s(
        "bus.base64",
        "NSQ: publish bodies as base64 of the JSON, as the original galopush; raw JSON otherwise (both are read).",
    ),
    s(
        "bus.webhook_url",
        "Embedded bus: where outbound messages are POSTed (`?topic=T`, raw JSON); empty: kept in the store.",
    ),
    s(
        "bus.webhook_ca",
        "PEM CA to trust for an `https://` webhook instead of the system roots.",
    ),
    s(
        "bus.nsq_tls",
        "NSQ: upgrade every nsqd connection to TLS (IDENTIFY `tls_v1`).",
    ),
    s(
        "bus.nsq_ca",
        "NSQ: PEM CA to trust for nsqd instead of the system roots.",
    ),
    secret(
        "bus.nsq_auth_secret",
        "NSQ: the secret sent with AUTH when nsqd requires it.",
    ),
    s(
        "bus.max_in_flight",
        "Messages the router holds applied and not yet done (NSQ: the RDY count, split over the inbound topics).",
    ),
    s(
        "bus.durable",
        "Embedded bus: make each accepted message durable before answering `/pub`. Off trades the at-least-once promise across a crash for throughput.",
    ),
    s(
        "bus.heartbeat_interval",
        "NSQ: the heartbeat asked of nsqd (at least 1s); two missed ones drop the connection.",
    ),
    s(
        "store.kind",
        "`embedded` (on disk in `store.path`), `redis` (shared by several routers) or `memory` (tests).",
    ),
    s("store.path", "Directory of the embedded store."),
    s(
        "store.redis_url",
        "Redis of the `redis` store: `redis://[user:password@]host[:port][/db]` for one Redis, `redis+cluster://[user:password@]host[:port][,host[:port]...]` for a Redis Cluster (one node is enough; the others are found).",
    ),
    s(
        "store.redis_prefix",
        "Prefix of every Redis key, so several deployments can share one Redis; without `{` or `}` on a Redis Cluster.",
    ),
    s(
        "store.cache_bytes",
        "Bytes of memory the embedded store may keep as its page cache (B-tree pages read or written lately; at least 1 MiB). Login records are also kept in memory apart from it, so the cache mostly speeds up stored-message reads and the inbox's writes.",
    ),
    s("topics.user_online_state", "Inbound: login records."),
    s("topics.push", "Inbound: pushes."),
    s("topics.callback", "Inbound: callbacks."),
    s(
        "topics.msg_downward",
        "Inbound: instant messages to terminals.",
    ),
    s(
        "topics.session_timeout",
        "Inbound: session-timeout questions.",
    ),
    s(
        "topics.msg_upward",
        "Outbound: instant messages from terminals.",
    ),
    s(
        "topics.delivery_report",
        "Outbound: a delivery report per receiving terminal of each down-message (acked, stored, apns, fcm, dropped; SPEC §12); empty = no reports.",
    ),
    s(
        "apns.key_file",
        "Token auth: the .p8 key Apple issued (PEM, PKCS#8); the ES256 JWT it signs is renewed every 50 minutes. Excludes `apns.cert_file`.",
    ),
    s("apns.key_id", "Token auth: the key's id (the JWT's `kid`)."),
    s(
        "apns.team_id",
        "Token auth: the Apple developer team id (the JWT's `iss`).",
    ),
    s(
        "apns.cert_file",
        "Certificate auth: a PEM file holding the push certificate and its private key, presented as the client's identity. Excludes `apns.key_file`.",
    ),
    s(
        "apns.topic",
        "The app's bundle id, sent as `apns-topic`; required when APNs is on.",
    ),
    s(
        "apns.endpoint",
        "Base URL of the service; empty: `https://api.push.apple.com`, or `https://api.sandbox.push.apple.com` with `apns.sandbox`. Any URL for tests and proxies.",
    ),
    s(
        "apns.sandbox",
        "Use Apple's development host (apps signed for development); only without `apns.endpoint`.",
    ),
    s(
        "apns.ca",
        "PEM CAs to trust for the endpoint instead of the system roots (tests, private proxies).",
    ),
    s(
        "apns.ttl",
        "How long Apple keeps a notification for a phone that is off (`apns-expiration` = now + ttl).",
    ),
    s(
        "apns.retry_for",
        "How long a request answered 429 or 5xx (or not answered) is tried again, with back-off honouring `Retry-After`; then it counts as `failed`.",
    ),
    s(
        "apns.queue",
        "Notifications waiting for Apple; when it is full, more are dropped and counted (`outcome=\"dropped\"`), never waited for. At least 1.",
    ),
    s("apns.im", "Send IMs to Apple too, not only pushes."),
    s(
        "fcm.service_account",
        "The JSON key file of a Google service account: its `client_email`, `private_key` and `token_uri` give the OAuth2 access token, renewed before it expires.",
    ),
    s(
        "fcm.project_id",
        "The Firebase project messages are sent for; empty: the service account's `project_id`.",
    ),
    s(
        "fcm.endpoint",
        "Base URL of the service. Any URL for tests and proxies.",
    ),
    s(
        "fcm.ca",
        "PEM CAs to trust for the endpoint and the service account's `token_uri` instead of the system roots (tests, private proxies).",
    ),
    s(
        "fcm.ttl",
        "How long FCM keeps a message for a phone that is off (`android.ttl`).",
    ),
    s(
        "fcm.retry_for",
        "How long a request answered 429 or 5xx (or not answered) is tried again, with back-off honouring `Retry-After`; then it counts as `failed`.",
    ),
    s(
        "fcm.queue",
        "Messages waiting for FCM; when it is full, more are dropped and counted (`outcome=\"dropped\"`), never waited for. At least 1.",
    ),
    s("fcm.im", "Send IMs to FCM too, not only pushes."),
    s(
        "log.level",
        "A tracing filter, e.g. `info` or `galopush_server=debug,info`.",
    ),
    s("log.format", "`text` or `json`."),
];

/// The environment variable of a key: `comet.tcp_addr` → `GALOPUSH_COMET__TCP_ADDR`.
pub fn env_var(key: &str) -> String {
    let (section, name) = key.split_once('.').unwrap_or((key, ""));
    format!(
        "{ENV_PREFIX}{}__{}",
        section.to_ascii_uppercase(),
        name.to_ascii_uppercase()
    )
}

/// A value as TOML writes it.
fn toml_value(value: &toml::Value) -> String {
    value.to_string()
}

/// The default of a key, as TOML.
fn default_of(defaults: &toml::Table, key: &str) -> String {
    let (section, name) = key.split_once('.').unwrap_or((key, ""));
    defaults
        .get(section)
        .and_then(|s| s.get(name))
        .map(toml_value)
        .unwrap_or_default()
}

/// Every key of the configuration types, `section.key`, in the defaults' order.
pub fn keys_of_config() -> Vec<String> {
    let mut keys = Vec::new();
    for (section, table) in defaults_table() {
        if let Some(table) = table.as_table() {
            keys.extend(table.keys().map(|key| format!("{section}.{key}")));
        }
    }
    keys
}

fn settings_of(section: &str) -> impl Iterator<Item = &'static Setting> + '_ {
    SETTINGS
        .iter()
        .filter(move |s| s.key.split_once('.').is_some_and(|(sec, _)| sec == section))
}

/// A commented TOML of every key with its default (`galopush config --defaults`).
pub fn defaults_toml() -> String {
    let defaults = defaults_table();
    let mut out = String::from(
        "# galopush: every setting with its default (docs/configuration.md).\n\
         # Each can also be set by the environment variable named after it.\n",
    );
    for (section, about) in SECTIONS {
        let _ = write!(out, "\n# {about}\n[{section}]\n");
        for setting in settings_of(section) {
            let name = setting.key.split_once('.').map_or("", |(_, n)| n);
            let _ = write!(
                out,
                "# {} ({})\n{name} = {}\n",
                setting.doc,
                env_var(setting.key),
                default_of(&defaults, setting.key)
            );
        }
    }
    out
}

/// The effective configuration as TOML, secrets shown as `<redacted>` (`galopush config`).
pub fn effective_toml(config: &Config) -> String {
    let mut table = toml::Table::try_from(config).unwrap_or_default();
    for setting in SETTINGS.iter().filter(|s| s.secret) {
        let (section, name) = setting.key.split_once('.').unwrap_or((setting.key, ""));
        if let Some(value) = table
            .get_mut(section)
            .and_then(|s| s.as_table_mut())
            .and_then(|s| s.get_mut(name))
            && value.as_str().is_some_and(|v| !v.is_empty())
        {
            *value = toml::Value::String("<redacted>".into());
        }
    }
    let mut out = String::new();
    for (section, _) in SECTIONS {
        if let Some(values) = table.get(*section).and_then(|s| s.as_table()) {
            let _ = writeln!(out, "[{section}]");
            for setting in settings_of(section) {
                let name = setting.key.split_once('.').map_or("", |(_, n)| n);
                if let Some(value) = values.get(name) {
                    let _ = writeln!(out, "{name} = {}", toml_value(value));
                }
            }
            out.push('\n');
        }
    }
    out
}

/// `docs/configuration.md`, whole (`galopush config --markdown`).
pub fn markdown() -> String {
    let defaults = defaults_table();
    let mut out = String::from(
        "# Configuration\n\n\
         <!-- Generated by `galopush config --markdown > docs/configuration.md` from the\n\
         setting reference in crates/galopush-server/src/config/reference.rs; a test fails when\n\
         this file and the code differ. -->\n\n\
         galopush reads one TOML file (`--config FILE`, before or after the command name) and\n\
         then environment variables `GALOPUSH_<SECTION>__<KEY>` (upper case, a double underscore\n\
         between section and key), each overriding the key it names. With no file at all the\n\
         defaults below run `galopush standalone`. Durations are strings such as `\"500ms\"`,\n\
         `\"5s\"`, `\"11m\"`, `\"1h\"`; a list in the environment is written as a TOML array\n\
         (`[\"a:1\",\"b:2\"]`) or comma-separated (`a:1,b:2`).\n\n\
         Bad configuration stops the program at start with a message naming the key: an unknown\n\
         key in the file or an unknown `GALOPUSH_` variable, a value that does not parse, or\n\
         settings that cannot work together. `galopush config --check FILE` checks a file the\n\
         same way; `galopush config` prints the configuration in force (file, environment and\n\
         defaults, secrets redacted); `galopush config --defaults` prints every key with its\n\
         default as a commented TOML file.\n",
    );
    for (section, about) in SECTIONS {
        let _ = write!(
            out,
            "\n## `[{section}]`\n\n{about}\n\n| key | default | environment | meaning |\n|---|---|---|---|\n"
        );
        for setting in settings_of(section) {
            let default = default_of(&defaults, setting.key).replace('|', "\\|");
            let _ = writeln!(
                out,
                "| `{}` | `{}` | `{}` | {}{} |",
                setting.key,
                default,
                env_var(setting.key),
                setting.doc.replace('|', "\\|"),
                if setting.secret {
                    " A secret: `galopush config` shows it as `<redacted>`."
                } else {
                    ""
                }
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::path::Path;

    use super::*;

    #[test]
    fn every_key_is_documented_and_every_documented_key_exists() {
        let in_code: BTreeSet<String> = keys_of_config().into_iter().collect();
        let documented: BTreeSet<String> = SETTINGS.iter().map(|s| s.key.to_owned()).collect();
        let undocumented: Vec<_> = in_code.difference(&documented).collect();
        let unknown: Vec<_> = documented.difference(&in_code).collect();
        assert!(
            undocumented.is_empty() && unknown.is_empty(),
            "keys in the code without a reference entry: {undocumented:?}; entries without a key: {unknown:?}"
        );
        assert_eq!(SETTINGS.len(), documented.len(), "a key listed twice");
        for setting in SETTINGS {
            let section = setting.key.split_once('.').map_or("", |(s, _)| s);
            assert!(
                SECTIONS.iter().any(|(s, _)| *s == section),
                "{} is in no section",
                setting.key
            );
        }
    }

    #[test]
    fn docs_configuration_md_is_the_generated_reference() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/configuration.md");
        let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            on_disk == markdown(),
            "docs/configuration.md differs from the code's setting reference: run\n  \
             cargo run -q -- config --markdown > docs/configuration.md"
        );
    }

    #[test]
    fn the_defaults_file_loads_back_to_the_defaults() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("defaults.toml");
        std::fs::write(&path, defaults_toml()).expect("write");
        let loaded = Config::load(Some(&path), Vec::new()).expect("the defaults load");
        assert_eq!(loaded, Config::default());
    }

    #[test]
    fn secrets_are_redacted_and_the_rest_shown() {
        let config = Config::load(
            None,
            [
                ("GALOPUSH_API__TOKEN", "t0k3n"),
                ("GALOPUSH_CLUSTER__SECRET", "s3cr3t"),
                ("GALOPUSH_BUS__NSQ_AUTH_SECRET", "n5q"),
                ("GALOPUSH_COMET__ID", "comet-7"),
            ]
            .map(|(k, v)| (k.to_owned(), v.to_owned())),
        )
        .expect("loads");
        let shown = effective_toml(&config);
        for secret in ["t0k3n", "s3cr3t", "n5q"] {
            assert!(!shown.contains(secret), "{shown}");
        }
        assert!(shown.contains("token = \"<redacted>\""), "{shown}");
        assert!(shown.contains("id = \"comet-7\""), "{shown}");
        assert!(
            shown.contains("redis_prefix = \"galopush:\""),
            "unset secrets and ordinary keys stay: {shown}"
        );
    }
}
