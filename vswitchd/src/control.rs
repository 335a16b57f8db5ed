//! The control server: JSON-RPC 2.0 over a unix socket, one request per line.
//!
//! Requests are served on a tokio runtime; the daemon's state sits behind one async
//! mutex, so transactions are serialized. A transaction is validated and persisted
//! before it becomes current, then the reconciler brings devices and the datapath in
//! line and only then does the answer go back — when `vsctl add-port` returns, the
//! port forwards (as `ovs-vsctl` waits for `ovs-vswitchd` to catch up).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{oneshot, Mutex};
use tracing::{debug, info, warn};

use crate::config::Config;
use crate::datapath::{Cmd, WorkerHandle};
use crate::db;
use crate::reconcile::Devices;
use crate::rpc::{self, FdbRow, FlowRow, Op, PortStatsRow, State};
use ofproto::flow_syntax::{FlowFilter, FlowSpec};

pub struct Daemon {
    pub config: Config,
    pub db_path: PathBuf,
    pub devices: Devices,
    pub worker: WorkerHandle,
}

pub type Shared = Arc<Mutex<Daemon>>;

/// How long to wait for the datapath to take a new snapshot before answering anyway.
const DATAPATH_ACK: Duration = Duration::from_secs(5);

impl Daemon {
    pub fn state(&self) -> State {
        State {
            config: self.config.clone(),
            status: self.devices.status(&self.config),
        }
    }

    async fn publish(&mut self) {
        let snap = Arc::new(self.devices.snapshot(&self.config));
        let (tx, rx) = oneshot::channel();
        self.worker.send(Cmd::Reconfigure(snap, tx));
        if tokio::time::timeout(DATAPATH_ACK, rx).await.is_err() {
            warn!("datapath did not take the new configuration within {DATAPATH_ACK:?}");
        }
    }

    /// Brings devices and the datapath in line with the configuration.
    pub async fn reconcile(&mut self) {
        let obsolete = self.devices.obsolete(&self.config);
        if !obsolete.is_empty() {
            let closing = self.devices.take(&obsolete);
            // The datapath must let go before the devices close, so that a TAP is
            // really gone (and its name free) when we drop our reference.
            self.publish().await;
            drop(closing);
        }
        self.devices.open_missing(&self.config);
        self.devices.apply_mtus(&self.config);
        self.publish().await;
    }

    /// The periodic check: re-attach devices that appeared, drop ones that vanished.
    pub async fn recheck(&mut self) {
        self.devices.collect_kernel_drops();
        self.expire_flows().await;
        if !self.devices.obsolete(&self.config).is_empty() {
            self.reconcile().await;
        } else if self.devices.missing(&self.config) && self.devices.open_missing(&self.config) {
            // Only a device that actually opened needs a new snapshot; one that keeps
            // failing must not make the datapath reconfigure every second.
            self.devices.apply_mtus(&self.config);
            self.publish().await;
        }
    }

    /// Removes flows whose idle_timeout or hard_timeout has passed, as one
    /// persisted change. Timeouts count from when this daemon installed (or
    /// restored) the flow.
    async fn expire_flows(&mut self) {
        let timed = |b: &crate::config::Bridge| b.flows.iter().any(|f| f.contains("_timeout="));
        if !self.config.bridges.values().any(timed) {
            return;
        }
        let now_ms = crate::pipeline::epoch().elapsed().as_millis() as u64;
        let mut next = self.config.clone();
        let mut expired = 0;
        for (bname, b) in next.bridges.iter_mut() {
            b.flows.retain(|text| {
                if !text.contains("_timeout=") {
                    return true;
                }
                let (Ok(spec), Some(st)) = (
                    FlowSpec::parse(text),
                    self.devices.flow_stats.get(bname, text),
                ) else {
                    return true;
                };
                let age = st.created.elapsed().as_secs();
                let last = st.last_used_ms.load(std::sync::atomic::Ordering::Relaxed);
                let idle = if last == 0 {
                    age
                } else {
                    now_ms.saturating_sub(last) / 1000
                };
                let hard_over = spec.hard_timeout != 0 && age >= u64::from(spec.hard_timeout);
                let idle_over = spec.idle_timeout != 0 && idle >= u64::from(spec.idle_timeout);
                if hard_over || idle_over {
                    info!(
                        "bridge {bname}: flow expired ({}): {text}",
                        if hard_over {
                            "hard_timeout"
                        } else {
                            "idle_timeout"
                        }
                    );
                    expired += 1;
                }
                !(hard_over || idle_over)
            });
        }
        if expired == 0 {
            return;
        }
        if let Err(e) = db::save(&self.db_path, &next) {
            warn!("cannot persist flow expiry, keeping the flows: {e}");
            return;
        }
        self.config = next;
        self.publish().await;
    }

    /// Installs flows that `learn` actions produced (bridge, flow text), as one
    /// persisted change. A learned flow that is already there changes nothing; one
    /// that cannot be installed (a bridge gone since) is logged and skipped.
    pub async fn learn(&mut self, flows: Vec<crate::datapath::Learned>) {
        // One add-flows per bridge (a transaction copies the configuration, so one
        // per flow would cost the whole table per learned flow); should a batch be
        // refused, its flows are tried one by one so the good ones still land.
        let mut by_bridge: std::collections::BTreeMap<String, Vec<String>> = Default::default();
        for (bridge, flow) in flows {
            by_bridge.entry(bridge).or_default().push(flow);
        }
        let mut next = self.config.clone();
        for (bridge, flows) in by_bridge {
            let all = Op::AddFlows {
                bridge: bridge.clone(),
                flows: flows.clone(),
            };
            if next.transact(std::slice::from_ref(&all)).is_ok() {
                continue;
            }
            for flow in flows {
                let op = Op::AddFlows {
                    bridge: bridge.clone(),
                    flows: vec![flow.clone()],
                };
                if let Err(e) = next.transact(std::slice::from_ref(&op)) {
                    warn!("bridge {bridge}: cannot install learned flow {flow}: {e}");
                }
            }
        }
        if next == self.config {
            return;
        }
        if let Err(e) = db::save(&self.db_path, &next) {
            warn!("cannot persist learned flows, not installing them: {e}");
            return;
        }
        debug!("installed learned flows");
        self.config = next;
        self.publish().await;
    }

    pub async fn shutdown(&mut self) {
        self.worker.shutdown();
        let devs = self.devices.close_all();
        let n = devs.len();
        drop(devs);
        info!("closed {n} devices");
    }
}

/// A refused request: JSON-RPC code and message.
type RpcError = (i64, String);

fn app_err(e: impl std::fmt::Display) -> RpcError {
    (rpc::APP_ERROR, e.to_string())
}

fn params_err(e: impl std::fmt::Display) -> RpcError {
    (rpc::INVALID_PARAMS, format!("invalid params: {e}"))
}

fn bridge_param(params: &Value) -> Result<String, RpcError> {
    params
        .get("bridge")
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| params_err("missing string \"bridge\""))
}

async fn dispatch(shared: &Shared, method: &str, params: &Value) -> Result<Value, RpcError> {
    match method {
        "transact" => {
            let ops: Vec<Op> =
                serde_json::from_value(params.get("ops").cloned().unwrap_or(Value::Null))
                    .map_err(params_err)?;
            let mut d = shared.lock().await;
            let mut next = d.config.clone();
            next.transact(&ops).map_err(app_err)?;
            if next != d.config {
                db::save(&d.db_path, &next).map_err(app_err)?;
                d.config = next;
                d.reconcile().await;
                info!("committed {} operation(s)", ops.len());
            }
            serde_json::to_value(d.state()).map_err(app_err)
        }
        "get-state" => {
            let d = shared.lock().await;
            serde_json::to_value(d.state()).map_err(app_err)
        }
        "fdb-show" => {
            let bridge = bridge_param(params)?;
            let (rx, names) = {
                let d = shared.lock().await;
                let b = d.config.bridge(&bridge).map_err(app_err)?;
                let names: std::collections::HashMap<u32, String> = b
                    .ports
                    .iter()
                    .filter_map(|(n, p)| Some((p.interface.ofport?, n.clone())))
                    .collect();
                let (tx, rx) = oneshot::channel();
                d.worker.send(Cmd::DumpFdb {
                    bridge: bridge.clone(),
                    reply: tx,
                });
                (rx, names)
            };
            let entries = tokio::time::timeout(DATAPATH_ACK, rx)
                .await
                .map_err(|_| app_err("datapath did not answer"))?
                .map_err(|_| app_err("datapath stopped"))?
                .unwrap_or_default();
            let rows: Vec<FdbRow> = entries
                .into_iter()
                .map(|e| FdbRow {
                    port: e.port,
                    port_name: names.get(&e.port).cloned().unwrap_or_default(),
                    vlan: e.vlan,
                    mac: e.mac.to_string(),
                    age: e.age_secs,
                })
                .collect();
            serde_json::to_value(rows).map_err(app_err)
        }
        "trace" => {
            let bridge = bridge_param(params)?;
            let flow = params
                .get("flow")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            let rx = {
                let d = shared.lock().await;
                d.config.bridge(&bridge).map_err(app_err)?;
                let (tx, rx) = oneshot::channel();
                d.worker.send(Cmd::DumpFdb {
                    bridge: bridge.clone(),
                    reply: tx,
                });
                rx
            };
            let fdb = tokio::time::timeout(DATAPATH_ACK, rx)
                .await
                .map_err(|_| app_err("datapath did not answer"))?
                .map_err(|_| app_err("datapath stopped"))?
                .unwrap_or_default();
            let d = shared.lock().await;
            let text = crate::trace::trace(&d.config, &bridge, &flow, &fdb).map_err(app_err)?;
            Ok(json!({ "text": text }))
        }
        "dump-tables" => {
            let bridge = bridge_param(params)?;
            let d = shared.lock().await;
            let b = d.config.bridge(&bridge).map_err(app_err)?;
            let mut active: std::collections::BTreeMap<u8, u64> = std::collections::BTreeMap::new();
            for text in &b.flows {
                if let Ok(spec) = FlowSpec::parse(text) {
                    *active.entry(spec.table).or_default() += 1;
                }
            }
            let load =
                |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
            let rows: Vec<Value> = active
                .iter()
                .map(|(&t, &n)| {
                    let st = d.devices.flow_stats.table(&bridge, t);
                    json!({
                        "table": t,
                        "active": n,
                        "lookups": st.map_or(0, |s| load(&s.lookups)),
                        "matched": st.map_or(0, |s| load(&s.matched)),
                    })
                })
                .collect();
            Ok(Value::Array(rows))
        }
        "dump-flows" => {
            let bridge = bridge_param(params)?;
            let filter = params.get("filter").and_then(Value::as_str).unwrap_or("");
            let f = FlowFilter::parse(filter).map_err(app_err)?;
            let d = shared.lock().await;
            let b = d.config.bridge(&bridge).map_err(app_err)?;
            let now_ms = crate::pipeline::epoch().elapsed().as_millis() as u64;
            let mut rows: Vec<FlowRow> = b
                .flows
                .iter()
                .filter_map(|text| {
                    let spec = FlowSpec::parse(text).ok()?;
                    if !f.covers(&spec) {
                        return None;
                    }
                    let st = d.devices.flow_stats.get(&bridge, text);
                    let duration = st.map_or(0.0, |s| s.created.elapsed().as_secs_f64());
                    let last = st.map_or(0, |s| {
                        s.last_used_ms.load(std::sync::atomic::Ordering::Relaxed)
                    });
                    Some(FlowRow {
                        flow: text.clone(),
                        table: spec.table,
                        priority: spec.priority,
                        cookie: spec.cookie,
                        n_packets: st.map_or(0, |s| {
                            s.n_packets.load(std::sync::atomic::Ordering::Relaxed)
                        }),
                        n_bytes: st
                            .map_or(0, |s| s.n_bytes.load(std::sync::atomic::Ordering::Relaxed)),
                        duration,
                        idle_age: if last == 0 {
                            duration as u64
                        } else {
                            now_ms.saturating_sub(last) / 1000
                        },
                    })
                })
                .collect();
            rows.sort_by(|a, b| {
                (a.table, std::cmp::Reverse(a.priority))
                    .cmp(&(b.table, std::cmp::Reverse(b.priority)))
            });
            serde_json::to_value(rows).map_err(app_err)
        }
        "port-stats" => {
            let bridge = bridge_param(params)?;
            let d = shared.lock().await;
            let b = d.config.bridge(&bridge).map_err(app_err)?;
            d.devices.collect_kernel_drops();
            let status = d.devices.status(&d.config);
            let rows: Vec<PortStatsRow> = b
                .ports
                .keys()
                .map(|name| PortStatsRow {
                    port: name.clone(),
                    ofport: status.get(name).map_or(-1, |s| s.ofport),
                    stats: d.devices.stats(name).map(|s| s.view()).unwrap_or_default(),
                })
                .collect();
            serde_json::to_value(rows).map_err(app_err)
        }
        _ => Err((
            rpc::METHOD_NOT_FOUND,
            format!("unknown method \"{method}\""),
        )),
    }
}

/// Answers one request line. Never fails: every fault becomes a JSON-RPC error.
pub async fn handle_line(shared: &Shared, line: &[u8]) -> Value {
    let req: Value = match serde_json::from_slice(line) {
        Ok(v) => v,
        Err(e) => {
            return rpc::error_response(
                &Value::Null,
                rpc::PARSE_ERROR,
                &format!("parse error: {e}"),
            )
        }
    };
    let id = req.get("id").cloned().unwrap_or(Value::Null);
    let Some(method) = req.get("method").and_then(Value::as_str) else {
        return rpc::error_response(
            &id,
            rpc::INVALID_REQUEST,
            "invalid request: no \"method\" string",
        );
    };
    if req.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return rpc::error_response(
            &id,
            rpc::INVALID_REQUEST,
            "invalid request: \"jsonrpc\" must be \"2.0\"",
        );
    }
    let params = req.get("params").cloned().unwrap_or(json!({}));
    match dispatch(shared, method, &params).await {
        Ok(result) => json!({"jsonrpc": "2.0", "id": id, "result": result}),
        Err((code, msg)) => {
            debug!("request {method} refused: {msg}");
            rpc::error_response(&id, code, &msg)
        }
    }
}

async fn serve_conn(shared: Shared, stream: UnixStream) {
    let (rd, mut wr) = stream.into_split();
    let mut rd = BufReader::new(rd);
    let mut line = Vec::with_capacity(1024);
    loop {
        line.clear();
        // Read at most one byte past the limit, so an endless line cannot exhaust memory.
        let mut limited = (&mut rd).take(rpc::MAX_REQUEST_BYTES as u64 + 1);
        match limited.read_until(b'\n', &mut line).await {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) => {
                debug!("control connection read failed: {e}");
                return;
            }
        }
        let oversized = line.len() > rpc::MAX_REQUEST_BYTES;
        let answer = if oversized {
            rpc::error_response(
                &Value::Null,
                rpc::INVALID_REQUEST,
                &format!("request exceeds {} bytes", rpc::MAX_REQUEST_BYTES),
            )
        } else if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        } else {
            handle_line(&shared, &line).await
        };
        let mut out = serde_json::to_vec(&answer).unwrap_or_default();
        out.push(b'\n');
        if wr.write_all(&out).await.is_err() || oversized {
            // After an oversized line we cannot find the next request boundary.
            return;
        }
    }
}

use tokio::io::AsyncReadExt;

pub async fn serve(listener: UnixListener, shared: Shared) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(serve_conn(shared.clone(), stream));
            }
            Err(e) => {
                warn!("control socket accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}
