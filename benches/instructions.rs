//! Instruction counts per call, for `valgrind --tool=callgrind`: unlike wall-clock time they
//! do not move when the machine is busy. `scripts/instructions.sh` runs every case twice (N and
//! 2N calls) and prints the difference per call, which cancels start-up.
//!
//! Cases share the function shape of `benches/overhead.rs`.

#[path = "support/shape.rs"]
mod shape;

use std::hint::black_box;

use shape::{
    cached_charge, guarded_charge, idempotent_charge, plain, raw_lookup, raw_prime, request,
};

fn main() {
    let mut args = std::env::args().skip(1).filter(|arg| arg != "--bench");
    let case = args.next().unwrap_or_default();
    let calls: u64 = args.next().and_then(|n| n.parse().ok()).unwrap_or(0);
    #[cfg(all(feature = "redis", feature = "macros"))]
    if let Some(done) = redis_cases::run(&case, calls) {
        return done;
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let req = request(1);
    runtime.block_on(async {
        match case.as_str() {
            "plain" => {
                for _ in 0..calls {
                    black_box(plain(black_box(req.clone())).await.ok());
                }
            }
            "cached" => {
                for _ in 0..=calls {
                    black_box(cached_charge(black_box(req.clone())).await.ok());
                }
            }
            "raw" => {
                raw_prime(&req);
                for _ in 0..calls {
                    let req = black_box(req.clone());
                    black_box(raw_lookup(&req));
                }
            }
            "replay" => {
                for _ in 0..=calls {
                    black_box(idempotent_charge(black_box(req.clone())).await.ok());
                }
            }
            "breaker" => {
                for _ in 0..=calls {
                    black_box(guarded_charge(black_box(req.clone())).await.ok());
                }
            }
            "first" => {
                for n in 0..calls {
                    let req = request(1_000_000 + n);
                    black_box(idempotent_charge(black_box(req)).await.ok());
                }
            }
            "hash" => {
                for _ in 0..calls {
                    let mut builder = idempotency::DigestBuilder::new();
                    builder.push(black_box(&req));
                    black_box(builder.finish().ok());
                }
            }
            _ => {
                eprintln!(
                    "usage: instructions <plain|cached|raw|replay|breaker|first|hash|redis_get|redis_replay|redis_local_replay> <calls> (run under callgrind; see scripts/instructions.sh; the redis cases need the redis feature and REDIS_URL's server)"
                );
            }
        }
    });
}

/// The client's side of a Redis replay against a raw `GET` of the same record, 64 in flight on
/// one connection (the throughput case of `benches/redis.rs`): instructions per call of 64.
/// `redis_local_replay`: one replay a call, answered by the executor's local replay cache.
#[cfg(all(feature = "redis", feature = "macros"))]
mod redis_cases {
    use std::hint::black_box;
    use std::time::Duration;

    use futures::future::join_all;
    use idempotency::redis::aio::{ConnectionManager, ConnectionManagerConfig};
    use idempotency::redis::{self, AsyncCommands as _};
    use idempotency::{Idempotency, Key, RedisStore, Token, idempotent};

    use super::shape::{ChargeRequest, PaymentError, Receipt, receipt, request};

    const IN_FLIGHT: usize = 64;

    struct Payments {
        idempotency: Idempotency,
    }

    impl Payments {
        #[idempotent(store = self.idempotency, key = req.order_id, name = "instructions.charge")]
        async fn charge(&self, req: &ChargeRequest) -> Result<Receipt, PaymentError> {
            Ok(receipt(req))
        }
    }

    /// `Some` when `case` is one of the Redis cases.
    pub(super) fn run(case: &str, calls: u64) -> Option<()> {
        if !matches!(case, "redis_get" | "redis_replay" | "redis_local_replay") {
            return None;
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let url =
                std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
            let client = redis::Client::open(url.as_str()).expect("a Redis URL");
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(Duration::from_secs(1)))
                .set_response_timeout(Some(Duration::from_secs(2)));
            let connection = ConnectionManager::new_with_config(client, config)
                .await
                .expect("Redis at REDIS_URL");
            let store = RedisStore::builder(connection.clone())
                .prefix(format!("idempotency-instructions:{}:", Token::random()))
                .response_timeout(Duration::from_secs(2))
                .build()
                .expect("a store");
            let payments = Payments {
                idempotency: if case == "redis_local_replay" {
                    Idempotency::builder(store.clone())
                        .local_cache(1 << 20, Duration::from_secs(60))
                        .build()
                } else {
                    Idempotency::new(store.clone())
                },
            };
            let req = request(1);
            payments.charge(&req).await.expect("the first call");
            let key = Key::derive("instructions.charge", 1, &req.order_id).expect("a key");
            let record_key = store.redis_key(&key);
            for _ in 0..calls {
                if case == "redis_local_replay" {
                    // One at a time: every replay is a hit of the local replay cache.
                    black_box(payments.charge(&req).await.expect("a replay"));
                } else if case == "redis_get" {
                    black_box(
                        join_all((0..IN_FLIGHT).map(|_| {
                            let mut connection = connection.clone();
                            let record_key = &record_key;
                            async move {
                                let value: Vec<u8> = connection.get(record_key).await.expect("GET");
                                value
                            }
                        }))
                        .await,
                    );
                } else {
                    black_box(
                        join_all(
                            (0..IN_FLIGHT)
                                .map(|_| async { payments.charge(&req).await.expect("a replay") }),
                        )
                        .await,
                    );
                }
            }
            let _: () = connection.clone().del(&record_key).await.expect("DEL");
        });
        Some(())
    }
}
