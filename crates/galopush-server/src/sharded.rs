//! A hash map split into independently locked shards, for the tables many tasks touch at once
//! (the comet's connections, the router's locations and deliveries in flight): one short lock
//! on one shard per operation, never a global one.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, RandomState};

use parking_lot::{Mutex, MutexGuard};

const SHARDS: usize = 64;

/// A sharded `HashMap`.
pub struct ShardedMap<K, V> {
    hasher: RandomState,
    shards: Box<[Mutex<HashMap<K, V>>]>,
}

impl<K: Hash + Eq, V> Default for ShardedMap<K, V> {
    fn default() -> Self {
        ShardedMap {
            hasher: RandomState::new(),
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }
}

impl<K: Hash + Eq, V> ShardedMap<K, V> {
    /// The locked shard that holds `key`.
    pub fn lock<Q: Hash + ?Sized>(&self, key: &Q) -> MutexGuard<'_, HashMap<K, V>> {
        let i = self.hasher.hash_one(key) as usize % SHARDS;
        self.shards[i].lock()
    }

    /// Every shard in turn, locked one at a time.
    pub fn each_shard(&self, mut f: impl FnMut(&mut HashMap<K, V>)) {
        for shard in self.shards.iter() {
            f(&mut shard.lock());
        }
    }
}
