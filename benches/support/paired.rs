//! The paired measurement of two sides of a ratio, shared by the benches that print one:
//! alternating rounds on one runtime, so load from other processes on a shared machine falls
//! on both sides alike.

use std::future::Future;
use std::hint::black_box;
use std::time::{Duration, Instant};

/// Per-call time of `a` over per-call time of `b`, in alternating rounds of `calls` calls
/// each (which side goes first alternates too): the median ratio and its quartiles.
pub(crate) fn paired<A, FA, B, FB>(
    runtime: &tokio::runtime::Runtime,
    rounds: usize,
    calls: usize,
    mut a: A,
    mut b: B,
) -> (f64, f64, f64)
where
    A: FnMut() -> FA,
    FA: Future,
    B: FnMut() -> FB,
    FB: Future,
{
    let mut ratios = Vec::with_capacity(rounds);
    for round in 0..rounds {
        let mut times = [Duration::ZERO; 2];
        for side in [round % 2, 1 - round % 2] {
            let started = Instant::now();
            runtime.block_on(async {
                for _ in 0..calls {
                    if side == 0 {
                        black_box(a().await);
                    } else {
                        black_box(b().await);
                    }
                }
            });
            times[side] = started.elapsed();
        }
        ratios.push(times[0].as_secs_f64() / times[1].as_secs_f64());
    }
    ratios.sort_by(f64::total_cmp);
    (
        ratios[rounds / 4],
        ratios[rounds / 2],
        ratios[rounds * 3 / 4],
    )
}
