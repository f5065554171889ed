//! `mesh audit [--host H] [--user U] [--since T] [--json]` (admins): the audit events hosts
//! uploaded, fetched page by page, oldest first by the time they happened. Bytes "up" went from
//! the client to the session (stdin), "down" from the session to the client.

use std::path::Path;
use std::process::ExitCode;
use std::time::SystemTime;

use mesh_proto::UnixTime;
use mesh_proto::audit::AuditKind;
use mesh_proto::messages::control::{AuditQuery, AuditRecord, ControlMessage};
use mesh_proto::messages::session::ExitStatus;
use serde_json::json;

use crate::args::AuditArgs;
use crate::control::{ask, failed, rfc3339};
use crate::exit::Failure;

/// Most pages one listing fetches: a guard against a coordinator that always says "more".
const MAX_PAGES: usize = 100_000;

/// Lists the events that pass the filters.
pub(crate) fn run(home: &Path, args: AuditArgs) -> Result<ExitCode, Failure> {
    let since = args
        .since
        .as_deref()
        .map(|text| since(text, SystemTime::now()))
        .transpose()?;
    let mut records: Vec<AuditRecord> = Vec::new();
    let mut after = None;
    for _ in 0..MAX_PAGES {
        let query = AuditQuery {
            host: args.host.clone(),
            user: args.user.clone(),
            since,
            after,
        };
        let reply = ask(home, ControlMessage::AuditQuery(query))?;
        let ControlMessage::AuditList(page) = reply else {
            return Err(failed(format!("unexpected reply {reply:?}")));
        };
        after = page.records.last().map(|r| r.seq).or(after);
        let more = page.more && !page.records.is_empty();
        records.extend(page.records);
        if !more {
            break;
        }
    }
    // Stored in upload order; shown in the order things happened.
    records.sort_by_key(|r| (r.event.at, r.seq));
    if args.json.json {
        let items: Vec<_> = records.iter().map(to_json).collect();
        println!("{}", serde_json::Value::Array(items));
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<20} {:<16} {:<15} {:<12} {:<12} {:<6} {:<10} {:>10} {:>10}  REASON",
        "TIME", "HOST", "KIND", "USER", "LOGIN", "TEMP", "EXIT", "BYTES UP", "BYTES DOWN"
    );
    for r in &records {
        let e = &r.event;
        println!(
            "{:<20} {:<16} {:<15} {:<12} {:<12} {:<6} {:<10} {:>10} {:>10}  {}",
            rfc3339(e.at),
            r.host,
            kind_text(e.kind),
            e.user.as_ref().map_or("-", |u| u.name.as_str()),
            e.login.as_deref().unwrap_or("-"),
            if e.temporary { "yes" } else { "no" },
            e.exit.map_or_else(|| "-".to_owned(), exit_text),
            e.bytes_up,
            e.bytes_down,
            e.reason
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `--since`: an RFC 3339 time, or a duration ("1h") meaning that long before `now`.
fn since(text: &str, now: SystemTime) -> Result<UnixTime, Failure> {
    if let Ok(time) = humantime::parse_rfc3339_weak(text) {
        return Ok(UnixTime::from_system_time(time));
    }
    match humantime::parse_duration(text) {
        Ok(ago) => Ok(UnixTime::from_system_time(now).saturating_sub(ago)),
        Err(_) => Err(Failure::Usage(format!(
            "--since {text:?} is neither a time like 2025-01-31T12:00:00Z nor a duration like 1h"
        ))),
    }
}

fn kind_text(kind: AuditKind) -> String {
    match kind {
        AuditKind::Dropped { count } => format!("dropped({count})"),
        other => other.name().to_owned(),
    }
}

fn exit_text(status: ExitStatus) -> String {
    match status {
        ExitStatus::Code(code) => code.to_string(),
        ExitStatus::Signal(signal) => format!("signal {signal}"),
    }
}

fn to_json(r: &AuditRecord) -> serde_json::Value {
    let e = &r.event;
    let exit = e.exit.map(|status| match status {
        ExitStatus::Code(code) => json!({"code": code}),
        ExitStatus::Signal(signal) => json!({"signal": signal}),
    });
    let dropped = match e.kind {
        AuditKind::Dropped { count } => Some(count),
        _ => None,
    };
    json!({
        "id": e.id.to_string(),
        "at": rfc3339(e.at),
        "at_ms": e.at.as_millis(),
        "host": r.host,
        "kind": e.kind.name(),
        "dropped": dropped,
        "session": e.session,
        "user": e.user.as_ref().map(|u| u.name.clone()),
        "user_id": e.user.as_ref().map(|u| u.id.0),
        "device": e.device.map(|d| d.to_string()),
        "login": e.login,
        "temporary": e.temporary,
        "grant": e.grant.map(|g| g.to_string()),
        "exit": exit,
        "bytes_up": e.bytes_up,
        "bytes_down": e.bytes_down,
        "reason": e.reason,
        "received_at": rfc3339(r.received_at),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn since_takes_a_time_or_a_duration_ago() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        assert_eq!(
            since("1h", now).unwrap(),
            UnixTime::from_secs(1_800_000_000 - 3600)
        );
        assert_eq!(
            since("2027-01-15T08:00:00Z", now).unwrap(),
            UnixTime::from_system_time(humantime::parse_rfc3339("2027-01-15T08:00:00Z").unwrap())
        );
        assert!(matches!(since("soon", now), Err(Failure::Usage(_))));
    }
}
