//! A hash map split into independently locked shards, for the tables many tasks touch at once
//! (the comet's connections, the router's locations and deliveries in flight): one short lock
//! on one shard per operation, never a global one.
//!
//! The tables hash with foldhash instead of std's SipHash: several times cheaper on the short
//! keys here (session ids, delivery ids, user ids), which are hashed for every delivery, and
//! still seeded at random per table, so keys from outside cannot be chosen in advance to
//! collide.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};

use parking_lot::{Mutex, MutexGuard};

/// The hasher of the server's in-memory tables.
pub type FastHasher = foldhash::fast::RandomState;

/// A `HashMap` with [`FastHasher`].
pub type FastMap<K, V> = HashMap<K, V, FastHasher>;

const SHARDS: usize = 64;

/// A sharded `HashMap`.
pub struct ShardedMap<K, V> {
    /// Picks the shard; seeded apart from the shards' own hashers, so that the keys of one
    /// shard do not share bits of their in-shard hash.
    hasher: FastHasher,
    shards: Box<[Mutex<FastMap<K, V>>]>,
}

impl<K: Hash + Eq, V> Default for ShardedMap<K, V> {
    fn default() -> Self {
        ShardedMap {
            hasher: FastHasher::default(),
            shards: (0..SHARDS)
                .map(|_| Mutex::new(FastMap::default()))
                .collect(),
        }
    }
}

impl<K: Hash + Eq, V> ShardedMap<K, V> {
    /// The locked shard that holds `key`.
    pub fn lock<Q: Hash + ?Sized>(&self, key: &Q) -> MutexGuard<'_, FastMap<K, V>> {
        let i = self.hasher.hash_one(key) as usize % SHARDS;
        self.shards[i].lock()
    }

    /// Every shard in turn, locked one at a time.
    pub fn each_shard(&self, mut f: impl FnMut(&mut FastMap<K, V>)) {
        for shard in self.shards.iter() {
            f(&mut shard.lock());
        }
    }
}
