//! The properties the `redis_replies` fuzz target in `fuzz/` checks, here (beside the private
//! readers) so that the corpus replay test (`crates/galopush/tests/fuzz_corpus.rs`) runs the very
//! same checks on a stable toolchain. They take any bytes; a panic is a bug.

use bytes::Bytes;
use redis::Value;

use super::{
    StoredItem, array, bulk, decode_callback, decode_im, decode_login, decode_mask, decode_offline,
    decode_queued, encode_login, encode_queued, hash_pairs, integer, reply,
};

/// What the store reads from Redis, by hand: the input as one RESP reply (Redis's own wire
/// form) through every reply reader, and the raw input as a stored value (a queued bus message,
/// a stored callback or IM, a login record). A value read back from what it is written as must
/// read the same.
pub fn redis_replies(data: &[u8]) {
    if let Ok(value) = redis::parse_redis_value(data) {
        replies(value);
    }
    stored_values(data);
}

/// Every reader of a whole reply, as the store's operations use them.
fn replies(value: Value) {
    if let Ok(Some(bytes)) = reply(value.clone()).and_then(bulk) {
        let _ = decode_login(&bytes);
    }
    let _ = reply(value.clone()).and_then(decode_mask);
    if let Ok(offline) = decode_offline(value.clone()) {
        for im in offline.ims {
            assert_eq!(decode_im(Value::BulkString(stored_im(&im))).ok(), Some(im));
        }
        for callback in offline.callbacks {
            let stored = [format!("{}:", callback.id).as_bytes(), &callback.body].concat();
            assert_eq!(
                decode_callback(Value::BulkString(stored)).ok(),
                Some(callback)
            );
        }
    }
    if let Ok(seqs) = array(value.clone()) {
        let _ = seqs.into_iter().map(integer).collect::<Result<Vec<_>, _>>();
    }
    if let Ok(pairs) = hash_pairs(value) {
        for (seq, stored) in pairs {
            queued_round_trip(&seq, stored);
        }
    }
}

/// The hand-parsed stored values, read from the raw bytes.
fn stored_values(data: &[u8]) {
    queued_round_trip(b"1", data.to_vec());
    if let Ok(im) = decode_im(Value::BulkString(data.to_vec())) {
        assert_eq!(decode_im(Value::BulkString(stored_im(&im))).ok(), Some(im));
    }
    let _ = decode_callback(Value::BulkString(data.to_vec()));
    if let Ok(record) = decode_login(data) {
        let again = encode_login(record.clone()).expect("a login record encodes");
        assert_eq!(decode_login(&again).ok(), Some(record));
    }
}

/// A queued bus message read from `stored` must read the same from its own encoding.
fn queued_round_trip(seq: &[u8], stored: Vec<u8>) {
    if let Ok(message) = decode_queued(seq, stored) {
        let again = encode_queued(&message.topic, &message.body);
        assert_eq!(
            decode_queued(message.seq.to_string().as_bytes(), again).ok(),
            Some(message)
        );
    }
}

/// An IM as the store's script writes it: `<id>:<flag>:<body>`.
fn stored_im(im: &StoredItem) -> Vec<u8> {
    let body: &Bytes = &im.body;
    [format!("{}:{}:", im.id, im.flag).as_bytes(), body].concat()
}
