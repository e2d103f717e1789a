//! Loading the drivers for the devices present: every device's `modalias` (read
//! through `/sys/bus` and `/sys/class`) is matched against the initramfs's module
//! index (the pure [`modules_for_modaliases`]), and the modules are handed to
//! `finit_module` on [`loaders`] threads, each as soon as the modules it depends on
//! are in (the pure [`prerequisites`]), so one slow probe (ata_piix waiting on
//! emulated IDE ports) does not hold up the others. Whenever a module is in, the new
//! devices it brought (a bus driver's) are looked for: in the kernel's uevents when
//! PID 1 gives a socket for them (`uevent`), else by reading `/sys` again; bounded in
//! time. The filesystems and device-mapper targets recovery needs ([`ALWAYS`]) are
//! loaded by name with [`load_named`], apart: PID 1 does that after the first screen,
//! so on a small (or emulated) CPU they do not hold up the disks' drivers.
//!
//! Does not own: the index or the matcher (`initramfs::modules`), nor waiting for the
//! disks that the drivers find (`mod.rs`).

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::kmod::{ModuleInitFlags, finit_module};

use super::uevent::Uevents;
use crate::initramfs::modules::{Index, modules_for_modaliases};

/// Loaded by name whatever the devices: the filesystems recovery mounts and the
/// device-mapper target for snapshots. ext4 names `crc32c` only as a soft dependency
/// (the index adds it); it is listed too since mounts fail without it.
pub const ALWAYS: &[&str] = &[
    "crc32c",
    "ext4",
    "vfat",
    "nls_cp437",
    "nls_iso8859_1",
    "dm_snapshot",
];

/// The modules (names or aliases) that mounting a filesystem of libblkid's `TYPE`
/// needs, before [`ALWAYS`] is in: ext2 and ext3 are mounted by ext4, which mounts
/// nothing with `metadata_csum` until a crc32c is there; vfat wants the code page and
/// character set its mount options default to.
pub fn for_filesystem(kind: &str) -> Vec<&str> {
    match kind {
        "ext2" | "ext3" | "ext4" => vec!["crc32c", "ext4"],
        "vfat" => vec!["vfat", "nls_cp437", "nls_iso8859_1"],
        other => vec![other],
    }
}

/// What happened to one module.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Loaded {
    Loaded,
    /// `EEXIST`: loaded already (or built in under another name).
    AlreadyThere,
    /// `ENODEV`: the module declined, no device or CPU feature for it
    /// (crc32c_intel on an emulated CPU without SSE4.2).
    NoDevice,
    Failed(String),
}

/// The outcome of loading: each module tried, in order, and how it went.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub tried: Vec<(String, Loaded)>,
    /// Rounds of reading modaliases.
    pub rounds: u32,
    /// The time bound ran out while modaliases were still appearing.
    pub timed_out: bool,
    /// How often `/sys` was read for modaliases and the uevents looked at, and how
    /// long that took in all: for the boot's timeline in the log.
    pub scans: u32,
    pub event_checks: u32,
    pub scanning: Duration,
}

impl Report {
    pub fn count(&self, what: fn(&Loaded) -> bool) -> usize {
        self.tried.iter().filter(|(_, l)| what(l)).count()
    }

    /// One line for the status screen and the log.
    pub fn summary(&self) -> String {
        let failed: Vec<String> = self
            .tried
            .iter()
            .filter_map(|(m, l)| match l {
                Loaded::Failed(e) => Some(format!("{m} ({e})")),
                _ => None,
            })
            .collect();
        let mut s = format!(
            "drivers: {} loaded, {} already there, {} without a device, in {} round(s)",
            self.count(|l| *l == Loaded::Loaded),
            self.count(|l| *l == Loaded::AlreadyThere),
            self.count(|l| *l == Loaded::NoDevice),
            self.rounds
        );
        if self.timed_out {
            s.push_str("; stopped by the time bound");
        }
        if !failed.is_empty() {
            s.push_str(&format!("; FAILED: {}", failed.join(", ")));
        }
        s
    }
}

/// Every device's `modalias` under `sys` (a `/sys`), sorted, each once: the devices
/// of every bus (`bus/*/devices/*`), of every class (`class/*/*`: input devices, DMI),
/// and the CPU's (`devices/system/cpu`, in neither). These are links into
/// `/sys/devices`; reading through them, as udev's coldplug does, costs a few hundred
/// lookups where walking `/sys/devices` reads thousands of directories: about half a
/// second under emulation, and the loader reads the aliases again after every module.
/// Unreadable entries are skipped, as a device may vanish while we look.
pub fn collect_modaliases(sys: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut read = |file: PathBuf| {
        if let Ok(text) = std::fs::read_to_string(file) {
            let alias = text.trim();
            if !alias.is_empty() {
                out.insert(alias.to_string());
            }
        }
    };
    for bus in entries(&sys.join("bus")) {
        for device in entries(&bus.join("devices")) {
            read(device.join("modalias"));
        }
    }
    for class in entries(&sys.join("class")) {
        for device in entries(&class) {
            read(device.join("modalias"));
        }
    }
    read(sys.join("devices/system/cpu/modalias"));
    out
}

/// The entries of `dir`; none when it cannot be read.
fn entries(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

/// The modules to try for modaliases not seen before, leaving out those already
/// tried: the pure step of one round.
pub fn plan_round(index: &Index, new_aliases: &[String], tried: &BTreeSet<String>) -> Vec<String> {
    modules_for_modaliases(new_aliases, index)
        .into_iter()
        .filter(|m| !tried.contains(m))
        .collect()
}

/// Every call of `finit_module` gets the next number; those not returned yet are in
/// [`IN_FLIGHT`], over all loaders.
static STARTED: AtomicU64 = AtomicU64::new(0);
static IN_FLIGHT: Mutex<BTreeSet<u64>> = Mutex::new(BTreeSet::new());

/// The loaders at one moment ([`progress`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    /// The number of the last module handed to the kernel.
    pub started: u64,
    /// The oldest one the kernel has not returned yet.
    pub oldest_loading: Option<u64>,
}

impl Progress {
    /// Whether every module being loaded at `earlier` has returned by now. Another
    /// loader finishing is not enough: virtio_blk may still be probing the next disk.
    pub fn all_returned_since(&self, earlier: &Progress) -> bool {
        self.oldest_loading.is_none_or(|o| o > earlier.started)
    }
}

/// How far the loaders are: PID 1 waits for the modules that were loading when a disk
/// appeared to return, as they may be adding more.
pub fn progress() -> Progress {
    let in_flight = IN_FLIGHT.lock().unwrap_or_else(|p| p.into_inner());
    Progress {
        started: STARTED.load(Ordering::SeqCst),
        oldest_loading: in_flight.first().copied(),
    }
}

/// Hands one module file to the kernel.
pub fn load_file(path: &Path) -> Loaded {
    let file = match File::open(path) {
        Ok(f) => f,
        // It may be in the image's deferred part, not unpacked yet.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            match crate::initramfs::deferred::ensure().map(|_| File::open(path)) {
                Ok(Ok(f)) => f,
                Ok(Err(e)) => return Loaded::Failed(format!("opening {}: {e}", path.display())),
                Err(e) => return Loaded::Failed(format!("{}: {e:#}", path.display())),
            }
        }
        Err(e) => return Loaded::Failed(format!("opening {}: {e}", path.display())),
    };
    let seq = {
        let mut in_flight = IN_FLIGHT.lock().unwrap_or_else(|p| p.into_inner());
        let seq = STARTED.fetch_add(1, Ordering::SeqCst) + 1;
        in_flight.insert(seq);
        seq
    };
    let result = finit_module(&file, c"", ModuleInitFlags::empty());
    IN_FLIGHT
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&seq);
    match result {
        Ok(()) => Loaded::Loaded,
        Err(Errno::EEXIST) => Loaded::AlreadyThere,
        Err(Errno::ENODEV) => Loaded::NoDevice,
        Err(e) => Loaded::Failed(e.desc().to_string()),
    }
}

/// Until when loaders start no new module ([`hold_until`]).
static HOLD: Mutex<Option<Instant>> = Mutex::new(None);

/// Device loaders ([`load_for_devices`]) start no new module until `until` (or
/// [`release`]): PID 1 takes the
/// inventory and draws the first screen meanwhile, which on a one-CPU machine would
/// otherwise share the CPU with the drivers still loading. A module already loading
/// goes on; the time bound keeps a hold from being forgotten.
pub fn hold_until(until: Instant) {
    *HOLD.lock().unwrap_or_else(|p| p.into_inner()) = Some(until);
}

/// Ends a [`hold_until`].
pub fn release() {
    *HOLD.lock().unwrap_or_else(|p| p.into_inner()) = None;
}

/// How long loaders still hold off, if they do.
fn held_for() -> Option<Duration> {
    let until = (*HOLD.lock().unwrap_or_else(|p| p.into_inner()))?;
    let left = until.saturating_duration_since(Instant::now());
    (!left.is_zero()).then_some(left)
}

/// At most this many threads hand modules to the kernel at once.
pub const LOADERS: usize = 6;

/// Threads to load with: one per CPU, up to [`LOADERS`]. A module's init is mostly
/// CPU work (relocation, signature check, probing); what waits on hardware (ATA
/// ports, USB hubs) is done by the kernel's own asynchronous probing after init
/// returns. More threads than CPUs only share the CPU out: on a one-CPU guest, six
/// threads let ata_piix's probe hold up virtio_pci's, and the disks came 0.2 s
/// later.
pub fn loaders() -> usize {
    std::thread::available_parallelism()
        .map(usize::from)
        .unwrap_or(1)
        .clamp(1, LOADERS)
}

/// For each module of `batch` (in load order), the indexes in `batch` of the modules
/// that must be in before it: its dependencies and soft pre-dependencies, and the
/// modules it is a soft post-dependency of. Only earlier modules count (load order
/// puts them there; a soft-dependency cycle must not wait for ever), and modules
/// outside `batch` were dealt with before and are not waited for.
pub fn prerequisites(index: &Index, batch: &[String]) -> Vec<Vec<usize>> {
    let pos: BTreeMap<&str, usize> = batch
        .iter()
        .enumerate()
        .map(|(i, m)| (m.as_str(), i))
        .collect();
    let mut out: Vec<BTreeSet<usize>> = vec![BTreeSet::new(); batch.len()];
    for (i, name) in batch.iter().enumerate() {
        let Some(m) = index.modules.get(name) else {
            continue;
        };
        let before = m
            .depends
            .iter()
            .cloned()
            .chain(m.softdep_pre.iter().flat_map(|p| index.resolve(p)));
        for dep in before {
            if let Some(&j) = pos.get(dep.as_str())
                && j < i
            {
                out[i].insert(j);
            }
        }
        for post in m.softdep_post.iter().flat_map(|p| index.resolve(p)) {
            if let Some(&j) = pos.get(post.as_str())
                && j > i
            {
                out[j].insert(i);
            }
        }
    }
    out.into_iter().map(|s| s.into_iter().collect()).collect()
}

/// The shared state of one [`load_for_devices`] run.
#[derive(Default)]
struct Queue {
    /// Every module handed out or waiting, in the order planned.
    planned: Vec<String>,
    /// Per planned module: the planned modules it waits for.
    waits_for: Vec<Vec<usize>>,
    /// Per planned module: the round of modaliases that brought it.
    round: Vec<u32>,
    /// Per planned module: not started, started, finished.
    started: Vec<bool>,
    finished: Vec<bool>,
    /// Outcomes in the order they came.
    outcomes: Vec<(String, Loaded)>,
    /// No more work will be planned: idle loaders may go.
    closing: bool,
    /// The modaliases are read again after each module (device loading).
    rescans: bool,
    /// How many outcomes the planner had seen when it last read the modaliases.
    scanned: usize,
}

impl Queue {
    /// Adds `names` (in load order, none planned before), brought by `round`.
    fn plan(&mut self, index: &Index, names: &[String], round: u32) {
        let base = self.planned.len();
        let mut all = self.planned.clone();
        all.extend(names.iter().cloned());
        let pre = prerequisites(index, &all);
        for (i, name) in names.iter().enumerate() {
            self.planned.push(name.clone());
            self.waits_for.push(pre[base + i].clone());
            self.round.push(round);
            self.started.push(false);
            self.finished.push(false);
        }
    }

    /// The module to start next: of those not started whose prerequisites are all
    /// finished, one from the latest round, first planned. A later round's modules
    /// drive devices that a bus driver just found (virtio_blk once virtio_pci is
    /// in): finishing a chain first brings its disks sooner, which on a small CPU
    /// matters more than starting everything at once.
    fn next_ready(&self) -> Option<usize> {
        let ready = (0..self.planned.len())
            .filter(|&i| !self.started[i] && self.waits_for[i].iter().all(|&j| self.finished[j]));
        let mut best: Option<usize> = None;
        for i in ready {
            if best.is_none_or(|b| self.round[i] > self.round[b]) {
                best = Some(i);
            }
        }
        best
    }

    fn busy(&self) -> bool {
        self.finished.iter().any(|f| !f)
    }

    /// A module is in whose new devices the planner has not looked for yet: starting
    /// another module now could pass over the driver those devices need.
    fn rescan_pending(&self) -> bool {
        self.rescans && !self.closing && self.scanned < self.outcomes.len()
    }
}

/// One loader thread: takes ready modules until the queue closes and is empty.
fn loader(index: &Index, mod_dir: &Path, queue: &Mutex<Queue>, cv: &Condvar) {
    let lock = || queue.lock().unwrap_or_else(|p| p.into_inner());
    let mut q = lock();
    loop {
        if q.rescan_pending() {
            q = cv.wait(q).unwrap_or_else(|p| p.into_inner());
            continue;
        }
        // Only device loading holds: what is loaded by name is wanted now.
        if let Some(left) = held_for().filter(|_| q.rescans && !q.closing) {
            q = cv
                .wait_timeout(q, left.min(Duration::from_millis(20)))
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
            continue;
        }
        if let Some(i) = q.next_ready() {
            q.started[i] = true;
            let name = q.planned[i].clone();
            drop(q);
            let outcome = match index.modules.get(&name) {
                Some(m) => load_file(&mod_dir.join(&m.path)),
                None => Loaded::Failed("not in the module index".into()),
            };
            super::log::info(&format!("module {name}: {outcome:?}"));
            q = lock();
            q.finished[i] = true;
            q.outcomes.push((name, outcome));
            cv.notify_all();
        } else if q.closing && !q.started.iter().any(|s| !s) {
            return;
        } else {
            q = cv.wait(q).unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// Where [`load_for_devices`] learns of devices: `sys` (a `/sys`) is read first, and
/// then, each time a module is in, `events` is drained when given (a socket opened
/// before `sys` was read, so nothing falls between them), or else `sys` read again.
#[derive(Clone, Copy)]
pub struct Devices<'a> {
    pub sys: &'a Path,
    pub events: Option<&'a Uevents>,
}

/// Loads drivers for the devices present on [`loaders`] threads, looking for new
/// devices each time a module is in, until nothing is loading and no new modalias
/// appeared, or `deadline` passes (then nothing more is started, and what is loading
/// is waited for).
pub fn load_for_devices(
    index: &Index,
    mod_dir: &Path,
    devices: Devices,
    deadline: Instant,
) -> Report {
    load(index, mod_dir, Some(devices), &[], deadline)
}

/// Loads the modules `names` (names or aliases, as [`Index::load_order`] takes them)
/// with their dependencies, on [`loaders`] threads, until all are tried or
/// `deadline` passes. A module loaded already comes back as
/// [`Loaded::AlreadyThere`]; so does one another thread is loading at the same time
/// (the kernel waits for it to finish, then says `EEXIST`).
pub fn load_named(index: &Index, mod_dir: &Path, names: &[&str], deadline: Instant) -> Report {
    load(index, mod_dir, None, names, deadline)
}

/// [`load_for_devices`] when `devices` is given, then the modules `names` in the
/// first batch.
fn load(
    index: &Index,
    mod_dir: &Path,
    devices: Option<Devices>,
    names: &[&str],
    deadline: Instant,
) -> Report {
    let queue = Mutex::new(Queue {
        rescans: devices.is_some(),
        ..Queue::default()
    });
    let cv = Condvar::new();
    let lock = || queue.lock().unwrap_or_else(|p| p.into_inner());
    let mut report = Report::default();
    let mut tried: BTreeSet<String> = BTreeSet::new();
    let mut seen: BTreeSet<String> = BTreeSet::new();
    std::thread::scope(|scope| {
        for _ in 0..loaders() {
            scope.spawn(|| loader(index, mod_dir, &queue, &cv));
        }
        let mut first = true;
        let mut done_seen = 0;
        loop {
            let now = match devices {
                Some(d) => {
                    let began = Instant::now();
                    let drained = match d.events {
                        Some(events) if report.scans > 0 => {
                            report.event_checks += 1;
                            Some(events.drain()).filter(|e| !e.lost)
                        }
                        _ => None,
                    };
                    let now = match drained {
                        Some(e) => e.aliases.into_iter().collect(),
                        None => {
                            report.scans += 1;
                            collect_modaliases(d.sys)
                        }
                    };
                    report.scanning += began.elapsed();
                    now
                }
                None => BTreeSet::new(),
            };
            let new: Vec<String> = now.difference(&seen).cloned().collect();
            let mut plan = Vec::new();
            if !new.is_empty() {
                report.rounds += 1;
                seen.extend(new.iter().cloned());
                plan = plan_round(index, &new, &tried);
            }
            if first {
                first = false;
                plan.extend(index.load_order(names));
            }
            let plan: Vec<String> = plan
                .into_iter()
                .filter(|m| tried.insert(m.clone()))
                .collect();
            let mut q = lock();
            if !plan.is_empty() {
                q.plan(index, &plan, report.rounds);
            }
            q.scanned = done_seen;
            cv.notify_all();
            if !q.busy() {
                if plan.is_empty() {
                    break;
                }
                continue;
            }
            if Instant::now() >= deadline {
                report.timed_out = true;
                break;
            }
            // Until a module is in (then its devices may have appeared).
            while q.outcomes.len() == done_seen && q.busy() {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                q = cv
                    .wait_timeout(q, left.min(Duration::from_millis(200)))
                    .map(|(g, _)| g)
                    .unwrap_or_else(|p| p.into_inner().0);
            }
            done_seen = q.outcomes.len();
        }
        let mut q = lock();
        q.closing = true;
        // Past the deadline nothing more starts.
        for s in q.started.iter_mut() {
            *s = true;
        }
        cv.notify_all();
    });
    let q = queue.into_inner().unwrap_or_else(|p| p.into_inner());
    report.tried = q.outcomes;
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn fake_sys(name: &str) -> PathBuf {
        let root =
            std::env::temp_dir().join(format!("understudy-init-sys-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        root
    }

    fn put(root: &Path, rel: &str, text: &str) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    #[test]
    fn the_loaders_have_moved_on_once_every_module_loading_then_has_returned() {
        // Modules 4 and 5 were loading when a disk appeared.
        let then = Progress {
            started: 5,
            oldest_loading: Some(4),
        };
        // Module 5 returned and 6 started on the other loader; 4 is still probing.
        let four_still_in = Progress {
            started: 6,
            oldest_loading: Some(4),
        };
        assert!(!four_still_in.all_returned_since(&then));
        // 4 and 5 are back; 6, started after, does not count.
        let six_loading = Progress {
            started: 6,
            oldest_loading: Some(6),
        };
        assert!(six_loading.all_returned_since(&then));
        let idle = Progress {
            started: 6,
            oldest_loading: None,
        };
        assert!(idle.all_returned_since(&then));
        assert!(then.all_returned_since(&Progress {
            started: 3,
            oldest_loading: None
        }));
        assert!(!then.all_returned_since(&then));
    }

    #[test]
    fn modaliases_are_read_through_the_buses_the_classes_and_the_cpu() {
        let root = fake_sys("collect");
        let link = |target: &str, at: &str| {
            let at = root.join(at);
            std::fs::create_dir_all(at.parent().unwrap()).unwrap();
            std::os::unix::fs::symlink(root.join(target), at).unwrap();
        };
        let pci = "devices/pci0000:00/0000:00:04.0";
        put(
            &root,
            &format!("{pci}/modalias"),
            "pci:v00001AF4d00001001sv00001AF4sd00000002bc01sc00i00\n",
        );
        link(pci, "bus/pci/devices/0000:00:04.0");
        put(
            &root,
            &format!("{pci}/virtio1/modalias"),
            "virtio:d00000002v00001AF4\n",
        );
        link(&format!("{pci}/virtio1"), "bus/virtio/devices/virtio1");
        // The same alias twice (two identical disks) counts once.
        put(
            &root,
            "devices/pci0000:00/0000:00:05.0/virtio2/modalias",
            "virtio:d00000002v00001AF4\n",
        );
        link(
            "devices/pci0000:00/0000:00:05.0/virtio2",
            "bus/virtio/devices/virtio2",
        );
        // An input device is in a class, not on a bus.
        let input = "devices/platform/i8042/serio0/input/input0";
        put(
            &root,
            &format!("{input}/modalias"),
            "input:b0011v0001p0001eAB41-e0,1\n",
        );
        link(input, "class/input/input0");
        put(
            &root,
            "devices/system/cpu/modalias",
            "cpu:type:x86,ven0000fam0006mod003F:feature:,0094\n",
        );
        // A bus device without an alias, and one whose alias is empty.
        put(
            &root,
            "devices/platform/serial8250/uevent",
            "DRIVER=serial8250\n",
        );
        link(
            "devices/platform/serial8250",
            "bus/platform/devices/serial8250",
        );
        put(&root, "devices/platform/empty/modalias", "\n");
        link("devices/platform/empty", "bus/platform/devices/empty");
        let got: Vec<String> = collect_modaliases(&root).into_iter().collect();
        assert_eq!(
            got,
            [
                "cpu:type:x86,ven0000fam0006mod003F:feature:,0094",
                "input:b0011v0001p0001eAB41-e0,1",
                "pci:v00001AF4d00001001sv00001AF4sd00000002bc01sc00i00",
                "virtio:d00000002v00001AF4",
            ]
        );
        assert!(collect_modaliases(&root.join("missing")).is_empty());
        std::fs::remove_dir_all(&root).unwrap();
    }

    fn index() -> Index {
        Index::load(
            &Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures/initramfs/depmod-6.1.0-56-amd64"),
        )
        .unwrap()
    }

    #[test]
    fn a_round_plans_only_modules_not_tried_before() {
        let index = index();
        let first = plan_round(
            &index,
            &["pci:v00001AF4d00001001sv00001AF4sd00000002bc01sc00i00".to_string()],
            &BTreeSet::new(),
        );
        assert_eq!(
            first,
            [
                "virtio_ring",
                "virtio",
                "virtio_pci_modern_dev",
                "virtio_pci_legacy_dev",
                "virtio_pci"
            ]
        );
        // The next round sees the virtio device virtio_pci exposed.
        let tried: BTreeSet<String> = first.into_iter().collect();
        assert_eq!(
            plan_round(&index, &["virtio:d00000002v00001AF4".to_string()], &tried),
            ["virtio_blk"]
        );
    }

    #[test]
    fn the_always_list_resolves_to_crc32c_before_ext4() {
        let order = index().load_order(ALWAYS);
        let pos = |m: &str| order.iter().position(|x| x == m).unwrap();
        assert!(pos("crc32c_generic") < pos("ext4"), "{order:?}");
        for m in ["vfat", "dm_snapshot", "dm_mod", "jbd2"] {
            assert!(order.iter().any(|x| x == m), "{m} missing from {order:?}");
        }
    }

    #[test]
    fn a_later_rounds_module_goes_first_and_none_starts_before_a_rescan() {
        let index = index();
        let mut q = Queue {
            rescans: true,
            ..Queue::default()
        };
        // Round 1: the virtio PCI chain and, independent of it, crc16.
        let first = plan_round(
            &index,
            &["pci:v00001AF4d00001001sv00001AF4sd00000002bc01sc00i00".to_string()],
            &BTreeSet::new(),
        );
        let mut round1 = first.clone();
        round1.push("crc16".to_string());
        q.plan(&index, &round1, 1);
        let crc16 = round1.len() - 1;
        for (i, name) in first.iter().enumerate() {
            // In load order; virtio_pci only once what it needs is in.
            let next = q.next_ready().unwrap();
            assert_eq!(q.planned[next], *name);
            q.started[next] = true;
            q.finished[next] = true;
            q.outcomes.push((name.clone(), Loaded::Loaded));
            assert!(q.rescan_pending(), "after {name}");
            q.scanned = i + 1;
        }
        // virtio_pci found the disks: virtio_blk (round 2) before crc16 (round 1).
        q.plan(&index, &["virtio_blk".to_string()], 2);
        assert_eq!(q.planned[q.next_ready().unwrap()], "virtio_blk");
        let blk = q.next_ready().unwrap();
        q.started[blk] = true;
        assert_eq!(q.next_ready(), Some(crc16));
        // Loading by name never waits for a rescan; nor does a closing queue.
        q.outcomes.push(("virtio_blk".into(), Loaded::Loaded));
        assert!(q.rescan_pending());
        q.closing = true;
        assert!(!q.rescan_pending());
        q.closing = false;
        q.rescans = false;
        assert!(!q.rescan_pending());
    }

    #[test]
    fn a_filesystem_brings_what_mounting_it_needs() {
        let index = index();
        let ext = index.load_order(&for_filesystem("ext3"));
        let pos = |m: &str| ext.iter().position(|x| x == m).unwrap();
        assert!(pos("crc32c_generic") < pos("ext4"), "{ext:?}");
        // (The fixture index has no code pages; the list names them.)
        assert_eq!(index.load_order(&for_filesystem("vfat")), ["fat", "vfat"]);
        assert_eq!(
            for_filesystem("vfat"),
            ["vfat", "nls_cp437", "nls_iso8859_1"]
        );
        assert_eq!(
            index.load_order(&for_filesystem("xfs")).last().unwrap(),
            "xfs"
        );
        // Each is in the list loaded after the first screen anyway.
        for kind in ["ext4", "vfat"] {
            assert!(for_filesystem(kind).iter().all(|m| ALWAYS.contains(m)));
        }
    }

    #[test]
    fn prerequisites_are_earlier_dependencies_in_the_batch() {
        let index = index();
        let batch = index.load_order(ALWAYS);
        let pre = prerequisites(&index, &batch);
        let pos = |m: &str| batch.iter().position(|x| x == m).unwrap();
        for (i, p) in pre.iter().enumerate() {
            assert!(
                p.iter().all(|&j| j < i),
                "{} waits for a later module",
                batch[i]
            );
        }
        let ext4 = &pre[pos("ext4")];
        for m in ["jbd2", "mbcache", "crc32c_generic"] {
            assert!(
                ext4.contains(&pos(m)),
                "ext4 does not wait for {m}: {ext4:?}"
            );
        }
        // vfat and dm_snapshot have nothing to do with ext4: they can go at once.
        assert!(!pre[pos("dm_snapshot")].contains(&pos("ext4")));
        assert!(pre[pos("dm_snapshot")].contains(&pos("dm_mod")));
        // A batch after the first: what came before is not waited for.
        let later = vec!["ext4".to_string()];
        assert_eq!(prerequisites(&index, &later), vec![Vec::<usize>::new()]);
    }

    #[test]
    fn loading_a_file_that_is_not_a_module_is_a_failure_not_a_panic() {
        // As non-root this is EPERM; as root, ENOEXEC or EINVAL: never Loaded.
        let root = fake_sys("notmodule");
        put(&root, "x.ko", "not an ELF file");
        assert!(matches!(load_file(&root.join("x.ko")), Loaded::Failed(_)));
        assert!(
            matches!(load_file(&root.join("missing.ko")), Loaded::Failed(e) if e.contains("opening"))
        );
        std::fs::remove_dir_all(&root).unwrap();
    }
}
