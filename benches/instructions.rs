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
                    "usage: instructions <plain|cached|raw|replay|breaker|first|hash> <calls> (run under callgrind; see scripts/instructions.sh)"
                );
            }
        }
    });
}
