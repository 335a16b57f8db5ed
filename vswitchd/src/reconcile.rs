//! Turning the configuration into open devices and a datapath [`Snapshot`].
//!
//! Modelled on Open vSwitch's `bridge_reconfigure`: compute what is wanted, close
//! what is obsolete *before* opening anything new (so a port re-created under the
//! same name gets a fresh device), and record a per-interface error instead of
//! failing the whole change. A missing device is not fatal: the interface is shown
//! with its error and retried every second, and attached as soon as it appears —
//! which is what happens when a VM's tap is destroyed and re-created.

use std::collections::HashMap;
use std::sync::Arc;

use tracing::{info, warn};

use crate::config::{Config, IfaceType};

use ofproto::tunnel::TunnelDemux;

use crate::datapath::{BridgeRt, EndpointRt, PortKind, PortRt, Snapshot, TunnelOut};
use crate::netdev::afpacket::PacketSocket;
use crate::netdev::tap::Tap;
use crate::netdev::tunnel::{TunnelKind, TunnelRx, TunnelTx};
use crate::netdev::{sys, Netdev};
use crate::pipeline::{self, FlowStatsRegistry};
use crate::rpc::IfaceStatus;
use crate::stats::PortStats;
use crate::tunnel::Endpoint;

/// How an interface's device was opened, to notice when the config wants it differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct OpenedAs {
    kind: IfaceType,
    offload: bool,
    /// `options:rx_ring` (`system` ports): read through a receive ring.
    rx_ring: bool,
}

struct OpenDevice {
    dev: Arc<Netdev>,
    how: OpenedAs,
}

/// The devices the daemon holds, and what went wrong with the ones it could not open.
#[derive(Default)]
pub struct Devices {
    open: HashMap<String, OpenDevice>,
    stats: HashMap<String, Arc<PortStats>>,
    errors: HashMap<String, String>,
    /// Per-flow counters, kept across recompiles of the flow tables.
    pub flow_stats: FlowStatsRegistry,
    /// Tunnel receive sockets by (kind, local address, UDP port), shared by ports.
    tunnel_rx: HashMap<Endpoint, Arc<TunnelRx>>,
    /// The raw socket all tunnel ports send through, opened with the first of them.
    tunnel_tx: Option<Arc<TunnelTx>>,
}

fn wanted(cfg: &Config) -> HashMap<&str, OpenedAs> {
    let mut w = HashMap::new();
    for b in cfg.bridges.values() {
        for (name, p) in &b.ports {
            let i = &p.interface;
            // Patch and tunnel ports have no device of their own.
            if i.kind == IfaceType::Patch || i.tunnel_kind().is_some() {
                continue;
            }
            let on = |k: &str| i.options.get(k).map(String::as_str) != Some("false");
            w.insert(
                name.as_str(),
                OpenedAs {
                    kind: i.kind,
                    offload: on("offload"),
                    rx_ring: on("rx_ring"),
                },
            );
        }
    }
    w
}

impl Devices {
    /// Names of open devices the configuration no longer wants as they are, or whose
    /// kernel device vanished or was replaced (a VM restarted with the same tap name).
    pub fn obsolete(&self, cfg: &Config) -> Vec<String> {
        let w = wanted(cfg);
        self.open
            .iter()
            .filter(|(name, d)| {
                w.get(name.as_str()) != Some(&d.how)
                    || sys::ifindex(name).ok() != Some(d.dev.ifindex())
            })
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// Removes devices from the set; the caller drops them once the datapath has let go.
    pub fn take(&mut self, names: &[String]) -> Vec<Arc<Netdev>> {
        names
            .iter()
            .filter_map(|n| {
                let d = self.open.remove(n)?;
                info!("closed device {n}");
                Some(d.dev)
            })
            .collect()
    }

    /// Whether some wanted device is not open but might open now.
    pub fn missing(&self, cfg: &Config) -> bool {
        wanted(cfg).iter().any(|(name, how)| {
            !self.open.contains_key(*name)
                && (how.kind == IfaceType::Internal || sys::ifindex(name).is_ok())
        }) || cfg.bridges.values().any(|b| {
            b.ports
                .iter()
                .any(|(n, p)| p.interface.tunnel_kind().is_some() && self.errors.contains_key(n))
        })
    }

    /// Opens the sockets tunnel ports need and closes the ones no port needs any
    /// more; a port whose socket cannot be opened gets the error. Returns whether
    /// anything opened.
    fn open_tunnels(&mut self, cfg: &Config) -> bool {
        let mut changed = false;
        let mut needed = std::collections::HashSet::new();
        for b in cfg.bridges.values() {
            for (name, p) in &b.ports {
                let Some(t) = p.interface.tunnel() else {
                    continue;
                };
                let tx = match &self.tunnel_tx {
                    Some(tx) => Ok(tx.clone()),
                    None => TunnelTx::open().map(Arc::new),
                };
                let ep = t.endpoint();
                needed.insert(ep);
                let rx = match self.tunnel_rx.get(&ep) {
                    Some(rx) => Ok(rx.clone()),
                    None => match ep.kind {
                        TunnelKind::Vxlan => TunnelRx::vxlan(ep.v6, ep.local, ep.port),
                        TunnelKind::Gre => TunnelRx::gre(ep.v6),
                    }
                    .map(Arc::new),
                };
                match (tx, rx) {
                    (Ok(tx), Ok(rx)) => {
                        if self.tunnel_tx.is_none() {
                            self.tunnel_tx = Some(tx);
                        }
                        if let std::collections::hash_map::Entry::Vacant(v) =
                            self.tunnel_rx.entry(ep)
                        {
                            info!("opened tunnel socket {ep:?}");
                            v.insert(rx);
                            changed = true;
                        }
                        self.errors.remove(name.as_str());
                    }
                    (Err(e), _) | (_, Err(e)) => {
                        let msg = format!("could not open tunnel socket for {name} ({e})");
                        if self.errors.get(name.as_str()) != Some(&msg) {
                            warn!("{msg}");
                            self.errors.insert(name.clone(), msg);
                        }
                    }
                }
            }
        }
        self.tunnel_rx.retain(|ep, _| needed.contains(ep));
        if needed.is_empty() {
            self.tunnel_tx = None;
        }
        changed
    }

    /// Opens every wanted device that is not open; returns whether any opened.
    pub fn open_missing(&mut self, cfg: &Config) -> bool {
        let mut changed = self.open_tunnels(cfg);
        let w = wanted(cfg);
        self.errors.retain(|n, _| {
            w.contains_key(n.as_str())
                || cfg
                    .port(n)
                    .is_some_and(|p| p.interface.tunnel_kind().is_some())
        });
        self.stats.retain(|n, _| cfg.port_bridge(n).is_some());
        for (name, how) in w {
            if self.open.contains_key(name) {
                continue;
            }
            let result = match how.kind {
                IfaceType::Internal => Tap::create(name).map(Netdev::Tap),
                _ => PacketSocket::open(name, how.offload, how.rx_ring).map(Netdev::Packet),
                // Patch ports have no device.
            };
            match result {
                Ok(dev) => {
                    info!(
                        "attached {} device {name} (ifindex {})",
                        how.kind,
                        dev.ifindex()
                    );
                    self.errors.remove(name);
                    self.open.insert(
                        name.to_string(),
                        OpenDevice {
                            dev: Arc::new(dev),
                            how,
                        },
                    );
                    changed = true;
                }
                Err(e) => {
                    let msg = e.to_string();
                    if self.errors.get(name) != Some(&msg) {
                        warn!("{msg}");
                        self.errors.insert(name.to_string(), msg);
                    }
                }
            }
        }
        changed
    }

    /// Gives every open device with an `mtu_request` that MTU (when it differs, so a
    /// recheck costs one ioctl per such device); a refusal is the interface's error.
    ///
    /// An internal port without `mtu_request` follows its bridge, as in Open vSwitch:
    /// it takes the smallest MTU of the bridge's other devices, so what the host
    /// sends through it fits every port (e.g. VMs on 1450 behind a VXLAN underlay).
    pub fn apply_mtus(&mut self, cfg: &Config) {
        for b in cfg.bridges.values() {
            let follow = b
                .ports
                .iter()
                .filter(|(n, p)| {
                    p.interface.kind != IfaceType::Internal && self.open.contains_key(n.as_str())
                })
                .filter_map(|(n, p)| p.interface.mtu_request.or_else(|| sys::mtu(n).ok()))
                .min();
            for (name, p) in &b.ports {
                let want = match p.interface.mtu_request {
                    Some(m) => Some(m),
                    None if p.interface.kind == IfaceType::Internal => follow,
                    None => None,
                };
                let (Some(want), true) = (want, self.open.contains_key(name)) else {
                    continue;
                };
                if sys::mtu(name).ok() == Some(want) {
                    continue;
                }
                match sys::set_mtu(name, want) {
                    Ok(()) => info!("{name}: MTU set to {want}"),
                    Err(e) => {
                        let msg = format!("could not set the MTU of {name} to {want} ({e})");
                        warn!("{msg}");
                        self.errors.insert(name.clone(), msg);
                    }
                }
            }
        }
    }

    fn stats_for(&mut self, name: &str) -> Arc<PortStats> {
        self.stats.entry(name.to_string()).or_default().clone()
    }

    /// Moves the kernel's receive-overrun counts into each port's `rx_dropped`.
    pub fn collect_kernel_drops(&self) {
        for (name, d) in &self.open {
            let n = d.dev.take_kernel_drops();
            if n != 0 {
                if let Some(s) = self.stats.get(name) {
                    s.add_rx(0, 0, n, 0);
                }
            }
        }
    }

    pub fn stats(&self, name: &str) -> Option<&Arc<PortStats>> {
        self.stats.get(name)
    }

    /// Builds the datapath's view of `cfg` with the devices open now.
    pub fn snapshot(&mut self, cfg: &Config) -> Snapshot {
        let mut snap = Snapshot::default();
        let mut index: HashMap<&str, usize> = HashMap::new();
        for (bi, (bname, b)) in cfg.bridges.iter().enumerate() {
            let mut br = BridgeRt {
                name: bname.clone(),
                ports: Vec::with_capacity(b.ports.len()),
                by_ofport: HashMap::new(),
                pipeline: None,
                mac_table_size: b.mac_table_size(),
                mac_aging_secs: b.mac_aging_secs(),
            };
            for (pname, p) in &b.ports {
                let tunnel = p.interface.tunnel().and_then(|cfg| {
                    let tx = self.tunnel_tx.clone()?;
                    self.tunnel_rx
                        .contains_key(&cfg.endpoint())
                        .then_some(TunnelOut { cfg, tx })
                });
                let kind = match (self.open.get(pname), tunnel) {
                    (Some(d), _) => PortKind::Device(d.dev.clone()),
                    (None, Some(t)) => PortKind::Tunnel(t),
                    (None, None) if p.interface.kind == IfaceType::Patch => {
                        PortKind::Patch { peer: None }
                    }
                    (None, None) => PortKind::Absent,
                };
                let i = snap.ports.len();
                let ofport = p.interface.ofport.unwrap_or(0);
                snap.ports.push(PortRt {
                    name: pname.clone(),
                    bridge: bi,
                    ofport,
                    kind,
                    vlan: p.vlan(),
                    stats: self.stats_for(pname),
                });
                br.ports.push(i);
                br.by_ofport.insert(ofport, i);
                index.insert(pname, i);
            }
            snap.bridges.push(br);
        }
        // Compile flow tables, resolving port names within each bridge.
        self.flow_stats.retain(cfg);
        for (bi, (bname, b)) in cfg.bridges.iter().enumerate() {
            let ports = &snap.ports;
            let resolve = |name: &str| {
                let &i = index.get(name)?;
                (ports[i].bridge == bi).then(|| (i, ports[i].ofport))
            };
            let local = index.get(bname.as_str()).copied();
            snap.bridges[bi].pipeline =
                pipeline::compile(bname, b, &resolve, local, &mut self.flow_stats);
        }
        // Each tunnel receive socket, with the ports it delivers to.
        for (ep, rx) in &self.tunnel_rx {
            let mut demux = TunnelDemux::new();
            for (i, p) in snap.ports.iter().enumerate() {
                if let PortKind::Tunnel(t) = &p.kind {
                    if t.cfg.endpoint() == *ep {
                        demux.insert(t.cfg.matcher(), i);
                    }
                }
            }
            snap.endpoints.push(EndpointRt {
                rx: rx.clone(),
                demux,
            });
        }
        // Resolve patch peers now that every port has an index.
        for b in cfg.bridges.values() {
            for (pname, p) in &b.ports {
                if p.interface.kind != IfaceType::Patch {
                    continue;
                }
                let me = index[pname.as_str()];
                let peer = patch_peer(cfg, pname).ok().map(|peer| index[peer]);
                snap.ports[me].kind = PortKind::Patch { peer };
            }
        }
        snap
    }

    /// `show`'s view of each interface: its port number, or -1 and why not.
    pub fn status(&self, cfg: &Config) -> std::collections::BTreeMap<String, IfaceStatus> {
        let mut out = std::collections::BTreeMap::new();
        for b in cfg.bridges.values() {
            for (name, p) in &b.ports {
                let i = &p.interface;
                let ofport = i.ofport.map_or(-1, i64::from);
                let st = match (i.kind, self.open.get(name)) {
                    (IfaceType::Patch, _) => match patch_peer(cfg, name) {
                        Ok(_) => IfaceStatus {
                            ofport,
                            ..IfaceStatus::default()
                        },
                        Err(e) => IfaceStatus {
                            ofport: -1,
                            error: Some(e),
                            ..IfaceStatus::default()
                        },
                    },
                    (IfaceType::Vxlan | IfaceType::Gre, _) => IfaceStatus {
                        ofport: if self.errors.contains_key(name) {
                            -1
                        } else {
                            ofport
                        },
                        error: self.errors.get(name).cloned(),
                        ..IfaceStatus::default()
                    },
                    (_, Some(d)) => IfaceStatus {
                        ofport,
                        error: None,
                        ifindex: Some(d.dev.ifindex()),
                        mac_in_use: sys::mac_address(name)
                            .ok()
                            .map(|m| ofproto::MacAddr(m).to_string()),
                        status: [("rx_mode".to_string(), d.dev.rx_mode().to_string())].into(),
                        ..IfaceStatus::default()
                    },
                    (_, None) => IfaceStatus {
                        ofport: -1,
                        error: Some(
                            self.errors
                                .get(name)
                                .cloned()
                                .unwrap_or_else(|| "not attached yet".into()),
                        ),
                        ..IfaceStatus::default()
                    },
                };
                let mut st = st;
                st.statistics = self.stats.get(name).map(|s| s.view());
                if self.open.contains_key(name) {
                    st.mtu = sys::mtu(name).ok();
                }
                out.insert(name.clone(), st);
            }
        }
        out
    }

    /// Closes everything (shutdown); TAPs disappear as their descriptors close.
    pub fn close_all(&mut self) -> Vec<Arc<Netdev>> {
        self.open.drain().map(|(_, d)| d.dev).collect()
    }
}

/// The port at the other end of patch port `name`, or why there is none. As in Open
/// vSwitch, both ends must name each other.
fn patch_peer<'a>(cfg: &'a Config, name: &str) -> Result<&'a str, String> {
    let me = cfg.port(name).ok_or_else(|| format!("no port {name}"))?;
    let peer_name = me
        .interface
        .options
        .get("peer")
        .ok_or_else(|| "patch: missing peer option".to_string())?;
    let (peer_key, peer) = cfg
        .bridges
        .values()
        .find_map(|b| b.ports.get_key_value(peer_name))
        .ok_or_else(|| format!("patch: peer {peer_name} does not exist"))?;
    if peer.interface.kind != IfaceType::Patch {
        return Err(format!("patch: peer {peer_name} is not a patch port"));
    }
    if peer.interface.options.get("peer").map(String::as_str) != Some(name) {
        return Err(format!(
            "patch: peer {peer_name} does not name {name} as its peer"
        ));
    }
    Ok(peer_key.as_str())
}
