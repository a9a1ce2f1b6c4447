//! The operator commands (`junction queues list`, `connections close`,
//! `publish`, `get`, `status`, ...): requests to a running broker's
//! management API, printed as tables for people or as the API's JSON for
//! scripts, as `rabbitmqadmin` does for RabbitMQ.

use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::Full;
use serde_json::{Value, json};

use crate::cli::{
    ClusterAction, Command, ConnectionsAction, DefinitionsAction, ListAction, MqttAction,
    QueuesAction, Remote,
};
use crate::config::Config;

/// How long one request may take.
const TIMEOUT: Duration = Duration::from_secs(30);
/// Largest answer read (a long queue list).
const MAX_ANSWER: usize = 64 * 1024 * 1024;

/// Why an operator command failed.
#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    #[error("{0}")]
    Usage(String),
    #[error("cannot reach the broker at {url}: {why}")]
    Unreachable { url: String, why: String },
    #[error("the broker answered {status}: {reason}")]
    Refused { status: u16, reason: String },
}

/// A path segment, percent-encoded (`/` as `%2F`).
fn seg(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

struct Api<'a> {
    base: String,
    remote: &'a Remote,
}

impl Api<'_> {
    /// One request; the answer's JSON (Null when empty).
    async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
        extra: &[(&str, &str)],
    ) -> Result<Value, OpsError> {
        let url = format!("{}{path}", self.base);
        let unreachable = |why: String| OpsError::Unreachable {
            url: self.base.clone(),
            why,
        };
        let uri: hyper::Uri = url
            .parse()
            .map_err(|e| OpsError::Usage(format!("bad --url: {e}")))?;
        if uri.scheme_str() != Some("http") {
            return Err(OpsError::Usage("--url must be http://HOST:PORT".into()));
        }
        let host = uri.host().unwrap_or("127.0.0.1").to_owned();
        let authority = format!("{host}:{}", uri.port_u16().unwrap_or(80));
        let credentials = base64::engine::general_purpose::STANDARD
            .encode(format!("{}:{}", self.remote.user, self.remote.password));
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(uri.path_and_query().map_or("/", |p| p.as_str()))
            .header(hyper::header::HOST, &authority)
            .header(hyper::header::AUTHORIZATION, format!("Basic {credentials}"));
        for (k, v) in extra {
            req = req.header(*k, *v);
        }
        let payload = match body {
            Some(b) => {
                req = req.header(hyper::header::CONTENT_TYPE, "application/json");
                Bytes::from(b.to_string())
            }
            None => Bytes::new(),
        };
        let req = req
            .body(Full::new(payload))
            .map_err(|e| OpsError::Usage(e.to_string()))?;
        let (status, raw) = crate::http_client::send(&authority, req, MAX_ANSWER)
            .await
            .map_err(unreachable)?;
        let value: Value = if raw.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&raw).unwrap_or(Value::Null)
        };
        if !(200..300).contains(&status) {
            let reason = value
                .get("reason")
                .and_then(Value::as_str)
                .map(str::to_owned)
                .unwrap_or_else(|| String::from_utf8_lossy(&raw).into_owned());
            return Err(OpsError::Refused { status, reason });
        }
        Ok(value)
    }
}

/// Text of a JSON value in a table cell.
fn cell(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Array(a) => a.iter().map(cell).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

/// A table: a header line, then one line per item, columns padded.
fn table(items: &Value, columns: &[(&str, &str)]) -> String {
    let rows: Vec<Vec<String>> = items
        .as_array()
        .map(|a| {
            a.iter()
                .map(|item| {
                    columns
                        .iter()
                        .map(|(_, path)| {
                            cell(
                                path.split('.')
                                    .try_fold(item, |v, k| v.get(k))
                                    .unwrap_or(&Value::Null),
                            )
                        })
                        .collect()
                })
                .collect()
        })
        .unwrap_or_default();
    let mut widths: Vec<usize> = columns.iter().map(|(h, _)| h.len()).collect();
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    let mut out = vec![line(columns.iter().map(|(h, _)| (*h).to_owned()).collect())];
    out.extend(rows.into_iter().map(line));
    out.join("\n")
}

/// Carries out an operator command against the broker `config` names (or
/// `--url`); returns what to print.
pub fn run_ops_command(cmd: &Command, config: &Config) -> Result<String, OpsError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| OpsError::Usage(e.to_string()))?;
    runtime.block_on(async {
        tokio::time::timeout(TIMEOUT, run(cmd, config))
            .await
            .unwrap_or_else(|_| {
                Err(OpsError::Unreachable {
                    url: String::new(),
                    why: "no answer in 30 s".into(),
                })
            })
    })
}

fn remote_of(cmd: &Command) -> Option<&Remote> {
    match cmd {
        Command::Queues { remote, .. }
        | Command::Exchanges { remote, .. }
        | Command::Bindings { remote, .. }
        | Command::Connections { remote, .. }
        | Command::Mqtt { remote, .. }
        | Command::Publish { remote, .. }
        | Command::Get { remote, .. }
        | Command::Status { remote }
        | Command::Cluster { remote, .. }
        | Command::Definitions { remote, .. } => Some(remote),
        _ => None,
    }
}

async fn run(cmd: &Command, config: &Config) -> Result<String, OpsError> {
    let remote = remote_of(cmd).ok_or_else(|| OpsError::Usage("not an operator command".into()))?;
    let base = remote.url.clone().unwrap_or_else(|| {
        let ip = config.broker.bind;
        let host = if ip.is_unspecified() {
            "127.0.0.1".to_owned()
        } else if ip.is_ipv6() {
            format!("[{ip}]")
        } else {
            ip.to_string()
        };
        format!("http://{host}:{}", config.admin.port)
    });
    let api = Api {
        base: base.trim_end_matches('/').to_owned(),
        remote,
    };
    let listed = |v: &Option<String>, what: &str| match v {
        Some(vh) => format!("/api/{what}/{}", seg(vh)),
        None => format!("/api/{what}"),
    };
    let show = |v: Value, columns: &[(&str, &str)]| {
        if remote.json {
            serde_json::to_string_pretty(&v).unwrap_or_default()
        } else {
            table(&v, columns)
        }
    };
    let said = |v: Value, text: String| {
        if remote.json {
            serde_json::to_string_pretty(&v).unwrap_or_default()
        } else {
            text
        }
    };
    Ok(match cmd {
        Command::Queues { action, .. } => match action {
            QueuesAction::List { vhost } => show(
                api.call("GET", &listed(vhost, "queues"), None, &[]).await?,
                &[
                    ("vhost", "vhost"),
                    ("name", "name"),
                    ("messages", "messages"),
                    ("ready", "messages_ready"),
                    ("unacked", "messages_unacknowledged"),
                    ("consumers", "consumers"),
                ],
            ),
            QueuesAction::Purge { name, vhost } => {
                let path = format!("/api/queues/{}/{}/contents", seg(vhost), seg(name));
                api.call("DELETE", &path, None, &[]).await?;
                said(json!({"purged": name}), format!("purged queue '{name}'"))
            }
            QueuesAction::Delete { name, vhost } => {
                let path = format!("/api/queues/{}/{}", seg(vhost), seg(name));
                api.call("DELETE", &path, None, &[]).await?;
                said(json!({"deleted": name}), format!("deleted queue '{name}'"))
            }
        },
        Command::Exchanges {
            action: ListAction::List { vhost },
            ..
        } => show(
            api.call("GET", &listed(vhost, "exchanges"), None, &[])
                .await?,
            &[
                ("vhost", "vhost"),
                ("name", "name"),
                ("type", "type"),
                ("durable", "durable"),
            ],
        ),
        Command::Bindings {
            action: ListAction::List { vhost },
            ..
        } => show(
            api.call("GET", &listed(vhost, "bindings"), None, &[])
                .await?,
            &[
                ("vhost", "vhost"),
                ("source", "source"),
                ("destination", "destination"),
                ("type", "destination_type"),
                ("routing_key", "routing_key"),
            ],
        ),
        Command::Connections { action, .. } => match action {
            ConnectionsAction::List => show(
                api.call("GET", "/api/connections", None, &[]).await?,
                &[
                    ("name", "name"),
                    ("protocol", "protocol"),
                    ("user", "user"),
                    ("vhost", "vhost"),
                    ("client_id", "client_id"),
                    ("ssl", "ssl"),
                ],
            ),
            ConnectionsAction::Close { name, reason } => {
                let path = format!("/api/connections/{}", seg(name));
                api.call("DELETE", &path, None, &[("x-reason", reason)])
                    .await?;
                said(
                    json!({"closed": name}),
                    format!("closed connection '{name}'"),
                )
            }
        },
        Command::Mqtt {
            action: MqttAction::Clients,
            ..
        } => show(
            api.call("GET", "/api/mqtt/clients", None, &[]).await?,
            &[
                ("client_id", "client_id"),
                ("connected", "connected"),
                ("user", "user"),
                ("subscriptions", "subscriptions"),
                ("queued", "queued_messages"),
                ("expires_in", "session_expires_in"),
            ],
        ),
        Command::Publish {
            exchange,
            routing_key,
            payload,
            vhost,
            ..
        } => {
            let x = if exchange.is_empty() {
                "amq.default"
            } else {
                exchange
            };
            let path = format!("/api/exchanges/{}/{}/publish", seg(vhost), seg(x));
            let body = json!({
                "routing_key": routing_key,
                "payload": payload,
                "payload_encoding": "string",
                "properties": {},
            });
            let v = api.call("POST", &path, Some(body), &[]).await?;
            let routed = v.get("routed").and_then(Value::as_bool).unwrap_or(false);
            said(
                v,
                if routed {
                    "published, routed".to_owned()
                } else {
                    "published, but no queue took it".to_owned()
                },
            )
        }
        Command::Get {
            queue,
            count,
            ackmode,
            vhost,
            ..
        } => {
            let path = format!("/api/queues/{}/{}/get", seg(vhost), seg(queue));
            let body = json!({"count": count, "ackmode": ackmode, "encoding": "auto"});
            show(
                api.call("POST", &path, Some(body), &[]).await?,
                &[
                    ("routing_key", "routing_key"),
                    ("redelivered", "redelivered"),
                    ("bytes", "payload_bytes"),
                    ("encoding", "payload_encoding"),
                    ("payload", "payload"),
                ],
            )
        }
        Command::Status { .. } => {
            let overview = api.call("GET", "/api/overview", None, &[]).await?;
            let alarms = match api
                .call("GET", "/api/health/checks/alarms", None, &[])
                .await
            {
                Ok(v) => v,
                Err(OpsError::Refused { reason, .. }) => {
                    json!({"status": "failed", "reason": reason})
                }
                Err(e) => return Err(e),
            };
            let v = json!({"overview": overview, "alarms": alarms});
            if remote.json {
                serde_json::to_string_pretty(&v).unwrap_or_default()
            } else {
                let o = &v["overview"];
                [
                    format!("node         {}", cell(&o["node"])),
                    format!("version      {}", cell(&o["product_version"])),
                    format!("connections  {}", cell(&o["object_totals"]["connections"])),
                    format!("queues       {}", cell(&o["object_totals"]["queues"])),
                    format!("exchanges    {}", cell(&o["object_totals"]["exchanges"])),
                    format!("messages     {}", cell(&o["queue_totals"]["messages"])),
                    format!("alarms       {}", cell(&v["alarms"]["status"])),
                ]
                .join("\n")
            }
        }
        Command::Cluster {
            action: ClusterAction::Status,
            ..
        } => show(
            api.call("GET", "/api/nodes", None, &[]).await?,
            &[
                ("name", "name"),
                ("running", "running"),
                ("leader", "raft.leader"),
                ("lag", "raft.lag"),
                ("role", "cluster.role"),
                ("term", "cluster.term"),
                ("applied", "cluster.applied_index"),
            ],
        ),
        Command::Cluster {
            action: ClusterAction::Rebalance,
            ..
        } => {
            let v = api.call("POST", "/api/rebalance/queues", None, &[]).await?;
            if remote.json {
                serde_json::to_string_pretty(&v).unwrap_or_default()
            } else {
                format!(
                    "moved {} of {} planned quorum queue leaders ({} quorum queues)",
                    cell(&v["moved"]),
                    cell(&v["planned"]),
                    cell(&v["queues"])
                )
            }
        }
        Command::Cluster {
            action: ClusterAction::Join { node },
            ..
        } => {
            let v = api
                .call("POST", "/api/nodes", Some(json!({ "node": node })), &[])
                .await?;
            said(v, format!("{node} joined the cluster"))
        }
        Command::Cluster {
            action: ClusterAction::Leave { name },
            ..
        } => {
            let v = api
                .call("DELETE", &format!("/api/nodes/{}", seg(name)), None, &[])
                .await?;
            let text = format!(
                "{name} left the cluster; removed with it: {} client ids, {} routes, {} classic queues",
                cell(&v["client_ids"]),
                cell(&v["routes"]),
                cell(&v["queues"])
            );
            said(v, text)
        }
        Command::Definitions { action, .. } => match action {
            DefinitionsAction::Export { file } => {
                let v = api.call("GET", "/api/definitions", None, &[]).await?;
                let text = serde_json::to_string_pretty(&v).unwrap_or_default();
                match file {
                    None => text,
                    Some(path) => {
                        std::fs::write(path, text + "\n").map_err(|e| {
                            OpsError::Usage(format!("cannot write {}: {e}", path.display()))
                        })?;
                        format!("exported definitions to {}", path.display())
                    }
                }
            }
            DefinitionsAction::Import { file } => {
                let text = std::fs::read_to_string(file)
                    .map_err(|e| OpsError::Usage(format!("cannot read {}: {e}", file.display())))?;
                let defs: Value = serde_json::from_str(&text)
                    .map_err(|e| OpsError::Usage(format!("{} is not JSON: {e}", file.display())))?;
                api.call("POST", "/api/definitions", Some(defs), &[])
                    .await?;
                said(
                    json!({"imported": file.display().to_string()}),
                    format!("imported definitions from {}", file.display()),
                )
            }
        },
        _ => return Err(OpsError::Usage("not an operator command".into())),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_pad_columns_and_join_lists() {
        let items = json!([
            {"name": "q1", "messages": 5, "tags": ["a", "b"]},
            {"name": "longer-name", "messages": 12, "tags": []},
        ]);
        assert_eq!(
            table(
                &items,
                &[("name", "name"), ("messages", "messages"), ("tags", "tags")]
            ),
            "name         messages  tags\nq1           5         a,b\nlonger-name  12"
        );
        assert_eq!(seg("/"), "%2F");
        assert_eq!(seg("a b"), "a%20b");
    }
}
