//! FastPath: the loaded program and its maps. The driver writes channels, allocations and the
//! relay's addresses through it, reads counters from it, and attaches it to interfaces
//! (`attach.rs`). Dropping it detaches every attachment and frees the maps.

use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, SocketAddr};

use aya::maps::{Array, DevMapHash, HashMap, MapData, PerCpuArray, PerCpuValues};
use aya::programs::{TestRun, TestRunOptions, Xdp};
use aya::Ebpf;

use crate::abi::{self, AddrKey, AllocStats, AllocVal, ChanKey, ChanVal, PeerKey, PeerVal};
use crate::attached::Attachment;
use crate::entry::{AllocKey, AllocationEntry, ChannelBinding, KernelDeadline, MAX_ALLOCATIONS};
use crate::error::FastPathError;
use crate::slots::Slots;
use crate::stats::{AllocCounters, PassReason, ProgramCounters, ACT_REDIRECT, ACT_TX, COUNTERS};

/// The relaying program's name in the object (what `bpftool prog` and `ip link` show).
pub const PROGRAM_NAME: &str = "turnkey_xdp";
/// The XDP_PASS stub in the same object (for the far end of a veth).
pub const PASS_STUB_NAME: &str = "turnkey_xdp_pass";

/// The loaded fast path.
pub struct FastPath {
    pub(crate) ebpf: Ebpf,
    channels: HashMap<MapData, ChanKey, ChanVal>,
    peers: HashMap<MapData, PeerKey, PeerVal>,
    /// Indexed by allocation slot ([`AllocKey`]): a free slot holds zeros.
    allocs: Array<MapData, AllocVal>,
    alloc_stats: PerCpuArray<MapData, AllocStats>,
    /// Which slots hold a live allocation (the only record of it: the driver holds the keys
    /// [`FastPath::add_allocation`] hands out) and their counters as last swept.
    slots: Slots,
    /// The relay IPs added (a channel to a peer on one of them is marked hairpin for the program).
    relay_ips: HashSet<IpAddr>,
    addrs: HashMap<MapData, AddrKey, u32>,
    counters: PerCpuArray<MapData, u64>,
    pub(crate) tx_ports: DevMapHash<MapData>,
    pub(crate) attached: BTreeMap<String, Attachment>,
    cpus: usize,
    /// Holds BPF_ENABLE_STATS while the fast path wants run-time figures (dropped: off again).
    run_stats: Option<std::os::fd::OwnedFd>,
}

/// The program's own cost as the kernel accounts it (BPF_ENABLE_STATS): total run time and runs,
/// over every CPU and interface, since stats were enabled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunStats {
    pub run_time: std::time::Duration,
    pub run_count: u64,
}

impl std::fmt::Debug for FastPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FastPath").field("attached", &self.attached).field("cpus", &self.cpus).finish()
    }
}

/// The result of one BPF_PROG_TEST_RUN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestRunOutcome {
    /// The XDP action (1 drop, 2 pass, 3 tx, 4 redirect).
    pub action: u32,
    /// The frame as the program left it.
    pub frame: Vec<u8>,
    /// The kernel's timing of the run (one run, plus one clock read: compare with the XDP_PASS
    /// stub's, [`PASS_STUB_NAME`], to get the program's own cost).
    pub duration: std::time::Duration,
}

/// XDP actions as the kernel numbers them.
pub mod action {
    pub const ABORTED: u32 = 0;
    pub const DROP: u32 = 1;
    pub const PASS: u32 = 2;
    pub const TX: u32 = 3;
    pub const REDIRECT: u32 = 4;
}

/// EACCES / EINVAL from BPF_PROG_LOAD with a verifier log: the program is wrong. Anything else
/// (EPERM without CAP_BPF, ENOSYS, ...) is the environment.
fn load_error(name: &'static str, e: aya::programs::ProgramError) -> FastPathError {
    if let aya::programs::ProgramError::LoadError { io_error, verifier_log } = &e {
        let code = io_error.raw_os_error();
        if code == Some(rustix::io::Errno::ACCESS.raw_os_error())
            || code == Some(rustix::io::Errno::INVAL.raw_os_error())
        {
            let log = verifier_log.to_string();
            let tail: Vec<&str> = log.lines().rev().take(12).collect();
            let log = tail.into_iter().rev().collect::<Vec<_>>().join("\n");
            return FastPathError::Rejected { program: name, log };
        }
    }
    FastPathError::Load(format!("{name}: {e}"))
}

fn map_err(name: &'static str, e: impl std::fmt::Display) -> FastPathError {
    FastPathError::Map { name, reason: e.to_string() }
}

fn op_err(op: &'static str, name: &'static str, e: impl std::fmt::Display) -> FastPathError {
    FastPathError::MapOp { op, name, reason: e.to_string() }
}

fn take<T: TryFrom<aya::maps::Map>>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, FastPathError>
where
    T::Error: std::fmt::Display,
{
    let map = ebpf.take_map(name).ok_or_else(|| map_err(name, "missing from the object"))?;
    T::try_from(map).map_err(|e| map_err(name, e))
}

impl FastPath {
    /// Loads the program and creates its maps (root or CAP_BPF + CAP_NET_ADMIN). Nothing is
    /// attached yet.
    pub fn load() -> Result<Self, FastPathError> {
        let Some(object) = crate::OBJECT else {
            return Err(FastPathError::Unavailable(crate::UNAVAILABLE.to_string()));
        };
        let mut ebpf = Ebpf::load(object).map_err(|e| FastPathError::Load(e.to_string()))?;
        for name in [PROGRAM_NAME, PASS_STUB_NAME] as [&'static str; 2] {
            let prog: &mut Xdp = ebpf
                .program_mut(name)
                .ok_or_else(|| FastPathError::Load(format!("program {name} missing from the object")))?
                .try_into()
                .map_err(|e: aya::programs::ProgramError| FastPathError::Load(e.to_string()))?;
            prog.load().map_err(|e| load_error(name, e))?;
        }
        let cpus = aya::util::nr_cpus().map_err(|(what, e)| FastPathError::Load(format!("{what}: {e}")))?;
        Ok(Self {
            channels: take(&mut ebpf, "fp_channels")?,
            peers: take(&mut ebpf, "fp_peers")?,
            allocs: take(&mut ebpf, "fp_allocs")?,
            alloc_stats: take(&mut ebpf, "fp_alloc_stats")?,
            addrs: take(&mut ebpf, "fp_addrs")?,
            counters: take(&mut ebpf, "fp_counters")?,
            tx_ports: take(&mut ebpf, "fp_tx_ports")?,
            slots: Slots::new(MAX_ALLOCATIONS),
            relay_ips: HashSet::new(),
            ebpf,
            attached: BTreeMap::new(),
            cpus,
            run_stats: None,
        })
    }

    pub(crate) fn program(&mut self, name: &str) -> Result<&mut Xdp, FastPathError> {
        self.ebpf
            .program_mut(name)
            .ok_or_else(|| FastPathError::Load(format!("program {name} missing")))?
            .try_into()
            .map_err(|e: aya::programs::ProgramError| FastPathError::Load(e.to_string()))
    }

    /// A relay listening address: ChannelData arriving there on a bound channel is relayed.
    pub fn add_listener(&mut self, addr: SocketAddr) -> Result<(), FastPathError> {
        let key = addr_key(addr.ip(), addr.port());
        self.addrs.insert(key, 1, 0).map_err(|e| op_err("insert", "fp_addrs", e))
    }

    /// An IP the relay allocates relayed addresses on: UDP arriving there from a peer with a bound
    /// channel is relayed; hairpin to it is recognised.
    pub fn add_relay_ip(&mut self, ip: IpAddr) -> Result<(), FastPathError> {
        self.addrs.insert(addr_key(ip, 0), 1, 0).map_err(|e| op_err("insert", "fp_addrs", e))?;
        let ip = ip.to_canonical();
        if self.relay_ips.insert(ip) {
            // Channels bound earlier to a peer on this IP are hairpin from now on.
            let (addr, family) = abi::addr_bytes(ip);
            let marked: Vec<(ChanKey, ChanVal)> = self
                .channels
                .iter()
                .filter_map(Result::ok)
                .filter(|(k, v)| k.family == family && v.peer == addr)
                .collect();
            for (k, mut v) in marked {
                v.flags |= abi::CHAN_HAIRPIN;
                self.channels.insert(k, v, 0).map_err(|e| op_err("insert", "fp_channels", e))?;
            }
        }
        Ok(())
    }

    /// A new allocation (deadline, budget) in a slot of its own, its counters at zero; `None` when
    /// every slot is live (the allocation stays in user space). Slots are dense, never-used ones
    /// first, then those of ended allocations, the earliest freed first (`slots.rs`).
    pub fn add_allocation(&mut self, entry: AllocationEntry) -> Result<Option<AllocKey>, FastPathError> {
        let Some(alloc) = self.slots.take() else { return Ok(None) };
        if let Err(e) = self.clear_slot(alloc).and_then(|()| self.set_alloc(alloc, entry.value())) {
            self.slots.give(alloc);
            return Err(e);
        }
        Ok(Some(alloc))
    }

    /// A live allocation's new deadline and budget (a refresh); its counters are kept.
    pub fn update_allocation(&mut self, alloc: AllocKey, entry: AllocationEntry) -> Result<(), FastPathError> {
        self.check_live(alloc)?;
        self.set_alloc(alloc, entry.value())
    }

    /// Sets a limited allocation's remaining byte budget (the sweep's refill); the deadline stays.
    pub fn refill_budget(&mut self, alloc: AllocKey, budget_bytes: u64) -> Result<(), FastPathError> {
        self.check_live(alloc)?;
        let mut v = self.allocs.get(&alloc.0, 0).map_err(|e| op_err("get", "fp_allocs", e))?;
        v.budget = i64::try_from(budget_bytes).unwrap_or(i64::MAX);
        v.flags |= abi::ALLOC_LIMITED;
        self.set_alloc(alloc, v)
    }

    /// Removes an allocation, frees its slot, and returns what it relayed since its last
    /// [`FastPath::sweep`] (so that sweeps plus removals count every byte once). The channels that
    /// name it stop being relayed at once: the program passes them as `no_allocation`. Removing
    /// an allocation that is not live returns zeros.
    pub fn remove_allocation(&mut self, alloc: AllocKey) -> Result<AllocCounters, FastPathError> {
        let Some(swept) = self.slots.give(alloc) else { return Ok(AllocCounters::default()) };
        // The slot is free from here whatever fails below: its next allocation clears it again.
        self.set_alloc(alloc, AllocVal::default())?;
        let counters = self.read_counters(alloc)?;
        self.clear_slot(alloc)?;
        Ok(counters.since(&swept))
    }

    /// Zeroes a slot's per-CPU counters: the one place that does, when the slot is freed and again
    /// when it is handed out (a packet charged on another CPU between the removal's read and its
    /// zeroing would otherwise reach the next allocation's usage).
    fn clear_slot(&mut self, alloc: AllocKey) -> Result<(), FastPathError> {
        let zero = PerCpuValues::try_from(vec![AllocStats::default(); self.cpus])
            .map_err(|e| op_err("insert", "fp_alloc_stats", e))?;
        self.alloc_stats.set(alloc.0, zero, 0).map_err(|e| op_err("insert", "fp_alloc_stats", e))
    }

    fn set_alloc(&mut self, alloc: AllocKey, v: AllocVal) -> Result<(), FastPathError> {
        self.allocs.set(alloc.0, v, 0).map_err(|e| op_err("insert", "fp_allocs", e))
    }

    fn check_live(&self, alloc: AllocKey) -> Result<(), FastPathError> {
        if self.slots.is_live(alloc) {
            Ok(())
        } else {
            Err(op_err("get", "fp_allocs", aya::maps::MapError::KeyNotFound))
        }
    }

    /// What a live allocation relayed in the kernel since its previous sweep (zeros for one that
    /// is not live): the driver adds it to usage accounting, caps and the
    /// `turnkey_relay_relayed_*` counters, so totals are the same with the fast path on or off.
    pub fn sweep(&mut self, alloc: AllocKey) -> Result<AllocCounters, FastPathError> {
        let now = self.alloc_counters(alloc)?;
        Ok(self.slots.swept_mut(alloc).map_or_else(AllocCounters::default, |s| now.since(&std::mem::replace(s, now))))
    }

    /// Binds (or refreshes, with a new deadline) a channel in both directions.
    pub fn bind_channel(&mut self, binding: &ChannelBinding, deadline: KernelDeadline) -> Result<(), FastPathError> {
        let (ck, mut cv, pk, pv) = binding.entries(deadline)?;
        if self.relay_ips.contains(&binding.peer.ip().to_canonical()) {
            cv.flags |= abi::CHAN_HAIRPIN;
        }
        self.peers.insert(pk, pv, 0).map_err(|e| op_err("insert", "fp_peers", e))?;
        if let Err(e) = self.channels.insert(ck, cv, 0) {
            let _ = self.peers.remove(&pk);
            return Err(op_err("insert", "fp_channels", e));
        }
        Ok(())
    }

    /// Removes a channel (both directions); the next packet goes to user space. Removing an
    /// absent channel is not an error.
    pub fn unbind_channel(&mut self, binding: &ChannelBinding) -> Result<(), FastPathError> {
        let (ck, _, pk, _) = binding.entries(KernelDeadline(0))?;
        let _ = self.channels.remove(&ck);
        let _ = self.peers.remove(&pk);
        Ok(())
    }

    /// How many channels are in the kernel.
    pub fn channel_count(&self) -> usize {
        self.channels.keys().filter(Result::is_ok).count()
    }

    /// A live allocation's counters since it was added, summed over CPUs (zeros for one that is
    /// not live).
    pub fn alloc_counters(&self, alloc: AllocKey) -> Result<AllocCounters, FastPathError> {
        if !self.slots.is_live(alloc) {
            return Ok(AllocCounters::default());
        }
        self.read_counters(alloc)
    }

    fn read_counters(&self, alloc: AllocKey) -> Result<AllocCounters, FastPathError> {
        let per_cpu = self.alloc_stats.get(&alloc.0, 0).map_err(|e| op_err("get", "fp_alloc_stats", e))?;
        Ok(per_cpu.iter().fold(AllocCounters::default(), |acc, s| AllocCounters {
            to_peer_packets: acc.to_peer_packets + s.to_peer_packets,
            to_peer_bytes: acc.to_peer_bytes + s.to_peer_bytes,
            to_client_packets: acc.to_client_packets + s.to_client_packets,
            to_client_bytes: acc.to_client_bytes + s.to_client_bytes,
        }))
    }

    /// The program's pass and action counters, summed over CPUs.
    pub fn counters(&self) -> Result<ProgramCounters, FastPathError> {
        let mut sums = vec![0u64; COUNTERS as usize];
        for (i, sum) in sums.iter_mut().enumerate() {
            let v = self.counters.get(&(i as u32), 0).map_err(|e| op_err("get", "fp_counters", e))?;
            *sum = v.iter().sum();
        }
        Ok(ProgramCounters {
            passed: PassReason::ALL.iter().map(|r| (*r, sums[r.index() as usize])).collect(),
            tx: sums[ACT_TX as usize],
            redirected: sums[ACT_REDIRECT as usize],
        })
    }

    /// Turns on the kernel's run-time accounting of BPF programs (BPF_ENABLE_STATS, the same as
    /// `sysctl kernel.bpf_stats_enabled=1` but only while this fast path lives). It costs two
    /// clock reads per packet, so it is for measuring, or for a relay that exports BPF time.
    pub fn enable_run_stats(&mut self) -> Result<(), FastPathError> {
        if self.run_stats.is_none() {
            let fd =
                aya::sys::enable_stats(aya::sys::Stats::RunTime).map_err(|e| FastPathError::Load(e.to_string()))?;
            self.run_stats = Some(fd);
        }
        Ok(())
    }

    /// The relaying program's run time and run count (zero unless stats are enabled, here or by
    /// the sysctl).
    pub fn run_stats(&mut self) -> Result<RunStats, FastPathError> {
        let info = self.program(PROGRAM_NAME)?.info().map_err(|e| FastPathError::Load(e.to_string()))?;
        Ok(RunStats { run_time: info.run_time(), run_count: info.run_count() })
    }

    /// Allows XDP_REDIRECT to `ifindex` (every attached interface is allowed already).
    pub fn allow_egress(&mut self, ifindex: u32) -> Result<(), FastPathError> {
        self.tx_ports.insert(ifindex, ifindex, None, 0).map_err(|e| op_err("insert", "fp_tx_ports", e))
    }

    /// Runs the program once on `frame` through BPF_PROG_TEST_RUN (repeat 1), as if it arrived on
    /// `ingress_ifindex` (0: the loopback device of the caller's network namespace). The tests'
    /// entry point; nothing is sent.
    pub fn test_run(&mut self, frame: &[u8], ingress_ifindex: u32) -> Result<TestRunOutcome, FastPathError> {
        self.test_run_program(PROGRAM_NAME, frame, ingress_ifindex)
    }

    /// [`FastPath::test_run`] of either program in the object ([`PROGRAM_NAME`] or
    /// [`PASS_STUB_NAME`]): the cost measurement times both (`examples/prog_cost.rs`).
    pub fn test_run_program(
        &mut self,
        name: &str,
        frame: &[u8],
        ingress_ifindex: u32,
    ) -> Result<TestRunOutcome, FastPathError> {
        let mut out = vec![0u8; frame.len() + 256];
        let mut ctx = [0u8; 24]; // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex
        ctx[4..8].copy_from_slice(&(frame.len() as u32).to_ne_bytes());
        ctx[12..16].copy_from_slice(&ingress_ifindex.to_ne_bytes());
        let prog = self.program(name)?;
        let opts = TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ctx_in: if ingress_ifindex == 0 { None } else { Some(&ctx) },
            repeat: 1,
            ..TestRunOptions::new()
        };
        let r = prog.test_run(opts).map_err(|e| FastPathError::TestRun(format!("{e:?}")))?;
        out.truncate(r.data_size_out as usize);
        Ok(TestRunOutcome { action: r.return_value, frame: out, duration: r.duration })
    }
}

fn addr_key(ip: IpAddr, port: u16) -> AddrKey {
    let (addr, family) = abi::addr_bytes(ip);
    AddrKey { addr, port: port.to_be(), family, pad: 0 }
}
