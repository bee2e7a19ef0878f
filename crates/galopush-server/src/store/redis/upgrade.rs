//! Upgrading a Redis store written before hash tags: its keys are renamed in place.
//!
//! The old scheme had no hash tags (`login:<uid>`, `push:<bit>:<uid>`, `callbacks:<bit>:<uid>`,
//! `ims:<bit>:<uid>`, `inbox`, `outbox`) and one store-wide counter, `seq`, which no store of the
//! current scheme writes: while it exists, old names may be left. Opening a store on one Redis
//! then SCANs the keys under the prefix and renames each old one (RENAME: the value is kept, not
//! copied), raising the counter of the renamed key's ids to the old counter's value, so no id or
//! push version given before is given again; then deletes the old counter. A key whose new name is
//! already taken is kept under its old name, with a warning. Routers opening at the same time may
//! all do it: each rename is one atomic step done once.
//!
//! A Redis Cluster never held the old scheme (its keys spread over slots the old scripts could
//! not reach), so only one Redis is upgraded. Routers of the old version must be stopped first:
//! they would go on writing the old names.

use std::fmt::Display;

use redis::aio::ConnectionManager;

use super::keys::Keys;
use super::{Call, StoreError, Value, eval};

/// Keys asked for per SCAN.
const SCAN_COUNT: usize = 1000;

/// Renames the keys of the old scheme under the prefix, if the old counter says there may be
/// some.
pub(super) async fn upgrade(
    conn: &ConnectionManager,
    keys: &Keys,
    name: &str,
    hash: &str,
) -> Result<(), StoreError> {
    let failed = |e: &dyn Display| {
        StoreError::Unavailable(format!(
            "{name}: cannot rename the store's keys to the current scheme: {e}"
        ))
    };
    let mut conn = conn.clone();
    let old_counter = keys.old_counter();
    let floor: Option<u64> = redis::cmd("GET")
        .arg(&old_counter)
        .query_async(&mut conn)
        .await
        .map_err(|e| failed(&e))?;
    let Some(floor) = floor else {
        return Ok(());
    };
    tracing::info!("{name} holds a store of the key scheme before hash tags; renaming its keys");
    let (mut renamed, mut kept) = (0usize, 0usize);
    let mut cursor = 0u64;
    loop {
        let (next, found): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(keys.pattern())
            .arg("COUNT")
            .arg(SCAN_COUNT)
            .query_async(&mut conn)
            .await
            .map_err(|e| failed(&e))?;
        let calls: Vec<Call> = found
            .iter()
            .filter_map(|old| {
                let old = std::str::from_utf8(old).ok()?;
                let (new, counter) = keys.renamed(old)?;
                let names = [old.to_owned(), new].into_iter().chain(counter).collect();
                Some(Call::new("rename", names).number(floor))
            })
            .collect();
        if !calls.is_empty() {
            let refs: Vec<&Call> = calls.iter().collect();
            let replies = eval(conn.clone(), hash, &refs)
                .await
                .map_err(|e| failed(&e))?;
            for (call, reply) in calls.iter().zip(replies) {
                match reply {
                    Value::Int(1) => renamed += 1,
                    Value::Int(0) => {
                        kept += 1;
                        tracing::warn!(
                            old = call.keys[0],
                            new = call.keys[1],
                            "the new name of an old key is taken; the old key is kept as it is"
                        );
                    }
                    other => return Err(failed(&format!("rename answered {other:?}"))),
                }
            }
        }
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
    let _: () = redis::cmd("DEL")
        .arg(&old_counter)
        .query_async(&mut conn)
        .await
        .map_err(|e| failed(&e))?;
    tracing::info!(renamed, kept, "{name}: the store's keys are renamed");
    Ok(())
}
