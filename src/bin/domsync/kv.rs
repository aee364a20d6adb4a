//! `domsync kv ...`: user keys with their versions, locally on a stopped store (--data) or
//! through a running domsyncd's application protocol (--app-socket, --app-remote).

use std::io::Read as _;
use std::process::ExitCode;

use domsync_client::app::{parse_position, position_text, AppClient, AppTarget, ClientError};
use domsync_proto::app::{AppError, AtLeast, Condition, Entry, Event, KeyRange, Scan, Txn};
use domsync_proto::gateway::Served;
use domsync_proto::model::{DomainId, Lsn, Op, Position};
use domsync_store::{Domain, StoreError};
use serde_json::{json, Map, Value};

use crate::commands::{AtLeastArgs, KvCmd};

type Res = Result<ExitCode, Box<dyn std::error::Error>>;

/// Default application socket of `kv watch` (and of `--app-socket` given without a path).
pub const DEFAULT_APP_SOCKET: &str = "/run/domsync/app.sock";
/// Exit code of a transaction whose condition failed (nothing written): read again, retry.
pub const EXIT_CONFLICT: u8 = 3;
/// Exit code of `kv get` for a key that does not exist.
pub const EXIT_ABSENT: u8 = 4;
/// Most times a listing starts again when the daemon cannot continue its scan.
const LIST_RESTARTS: u32 = 3;

/// Puts `bytes` in `obj` as `field` (UTF-8 text) or `field_hex` (anything else).
fn put_bytes(obj: &mut Map<String, Value>, field: &str, bytes: &[u8]) {
    match std::str::from_utf8(bytes) {
        Ok(s) => obj.insert(field.to_owned(), Value::from(s)),
        Err(_) => obj.insert(format!("{field}_hex"), Value::from(hex(bytes))),
    };
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn served_json(obj: &mut Map<String, Value>, node: &str, role: &str, position: &Position) {
    obj.insert("node".into(), Value::from(node));
    obj.insert("role".into(), Value::from(role));
    obj.insert("position".into(), Value::from(position_text(position)));
    obj.insert("lsn".into(), Value::from(position.lsn.0));
}

fn entry_json(e: &Entry) -> Value {
    let mut o = Map::new();
    put_bytes(&mut o, "key", &e.key);
    put_bytes(&mut o, "value", &e.value);
    o.insert("version".into(), Value::from(e.version.0));
    Value::Object(o)
}

fn event_json(e: &Event) -> Value {
    let mut o = Map::new();
    put_bytes(&mut o, "key", &e.key);
    match &e.value {
        Some(v) => put_bytes(&mut o, "value", v),
        None => {
            o.insert("value".into(), Value::Null);
        }
    }
    o.insert("lsn".into(), Value::from(e.lsn.0));
    Value::Object(o)
}

/// Prints the outcome of a write.
fn written(domain: &str, key: Option<&str>, what: &str, pos: &Position, json_out: bool) -> Res {
    if json_out {
        let mut o = Map::new();
        o.insert("domain".into(), Value::from(domain));
        if let Some(k) = key {
            o.insert("key".into(), Value::from(k));
        }
        o.insert("committed".into(), Value::from(true));
        o.insert("position".into(), Value::from(position_text(pos)));
        o.insert("lsn".into(), Value::from(pos.lsn.0));
        println!("{}", Value::Object(o));
    } else {
        println!("{what} at {pos}");
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints a failed condition and returns [`EXIT_CONFLICT`].
fn conflict(index: u32, key: &[u8], current: Option<Lsn>, message: &str, json_out: bool) -> Res {
    if json_out {
        let mut c = Map::new();
        c.insert("index".into(), Value::from(index));
        put_bytes(&mut c, "key", key);
        c.insert(
            "current".into(),
            current.map_or(Value::Null, |v| Value::from(v.0)),
        );
        println!("{}", json!({ "committed": false, "conflict": c }));
    }
    eprintln!("domsync: conflict: {message}");
    Ok(ExitCode::from(EXIT_CONFLICT))
}

fn get_output(
    domain: &str,
    key: &str,
    entry: Option<&Entry>,
    served: Served,
    json_out: bool,
) -> Res {
    get_printed(
        domain,
        key,
        entry,
        (
            served.node.as_str(),
            &served.role.to_string(),
            &served.position,
        ),
        json_out,
    )
}

fn get_printed(
    domain: &str,
    key: &str,
    entry: Option<&Entry>,
    (node, role, position): (&str, &str, &Position),
    json_out: bool,
) -> Res {
    if json_out {
        let mut o = Map::new();
        o.insert("domain".into(), Value::from(domain));
        o.insert("key".into(), Value::from(key));
        match entry {
            Some(e) => {
                put_bytes(&mut o, "value", &e.value);
                o.insert("version".into(), Value::from(e.version.0));
            }
            None => {
                o.insert("value".into(), Value::Null);
                o.insert("version".into(), Value::Null);
            }
        }
        served_json(&mut o, node, role, position);
        println!("{}", Value::Object(o));
    }
    match entry {
        Some(e) => {
            if !json_out {
                println!("{}", text(&e.value));
            }
            Ok(ExitCode::SUCCESS)
        }
        None => {
            eprintln!("domsync: key {key:?} not found in domain {domain} (read at {position})");
            Ok(ExitCode::from(EXIT_ABSENT))
        }
    }
}

fn list_output(
    domain: &str,
    entries: &[Entry],
    (node, role, position): (&str, &str, &Position),
    truncated: bool,
    keys_only: bool,
    json_out: bool,
) -> Res {
    if json_out {
        let mut o = Map::new();
        o.insert("domain".into(), Value::from(domain));
        served_json(&mut o, node, role, position);
        o.insert("truncated".into(), Value::from(truncated));
        o.insert(
            "keys".into(),
            Value::Array(entries.iter().map(entry_json).collect()),
        );
        println!("{}", serde_json::to_string_pretty(&Value::Object(o))?);
        return Ok(ExitCode::SUCCESS);
    }
    for e in entries {
        if keys_only {
            println!("{} (version {})", text(&e.key), e.version);
        } else {
            println!("{} = {}", text(&e.key), text(&e.value));
        }
    }
    let more = if truncated {
        " (more follow: raise --limit)"
    } else {
        ""
    };
    eprintln!("{} keys{more}, read at {position}", entries.len());
    Ok(ExitCode::SUCCESS)
}

/// The conditions and ops of `kv txn`: those of the flags, then those of the file.
fn txn_parts(cmd: &KvCmd) -> Result<(Vec<Condition>, Vec<Op>), String> {
    let KvCmd::Txn {
        if_absent,
        if_version,
        if_value,
        put,
        del,
        file,
        ..
    } = cmd
    else {
        return Err("not a transaction".into());
    };
    let pair = |flag: &str, t: &str| -> Result<(Vec<u8>, String), String> {
        let (k, v) = t
            .split_once('=')
            .ok_or_else(|| format!("{flag} {t:?}: expected KEY=VALUE"))?;
        Ok((k.as_bytes().to_vec(), v.to_owned()))
    };
    let mut conditions = Vec::new();
    let mut ops = Vec::new();
    for k in if_absent {
        conditions.push(Condition::Absent {
            key: k.as_bytes().to_vec(),
        });
    }
    for t in if_version {
        let (key, v) = pair("--if-version", t)?;
        let version = v
            .parse()
            .map_err(|_| format!("--if-version {t:?}: the version is a number (KEY=N)"))?;
        conditions.push(Condition::Version {
            key,
            version: Lsn(version),
        });
    }
    for t in if_value {
        let (key, v) = pair("--if-value", t)?;
        conditions.push(Condition::Value {
            key,
            value: v.into_bytes(),
        });
    }
    for t in put {
        let (key, v) = pair("--put", t)?;
        ops.push(Op::Put {
            key,
            value: v.into_bytes(),
        });
    }
    for k in del {
        ops.push(Op::Delete {
            key: k.as_bytes().to_vec(),
        });
    }
    if let Some(path) = file {
        let (name, body) = if path.as_os_str() == "-" {
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .map_err(|e| format!("cannot read the transaction from stdin: {e}"))?;
            ("stdin".to_owned(), s)
        } else {
            let s = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            (path.display().to_string(), s)
        };
        parse_txn_text(&name, &body, &mut conditions, &mut ops)?;
    }
    if ops.is_empty() {
        return Err("the transaction has no op: give --put KEY=VALUE, --del KEY or a --file with put/del lines".into());
    }
    Ok((conditions, ops))
}

/// Reads the lines of a transaction file (syntax in the help of `kv txn`).
fn parse_txn_text(
    name: &str,
    body: &str,
    conditions: &mut Vec<Condition>,
    ops: &mut Vec<Op>,
) -> Result<(), String> {
    for (i, line) in body.lines().enumerate() {
        let at = |why: &str| {
            format!("{name}:{}: {why} in {line:?}; lines are if-absent KEY, if-version KEY N, if-value KEY VALUE, put KEY VALUE, del KEY", i + 1)
        };
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let (word, rest) = trimmed.split_once(' ').unwrap_or((trimmed, ""));
        let (key, value) = match rest.split_once(' ') {
            Some((k, v)) => (k, Some(v)),
            None => (rest, None),
        };
        if key.is_empty() {
            return Err(at("no key"));
        }
        let key = key.as_bytes().to_vec();
        match (word, value) {
            ("if-absent", None) => conditions.push(Condition::Absent { key }),
            ("if-version", Some(v)) => {
                let v = v
                    .trim()
                    .parse()
                    .map_err(|_| at("the version is a number"))?;
                conditions.push(Condition::Version {
                    key,
                    version: Lsn(v),
                });
            }
            ("if-value", Some(v)) => conditions.push(Condition::Value {
                key,
                value: v.as_bytes().to_vec(),
            }),
            ("put", Some(v)) => ops.push(Op::Put {
                key,
                value: v.as_bytes().to_vec(),
            }),
            ("del", None) => ops.push(Op::Delete { key }),
            ("if-absent" | "del", Some(_)) => return Err(at("unexpected text after the key")),
            ("if-version" | "if-value" | "put", None) => return Err(at("missing value")),
            _ => return Err(at(&format!("unknown word {word:?}"))),
        }
    }
    Ok(())
}

fn domain_id(name: &str) -> Result<DomainId, String> {
    DomainId::new(name).map_err(|e| e.to_string())
}

/// `kv ...` on a stopped store.
pub fn local(store: &domsync_store::Store, node: &str, cmd: KvCmd) -> Res {
    let domain = |name: &str| -> Result<Domain, Box<dyn std::error::Error>> {
        let id: DomainId = name.parse()?;
        Ok(store.domain(&id)?)
    };
    match cmd {
        KvCmd::Put {
            domain: d,
            key,
            value,
            json,
        } => {
            let pos = domain(&d)?.put(key.clone(), value)?;
            written(&d, Some(&key), "put", &pos, json)
        }
        KvCmd::Del {
            domain: d,
            key,
            json,
        } => {
            let pos = domain(&d)?.delete(key.clone())?;
            written(&d, Some(&key), "deleted", &pos, json)
        }
        KvCmd::Get {
            domain: d,
            key,
            json,
            ..
        } => {
            let r = domain(&d)?.get_entry(key.as_bytes())?;
            let role = r.role.to_string();
            get_printed(&d, &key, r.value.as_ref(), (node, &role, &r.position), json)
        }
        KvCmd::List {
            domain: d,
            prefix,
            prefix_flag,
            limit,
            keys_only,
            json,
            ..
        } => {
            let prefix = prefix.or(prefix_flag).unwrap_or_default();
            let r = domain(&d)?.scan(
                &KeyRange::prefix(prefix.as_bytes()),
                None,
                limit,
                usize::MAX,
                keys_only,
            )?;
            let role = r.role.to_string();
            list_output(
                &d,
                &r.value.entries,
                (node, &role, &r.position),
                r.value.more,
                keys_only,
                json,
            )
        }
        KvCmd::Watch { .. } => Err(
            "kv watch needs a running domsyncd: give --app-socket PATH or --app-remote ID=ADDR"
                .into(),
        ),
        cmd @ KvCmd::Txn { .. } => {
            let (conditions, ops) = txn_parts(&cmd)?;
            let KvCmd::Txn {
                domain: d, json, ..
            } = cmd
            else {
                return Ok(ExitCode::FAILURE);
            };
            match domain(&d)?.write_if(conditions, ops) {
                Ok(pos) => written(&d, None, "committed", &pos, json),
                Err(e) => match &e {
                    StoreError::Conflict {
                        index,
                        key,
                        current,
                        ..
                    } => conflict(*index, key, *current, &e.to_string(), json),
                    _ => Err(e.into()),
                },
            }
        }
    }
}

fn at_least(a: AtLeastArgs) -> AtLeast {
    AtLeast {
        lsn: Lsn(a.at_least),
        wait_ms: a.wait.min(domsync_proto::app::MAX_WAIT_MS),
    }
}

/// `kv ...` through a running domsyncd's application protocol.
pub fn daemon(target: AppTarget, cmd: KvCmd) -> Res {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let client = AppClient::connect(target).await?;
        let out = daemon_cmd(&client, cmd).await;
        client.close().await;
        out
    })
}

async fn daemon_cmd(client: &AppClient, cmd: KvCmd) -> Res {
    match cmd {
        KvCmd::Put {
            domain: d,
            key,
            value,
            json,
        } => {
            let pos = client
                .put(&domain_id(&d)?, key.as_bytes(), value.as_bytes())
                .await?;
            written(&d, Some(&key), "put", &pos, json)
        }
        KvCmd::Del {
            domain: d,
            key,
            json,
        } => {
            let pos = client.delete(&domain_id(&d)?, key.as_bytes()).await?;
            written(&d, Some(&key), "deleted", &pos, json)
        }
        KvCmd::Get {
            domain: d,
            key,
            json,
            at_least: a,
        } => {
            let got = client
                .get(&domain_id(&d)?, key.as_bytes(), at_least(a))
                .await?;
            get_output(&d, &key, got.entry.as_ref(), got.served, json)
        }
        KvCmd::List {
            domain: d,
            prefix,
            prefix_flag,
            limit,
            keys_only,
            json,
            at_least: a,
        } => {
            let prefix = prefix.or(prefix_flag).unwrap_or_default();
            let (entries, served, truncated) = list(
                client,
                &domain_id(&d)?,
                prefix.as_bytes(),
                limit,
                keys_only,
                at_least(a),
            )
            .await?;
            let role = served.role.to_string();
            list_output(
                &d,
                &entries,
                (served.node.as_str(), &role, &served.position),
                truncated,
                keys_only,
                json,
            )
        }
        KvCmd::Watch {
            domain: d,
            prefix,
            from,
            count,
            json,
        } => {
            let from = from.map(|f| parse_position(&f)).transpose()?;
            watch(
                client,
                &domain_id(&d)?,
                prefix.as_bytes(),
                from,
                count,
                json,
            )
            .await
        }
        cmd @ KvCmd::Txn { .. } => {
            let (conditions, ops) = txn_parts(&cmd)?;
            let KvCmd::Txn {
                domain: d, json, ..
            } = cmd
            else {
                return Ok(ExitCode::FAILURE);
            };
            let txn = Txn {
                domain: domain_id(&d)?,
                conditions,
                ops,
            };
            match client.txn(txn).await {
                Ok(pos) => written(&d, None, "committed", &pos, json),
                Err(ClientError::App(e)) => match &e {
                    AppError::Conflict {
                        index,
                        key,
                        current,
                    } => conflict(*index, key, *current, &e.to_string(), json),
                    _ => Err(ClientError::App(e).into()),
                },
                Err(e) => Err(e.into()),
            }
        }
    }
}

/// At most `limit` keys under `prefix`, page after page at one position; starts again (a few
/// times) when the daemon cannot continue the scan. Also says whether keys were left out.
async fn list(
    client: &AppClient,
    domain: &DomainId,
    prefix: &[u8],
    limit: usize,
    keys_only: bool,
    at_least: AtLeast,
) -> Result<(Vec<Entry>, Served, bool), ClientError> {
    let mut restarts = 0;
    'scan: loop {
        let mut entries: Vec<Entry> = Vec::new();
        let mut continuation = None;
        loop {
            let left = limit.saturating_sub(entries.len());
            let page = client
                .scan(Scan {
                    domain: domain.clone(),
                    range: KeyRange::prefix(prefix),
                    limit: u32::try_from(left.max(1)).unwrap_or(u32::MAX),
                    keys_only,
                    at_least,
                    continuation: continuation.take(),
                })
                .await;
            let page = match page {
                Err(ClientError::App(AppError::ContinuationGone { .. }))
                    if restarts < LIST_RESTARTS =>
                {
                    restarts += 1;
                    continue 'scan;
                }
                other => other?,
            };
            entries.extend(page.entries);
            let full = entries.len() >= limit;
            entries.truncate(limit);
            match page.more {
                Some(more) if !full => continuation = Some(more),
                more => return Ok((entries, page.served, more.is_some())),
            }
        }
    }
}

async fn watch(
    client: &AppClient,
    domain: &DomainId,
    prefix: &[u8],
    from: Option<Position>,
    count: Option<u64>,
    json_out: bool,
) -> Res {
    use std::io::Write as _;
    let mut w = client.watch(domain, KeyRange::prefix(prefix), from).await?;
    if !json_out {
        eprintln!(
            "watching domain {domain} on node {} from {}",
            w.served().node,
            position_text(w.position())
        );
    }
    let mut seen = 0u64;
    loop {
        if count.is_some_and(|c| seen >= c) {
            return Ok(ExitCode::SUCCESS);
        }
        let batch = w.next().await?;
        let mut out = std::io::stdout().lock();
        let room = count.map_or(usize::MAX, |c| {
            usize::try_from(c - seen).unwrap_or(usize::MAX)
        });
        let events = &batch.events[..batch.events.len().min(room)];
        seen += events.len() as u64;
        // A batch cut short by --count has no position to resume from: none is printed.
        let whole = events.len() == batch.events.len();
        if json_out {
            let mut o = Map::new();
            if whole {
                o.insert(
                    "position".into(),
                    Value::from(position_text(&batch.position)),
                );
                o.insert("lsn".into(), Value::from(batch.position.lsn.0));
            }
            o.insert("node".into(), Value::from(w.served().node.as_str()));
            o.insert(
                "events".into(),
                Value::Array(events.iter().map(event_json).collect()),
            );
            writeln!(out, "{}", Value::Object(o))?;
        } else {
            for e in events {
                match &e.value {
                    Some(v) => writeln!(out, "{} put {} = {}", e.lsn, text(&e.key), text(v))?,
                    None => writeln!(out, "{} del {}", e.lsn, text(&e.key))?,
                }
            }
            if whole {
                writeln!(out, "position {}", position_text(&batch.position))?;
            }
        }
        out.flush()?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transaction_files_parse_in_order_and_errors_name_the_line() {
        let mut c = Vec::new();
        let mut o = Vec::new();
        let body = "# retry-safe\nif-absent lock\nif-version rule/7 41\nif-value mode on air\nput rule/7 deny all\ndel old\n";
        parse_txn_text("t", body, &mut c, &mut o).unwrap();
        assert_eq!(c.len(), 3);
        assert_eq!(
            c[2],
            Condition::Value {
                key: b"mode".to_vec(),
                value: b"on air".to_vec()
            }
        );
        assert_eq!(
            o[0],
            Op::Put {
                key: b"rule/7".to_vec(),
                value: b"deny all".to_vec()
            }
        );
        assert_eq!(
            o[1],
            Op::Delete {
                key: b"old".to_vec()
            }
        );
        let e = parse_txn_text("t", "put k v\nif-version k x\n", &mut c, &mut o).unwrap_err();
        assert!(e.starts_with("t:2: the version is a number"), "{e}");
        assert!(parse_txn_text("t", "frob k\n", &mut c, &mut o).is_err());
        assert!(parse_txn_text("t", "del k extra\n", &mut c, &mut o).is_err());
    }
}
