//! The Redis backend of [`KvStore`]: shared by every gateway instance that
//! points at the same server, so rate limits and caches hold across a
//! scaled-out fleet. One multiplexed connection, reconnected automatically.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use redis::{AsyncCommands, Script, aio::ConnectionManager};

use super::{KvError, KvStore};

/// `INCRBY` that sets the expiry only when it created the key, atomically.
const INCR_SCRIPT: &str = r"
local existed = redis.call('EXISTS', KEYS[1])
local v = redis.call('INCRBY', KEYS[1], ARGV[1])
if existed == 0 and ARGV[2] ~= '' then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return v
";

/// A key-value store on a Redis server.
pub struct RedisKv {
    conn: ConnectionManager,
    incr: Script,
}

impl RedisKv {
    /// Connect to `url` (`redis://host:port/db`).
    pub async fn connect(url: &str) -> Result<RedisKv, KvError> {
        let client = redis::Client::open(url).map_err(unavailable)?;
        let conn = ConnectionManager::new(client).await.map_err(unavailable)?;
        Ok(RedisKv {
            conn,
            incr: Script::new(INCR_SCRIPT),
        })
    }
}

fn unavailable(e: redis::RedisError) -> KvError {
    KvError::Unavailable {
        source: Box::new(e),
    }
}

fn millis(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
}

#[async_trait]
impl KvStore for RedisKv {
    async fn get(&self, key: &str) -> Result<Option<Bytes>, KvError> {
        let mut c = self.conn.clone();
        let v: Option<Vec<u8>> = c.get(key).await.map_err(unavailable)?;
        Ok(v.map(Bytes::from))
    }

    async fn set(&self, key: &str, value: Bytes, ttl: Option<Duration>) -> Result<(), KvError> {
        let mut c = self.conn.clone();
        match ttl {
            Some(ttl) => {
                c.pset_ex::<_, _, ()>(key, value.as_ref(), millis(ttl))
                    .await
            }
            None => c.set::<_, _, ()>(key, value.as_ref()).await,
        }
        .map_err(unavailable)
    }

    async fn delete(&self, key: &str) -> Result<bool, KvError> {
        let mut c = self.conn.clone();
        let n: u64 = c.del(key).await.map_err(unavailable)?;
        Ok(n > 0)
    }

    async fn incr(
        &self,
        key: &str,
        delta: i64,
        ttl_on_create: Option<Duration>,
    ) -> Result<i64, KvError> {
        let mut c = self.conn.clone();
        let ttl = ttl_on_create
            .map(|t| millis(t).to_string())
            .unwrap_or_default();
        self.incr
            .key(key)
            .arg(delta)
            .arg(ttl)
            .invoke_async(&mut c)
            .await
            .map_err(|e| {
                let msg = e.detail().unwrap_or_default();
                if msg.contains("not an integer") {
                    KvError::NotANumber {
                        key: key.to_string(),
                    }
                } else if msg.contains("overflow") {
                    KvError::Overflow {
                        key: key.to_string(),
                    }
                } else {
                    unavailable(e)
                }
            })
    }
}
