//! With the `tracing` feature, a call reports what it did: claim, execute, replay, release,
//! takeover and store errors, each an event inside the call's `idempotent` span.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::AppError;
use idempotency::{Error, Fingerprint, Idempotency, Key, MemoryStore};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber};

mod common;

/// Keeps the message of every event (and the name of every span) it sees.
#[derive(Default)]
struct Capture {
    lines: Mutex<Vec<String>>,
    next_span: AtomicU64,
}

struct Message(String);

impl Visit for Message {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0 = format!("{value:?}");
        }
    }
}

impl Subscriber for Capture {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }

    fn new_span(&self, attributes: &Attributes<'_>) -> Id {
        self.lines
            .lock()
            .expect("lock")
            .push(format!("span {}", attributes.metadata().name()));
        Id::from_u64(self.next_span.fetch_add(1, Ordering::Relaxed) + 1)
    }

    fn record(&self, _: &Id, _: &Record<'_>) {}

    fn record_follows_from(&self, _: &Id, _: &Id) {}

    fn event(&self, event: &Event<'_>) {
        let mut message = Message(String::new());
        event.record(&mut message);
        self.lines.lock().expect("lock").push(format!(
            "{} {}",
            event.metadata().level(),
            message.0
        ));
    }

    fn enter(&self, _: &Id) {}

    fn exit(&self, _: &Id) {}
}

fn key(name: &str) -> Key {
    Key::derive("tracing::events", 1, &name).expect("key")
}

fn fingerprint() -> Fingerprint {
    Fingerprint::of(&"args").expect("fingerprint")
}

#[test]
fn every_step_of_a_call_is_an_event() {
    let capture = Arc::new(Capture::default());
    let dispatch = tracing::Dispatch::from(Arc::clone(&capture));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    tracing::dispatcher::with_default(&dispatch, || {
        runtime.block_on(async {
            let idempotency = Idempotency::new(MemoryStore::new());
            // Executed, then replayed.
            for _ in 0..2 {
                let out: Result<u32, Error> = idempotency
                    .run(key("ok"), fingerprint(), || async { Ok(1) })
                    .await;
                assert_eq!(out.expect("ok"), 1);
            }
            // A failed body releases its claim.
            let failed: Result<u32, AppError> = idempotency
                .run(key("err"), fingerprint(), || async {
                    Err(AppError::Gateway("declined".into()))
                })
                .await;
            assert!(matches!(failed, Err(AppError::Gateway(_))));
            // An owner whose lease passed is taken over.
            let hung = idempotency
                .call(key("hung"), fingerprint())
                .lease(Duration::from_millis(20))
                .run(|| async {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                    Ok::<u32, Error>(0)
                });
            let _ = tokio::time::timeout(Duration::from_millis(5), hung).await;
            tokio::time::sleep(Duration::from_millis(40)).await;
            let taken: Result<u32, Error> = idempotency
                .run(key("hung"), fingerprint(), || async { Ok(2) })
                .await;
            assert_eq!(taken.expect("taken over"), 2);
            // A store that is down: the body does not run.
            let down = Idempotency::new(common::DOWN);
            let refused: Result<u32, Error> = down
                .run(key("down"), fingerprint(), || async { Ok(3) })
                .await;
            assert!(matches!(refused, Err(Error::Store { .. })), "{refused:?}");
        });
    });
    let lines = capture.lines.lock().expect("lock").clone();
    for expected in [
        "span idempotent",
        "DEBUG claimed",
        "DEBUG execute",
        "DEBUG replay",
        "DEBUG the body returned an error; releasing the claim",
        "DEBUG released the claim",
        "INFO took over a claim whose lease had passed",
        "ERROR store error on claim; the body does not run",
    ] {
        assert!(
            lines.iter().any(|line| line == expected),
            "no `{expected}` among {lines:#?}"
        );
    }
}
