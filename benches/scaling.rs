//! Replay throughput as threads are added, on the memory store, against the baselines in the
//! same run: a hand-rolled `sha256(fields)` + moka `get` (what scales as well as moka does) and
//! the `cached` crate's hit (one global lock). Each case runs at 1, 2, 4, … threads up to the
//! machine's cores (`SCALING_THREADS=1,2,16` picks others), on one hot key and on 10,000 keys,
//! every thread on its own current-thread runtime, a fixed number of calls each; the best of
//! three rounds is kept.
//!
//! ```sh
//! cargo bench --bench scaling            # SCALING_CALLS=200000 calls a thread by default
//! ```

#[path = "support/shape.rs"]
#[allow(dead_code)] // the breaker-guarded executor and the plain call are not measured here
mod shape;

use std::hint::black_box;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use shape::{ChargeRequest, cached_charge, idempotent_charge, raw_lookup, raw_prime, request};

const KEYS: u64 = 10_000;
const ROUNDS: usize = 3;

#[derive(Clone, Copy, PartialEq)]
enum Case {
    Idempotent,
    RawMoka,
    Cached,
}

/// Calls a second of `threads` threads making `calls` calls each of `case` over `keys` keys.
fn throughput(case: Case, threads: usize, keys: u64, calls: u64) -> f64 {
    let barrier = Barrier::new(threads + 1);
    let elapsed = std::thread::scope(|scope| {
        for thread in 0..threads {
            let barrier = &barrier;
            scope.spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .build()
                    .expect("runtime");
                let requests: Vec<ChargeRequest> = (0..keys.min(calls)).map(request).collect();
                barrier.wait();
                runtime.block_on(async {
                    // Threads start at different keys, so that on many keys they do not walk
                    // the same entries in step.
                    let offset = thread as u64 * 7919;
                    for n in 0..calls {
                        let req = requests[((n + offset) % requests.len() as u64) as usize].clone();
                        match case {
                            Case::Idempotent => {
                                black_box(idempotent_charge(req).await.expect("replay"));
                            }
                            Case::RawMoka => {
                                black_box(raw_lookup(&req).expect("primed"));
                            }
                            Case::Cached => {
                                black_box(cached_charge(req).await.expect("hit"));
                            }
                        }
                    }
                });
                barrier.wait();
            });
        }
        barrier.wait();
        let start = Instant::now();
        barrier.wait();
        start.elapsed()
    });
    (threads as u64 * calls) as f64 / elapsed.max(Duration::from_nanos(1)).as_secs_f64()
}

fn thread_counts() -> Vec<usize> {
    if let Ok(list) = std::env::var("SCALING_THREADS") {
        return list
            .split(',')
            .filter_map(|n| n.trim().parse().ok())
            .filter(|n| *n > 0)
            .collect();
    }
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let mut counts: Vec<usize> = std::iter::successors(Some(1usize), |n| Some(n * 2))
        .take_while(|n| *n <= cores)
        .collect();
    if counts.last() != Some(&cores) {
        counts.push(cores);
    }
    counts
}

fn main() {
    // `cargo bench` passes `--bench`; a filter argument is not supported here.
    let calls: u64 = std::env::var("SCALING_CALLS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(200_000);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        for n in 0..KEYS {
            let req = request(n);
            idempotent_charge(req.clone()).await.expect("prime");
            cached_charge(req.clone()).await.expect("prime");
            raw_prime(&req);
        }
    });
    let counts = thread_counts();
    println!(
        "replay throughput, million calls a second (best of {ROUNDS} rounds of {calls} calls a thread; {} cores)",
        std::thread::available_parallelism().map_or(1, usize::from)
    );
    println!(
        "{:<7} {:<8} {:>22} {:>22} {:>12} {:>20} {:>12}",
        "keys",
        "threads",
        "#[idempotent] replay",
        "raw sha256 + moka get",
        "cached hit",
        "idempotent / moka",
        "vs 1 thread"
    );
    for keys in [1, KEYS] {
        let mut first = None;
        for &threads in &counts {
            let best = |case: Case| {
                (0..ROUNDS)
                    .map(|_| throughput(case, threads, keys, calls))
                    .fold(0.0f64, f64::max)
                    / 1e6
            };
            let (idem, raw, cached) = (
                best(Case::Idempotent),
                best(Case::RawMoka),
                best(Case::Cached),
            );
            let base = *first.get_or_insert(idem);
            println!(
                "{:<7} {:<8} {:>22.2} {:>22.2} {:>12.2} {:>20.2} {:>12.2}",
                keys,
                threads,
                idem,
                raw,
                cached,
                idem / raw,
                idem / base
            );
        }
    }
}
