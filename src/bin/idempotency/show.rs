//! What the commands print: aligned text for people, one JSON document with `--json`.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use idempotency::store::{ListedNamespace, ListedState, Listing, StoreStats};
use idempotency::{Inspection, Key, StoredOutcome, output};
use serde_json::{Value, json};

use crate::Failure;

pub(crate) struct Output {
    json: bool,
}

impl Output {
    pub(crate) fn new(json: bool) -> Output {
        Output { json }
    }

    fn print_json(&self, value: &Value) {
        println!("{value:#}");
    }

    pub(crate) fn inspection(&self, key: &Key, found: Option<&Inspection>) {
        let mut fields: Vec<(&str, String)> = vec![("key", key.to_string())];
        let mut document = json!({ "key": key.to_string() });
        match found {
            None => {
                fields.push(("state", "none (no record, or it expired)".into()));
                document["state"] = json!("none");
            }
            Some(Inspection::InProgress {
                holder,
                fingerprint,
                lease_until,
            }) => {
                fields.push(("state", "in progress".into()));
                fields.push(("lease until", time(*lease_until)));
                fields.push(("holder", holder.to_string()));
                fields.push(("fingerprint", fingerprint.to_string()));
                document["state"] = json!("in_progress");
                document["lease_until"] = json!(rfc3339(*lease_until));
                document["holder"] = json!(holder.to_string());
                document["fingerprint"] = json!(fingerprint.to_string());
            }
            Some(Inspection::Completed {
                fingerprint,
                outcome,
                recorded_at,
                expires_at,
                output_len,
                output: stored,
                ..
            }) => {
                let (name, detail) = outcome_text(outcome);
                fields.push(("state", format!("completed ({detail})")));
                fields.push((
                    "recorded at",
                    recorded_at.map_or_else(|| "not kept (a record written by 0.1)".into(), time),
                ));
                fields.push(("expires at", time(*expires_at)));
                fields.push(("fingerprint", fingerprint.to_string()));
                fields.push(("output", format!("{output_len} bytes")));
                document["state"] = json!("completed");
                document["outcome"] = json!(name);
                document["recorded_at"] = json!(recorded_at.map(rfc3339));
                document["expires_at"] = json!(rfc3339(*expires_at));
                document["fingerprint"] = json!(fingerprint.to_string());
                document["output_len"] = json!(output_len);
                if let Some(bytes) = stored {
                    let value = output::to_json(bytes)
                        .unwrap_or_else(|error| json!({ "unreadable": error.to_string() }));
                    fields.push(("stored", value.to_string()));
                    document["output"] = value;
                }
                if let StoredOutcome::NotStored(not_stored) = outcome {
                    document["not_stored"] = json!(not_stored.to_string());
                }
            }
            Some(other) => {
                fields.push(("state", format!("{other:?}")));
                document["state"] = json!("unknown");
            }
        }
        if self.json {
            self.print_json(&document);
        } else {
            for (name, value) in fields {
                println!("{name:<12} {value}");
            }
        }
    }

    pub(crate) fn forgotten(&self, key: &Key, removed: bool) {
        if self.json {
            self.print_json(&json!({ "key": key.to_string(), "removed": removed }));
        } else if removed {
            println!("removed {key}: the next call with this key runs its body again");
        } else {
            println!("no record under {key}: nothing removed");
        }
    }

    pub(crate) fn listing(&self, listing: &Listing) {
        let next = listing.next.as_ref().map(ToString::to_string);
        if self.json {
            let records: Vec<Value> = listing
                .records
                .iter()
                .map(|record| {
                    let (state, until) = state_and_until(&record.state);
                    json!({
                        "id": record.id,
                        "namespace": namespace_json(&record.namespace),
                        "state": state,
                        "until": until.map(rfc3339),
                    })
                })
                .collect();
            self.print_json(&json!({ "records": records, "next": next }));
            return;
        }
        let rows: Vec<[String; 4]> = listing
            .records
            .iter()
            .map(|record| {
                let (state, until) = state_and_until(&record.state);
                [
                    record.id.clone(),
                    record.namespace.to_string(),
                    state.replace('_', " "),
                    until.map(time).unwrap_or_default(),
                ]
            })
            .collect();
        table(["ID", "NAMESPACE", "STATE", "UNTIL"], &rows);
        println!("{} records", rows.len());
        if let Some(next) = next {
            println!("next page: --after {next}");
        }
    }

    pub(crate) fn stats(&self, stats: &StoreStats, names: &HashMap<String, String>) {
        let name = |namespace: &ListedNamespace| match namespace {
            ListedNamespace::Hashed(hash) => names
                .get(hash)
                .cloned()
                .unwrap_or_else(|| namespace.to_string()),
            other => other.to_string(),
        };
        if self.json {
            let namespaces: Vec<Value> = stats
                .namespaces
                .iter()
                .map(|n| {
                    json!({
                        "namespace": name(&n.namespace),
                        "in_progress": n.in_progress,
                        "lease_passed": n.lease_passed,
                        "completed": n.completed,
                        "expired": n.expired,
                        "other": n.other,
                        "total": n.total(),
                    })
                })
                .collect();
            self.print_json(&json!({ "namespaces": namespaces, "complete": stats.complete }));
            return;
        }
        let rows: Vec<[String; 7]> = stats
            .namespaces
            .iter()
            .map(|n| {
                [
                    name(&n.namespace),
                    n.in_progress.to_string(),
                    n.lease_passed.to_string(),
                    n.completed.to_string(),
                    n.expired.to_string(),
                    n.other.to_string(),
                    n.total().to_string(),
                ]
            })
            .collect();
        table(
            [
                "NAMESPACE",
                "IN PROGRESS",
                "LEASE PASSED",
                "COMPLETED",
                "EXPIRED",
                "OTHER",
                "TOTAL",
            ],
            &rows,
        );
        if rows.is_empty() {
            println!("(no records)");
        }
        if !stats.complete {
            println!("(partial: stopped at --max-records)");
        }
    }

    pub(crate) fn purged(&self, deleted: Option<u64>) {
        match (self.json, deleted) {
            (true, Some(n)) => self.print_json(&json!({ "deleted": n })),
            (true, None) => self.print_json(&json!({ "deleted": 0, "expires_itself": true })),
            (false, Some(n)) => println!("deleted {n} expired records"),
            (false, None) => {
                println!("nothing to purge: this store drops expired records itself");
            }
        }
    }
}

/// A failure on stderr (with `--json`, as `{"error": …}` on stdout too, for scripts).
pub(crate) fn failure(failure: &Failure, json: bool) {
    let message = match failure {
        Failure::NotFound => return,
        Failure::Usage(message)
        | Failure::Store(message)
        | Failure::Refused(message)
        | Failure::Unsupported(message) => message,
    };
    if json {
        println!(
            "{:#}",
            json!({ "error": message, "exit_code": failure.code() })
        );
    }
    eprintln!("idempotency: {message}");
}

/// An error and its sources, `: `-separated.
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

fn outcome_text(outcome: &StoredOutcome) -> (&'static str, String) {
    match outcome {
        StoredOutcome::Ok => ("ok", "Ok output, replayed".into()),
        StoredOutcome::Err => ("err", "Err output, replayed".into()),
        StoredOutcome::NotStored(reason) => ("not_stored", format!("not stored: {reason}")),
        StoredOutcome::Unreadable => ("unreadable", "bytes this crate did not write".into()),
        _ => ("unknown", "unknown".into()),
    }
}

fn state_and_until(state: &ListedState) -> (&'static str, Option<SystemTime>) {
    match state {
        ListedState::InProgress { lease_until } => ("in_progress", Some(*lease_until)),
        ListedState::Completed { expires_at } => ("completed", Some(*expires_at)),
        _ => ("other", None),
    }
}

fn namespace_json(namespace: &ListedNamespace) -> Value {
    match namespace {
        ListedNamespace::Named { name, version } => json!({ "name": name, "version": version }),
        ListedNamespace::Hashed(hash) => json!({ "hash": hash }),
        _ => Value::Null,
    }
}

fn rfc3339(at: SystemTime) -> String {
    humantime::format_rfc3339_seconds(at).to_string()
}

/// `at` and how far from now: `2026-12-06T07:10:00Z (in 23h 59m)`, `(passed 5s ago)`.
fn time(at: SystemTime) -> String {
    let now = SystemTime::now();
    let relative = match at.duration_since(now) {
        Ok(left) => format!("in {}", rounded(left)),
        Err(passed) => format!("passed {} ago", rounded(passed.duration())),
    };
    format!("{} ({relative})", rfc3339(at))
}

/// Whole seconds, and no seconds past an hour.
fn rounded(duration: Duration) -> humantime::FormattedDuration {
    let secs = duration.as_secs();
    let secs = if secs >= 3600 { secs - secs % 60 } else { secs };
    humantime::format_duration(Duration::from_secs(secs))
}

fn table<const N: usize>(header: [&str; N], rows: &[[String; N]]) {
    let mut widths = header.map(str::len);
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let text: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        println!("{}", text.join("  ").trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}
