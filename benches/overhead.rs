//! What `#[idempotent]` costs on the in-process memory store, against baselines measured in
//! the same run: a plain call, the `cached` crate's `#[cached]` hit on the same function
//! shape, and a hand-rolled `sha256(args)` + moka `get`.
//!
//! `cargo bench --bench overhead` prints the ratios at the end (from criterion's medians).

use std::alloc::{GlobalAlloc, Layout, System};
#[path = "support/shape.rs"]
mod shape;

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use criterion::Criterion;
use shape::{
    cached_charge, guarded_charge, idempotent_charge, plain, raw_lookup, raw_prime, request,
};

/// Counts heap allocations, to report allocations per call.
struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

#[allow(unsafe_code)]
// SAFETY: forwards to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const GROUP: &str = "overhead";

fn benches(c: &mut Criterion, runtime: &tokio::runtime::Runtime) {
    let req = request(1);
    runtime.block_on(async {
        idempotent_charge(req.clone()).await.expect("prime");
        guarded_charge(req.clone()).await.expect("prime");
        cached_charge(req.clone()).await.expect("prime");
    });
    raw_prime(&req);

    let mut group = c.benchmark_group(GROUP);
    group.bench_function("plain_call", |b| {
        b.to_async(runtime).iter(|| plain(black_box(req.clone())))
    });
    group.bench_function("cached_hit", |b| {
        b.to_async(runtime)
            .iter(|| cached_charge(black_box(req.clone())))
    });
    group.bench_function("raw_sha256_moka_get", |b| {
        b.to_async(runtime).iter(|| {
            let req = black_box(req.clone());
            async move { raw_lookup(&req) }
        })
    });
    group.bench_function("idempotent_replay", |b| {
        b.to_async(runtime)
            .iter(|| idempotent_charge(black_box(req.clone())))
    });
    group.bench_function("idempotent_replay_breaker", |b| {
        b.to_async(runtime)
            .iter(|| guarded_charge(black_box(req.clone())))
    });
    let next = AtomicU64::new(1_000_000);
    group.bench_function("idempotent_first_execution", |b| {
        b.to_async(runtime).iter(|| {
            let req = request(next.fetch_add(1, Ordering::Relaxed));
            idempotent_charge(black_box(req))
        })
    });
    group.finish();
}

fn allocations_per_call(runtime: &tokio::runtime::Runtime) {
    let req = request(1);
    let calls = 1000;
    let count = |label: &str, allocations: usize| {
        println!(
            "allocations per call, {label}: {:.1}",
            allocations as f64 / calls as f64
        );
    };
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    runtime.block_on(async {
        for _ in 0..calls {
            black_box(plain(req.clone()).await.ok());
        }
    });
    count(
        "plain call (clones the request)",
        ALLOCATIONS.load(Ordering::Relaxed) - before,
    );
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    runtime.block_on(async {
        for _ in 0..calls {
            black_box(idempotent_charge(req.clone()).await.ok());
        }
    });
    count(
        "idempotent replay (clones the request)",
        ALLOCATIONS.load(Ordering::Relaxed) - before,
    );
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    for _ in 0..calls {
        let mut builder = idempotency::DigestBuilder::new();
        builder.push(black_box(&req));
        black_box(builder.finish().ok());
    }
    count(
        "hashing the arguments",
        ALLOCATIONS.load(Ordering::Relaxed) - before,
    );
}

fn median_ns(name: &str) -> Option<f64> {
    let path = format!("target/criterion/{GROUP}/{name}/new/estimates.json");
    let text = std::fs::read_to_string(path).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    json["median"]["point_estimate"].as_f64()
}

fn print_ratios() {
    let names = [
        "plain_call",
        "cached_hit",
        "raw_sha256_moka_get",
        "idempotent_replay",
        "idempotent_replay_breaker",
        "idempotent_first_execution",
    ];
    println!("\nmedians (ns):");
    for name in names {
        if let Some(ns) = median_ns(name) {
            println!("  {name:<28} {ns:>9.1}");
        }
    }
    let ratio = |a: &str, b: &str, target: &str| {
        if let (Some(a_ns), Some(b_ns)) = (median_ns(a), median_ns(b)) {
            println!("  {a} / {b} = {:.3}  ({target})", a_ns / b_ns);
        }
    };
    println!("ratios:");
    ratio("idempotent_replay", "cached_hit", "target <= 2.0");
    ratio("idempotent_replay", "raw_sha256_moka_get", "target <= 1.3");
    ratio(
        "idempotent_replay_breaker",
        "idempotent_replay",
        "a closed store breaker: target <= 1.03",
    );
    ratio("idempotent_replay", "plain_call", "for scale");
    ratio("idempotent_first_execution", "plain_call", "for scale");
}

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut criterion = Criterion::default().configure_from_args();
    benches(&mut criterion, &runtime);
    criterion.final_summary();
    allocations_per_call(&runtime);
    print_ratios();
}
