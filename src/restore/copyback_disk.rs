//! Copy-back onto a primary disk that came back healthy after the appliance ran from the
//! emergency copy (`understudy copy-back --disk DISK --image IMAGE`, and the recovery
//! console through its JSON progress stream; `docs/copy-back.md`): a pure
//! [`plan`] of the disk (refusals, which of the image's layout filesystems to mount,
//! which logical volumes to activate) and [`mounts`] (the layout's filesystems found on
//! the disk by UUID, parents first), then a thin executor ([`run`]). Also the part of
//! copy-back the restore's `copy-back` step shares: finding the emergency filesystem
//! ([`find_emergency`]), reading its index and applying it with progress.
//!
//! Does not own: the index, the comparison or the writing (`copyback`), the events
//! (`events`), mounts (`mount`), the layout format (`layout`).

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use super::copyback::{self, INDEX_PATH, Index, IndexError};
use super::events::{Format, Operation, Reporter, Step};
use super::execute::{
    Cancel, EMERGENCY_LABEL, Stopped, ask_serial, described, lvm, private_dir, recorded_identities,
    sync_device, wait_for, wait_for_kernel, whole_disk,
};
use super::mount::MountGuard;
use super::plan::{self, KernelNeed, MountStep, Target, carries_label, depth, lv_device};
use crate::disk::{self, Holder, Inventory, LvmStatus, Recorded, Sources};
use crate::image::manifest::Manifest;
use crate::layout::{Layout, SectorSize, Source};

/// Why a copy-back onto a disk will not start. Each says what is wrong and where.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// What a restore refuses too: no such disk, the secondary, ambiguous, read-only,
    /// in use.
    #[error(transparent)]
    Disk(#[from] plan::Refusal),
    #[error(
        "{0} carries the emergency filesystem ({EMERGENCY_LABEL}): it is the secondary disk; \
         copy-back writes to the primary"
    )]
    CarriesEmergency(String),
    #[error(
        "no emergency filesystem ({EMERGENCY_LABEL}) on a disk other than {0}: nothing to copy back from"
    )]
    NoEmergency(String),
    #[error(
        "the emergency filesystem {device} is mounted at {at}: it must not change while it is \
         copied back (run copy-back from the recovery console)"
    )]
    EmergencyMounted { device: String, at: String },
    #[error(
        "the emergency copy on {0} has no copy-back index ({INDEX_PATH}): nothing to copy back"
    )]
    NoIndex(String),
    #[error("the image's layout has no filesystem mounted at /")]
    NoRoot,
    #[error(
        "the image's layout records no UUID for its {fstype} filesystem at {mountpoint}: it \
         cannot be found on {disk}"
    )]
    NoUuid {
        fstype: String,
        mountpoint: String,
        disk: String,
    },
    #[error("LVM cannot be read ({0}): the image's layout has filesystems on logical volumes")]
    NoLvm(String),
    #[error("volume group {vg} of the image's layout has no physical volume on {disk}")]
    VgNotOnDisk { vg: String, disk: String },
    #[error(
        "no filesystem with UUID {uuid} (the layout's {mountpoint}) on {disk}: it is not the \
         disk this image was taken from, or it was remade (restore it instead)"
    )]
    NotFound {
        uuid: String,
        mountpoint: String,
        disk: String,
    },
    #[error("UUID {uuid} (the layout's {mountpoint}) is on several devices of {disk}: {devices}")]
    SeveralWithUuid {
        uuid: String,
        mountpoint: String,
        disk: String,
        devices: String,
    },
}

/// The emergency filesystem, as the inventory shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Emergency {
    pub device: PathBuf,
    pub fstype: String,
    /// Where it is mounted now (empty in the recovery console).
    pub mounts: Vec<PathBuf>,
}

/// The first partition labelled [`EMERGENCY_LABEL`] on a disk other than `not_on`
/// (kernel name): the emergency copy a copy-back reads.
pub fn find_emergency(inv: &Inventory, not_on: &str) -> Option<Emergency> {
    inv.disks
        .iter()
        .filter(|d| d.name != not_on)
        .flat_map(|d| d.partitions.iter())
        .find_map(|p| {
            let sig = p.signature.as_ref()?;
            (sig.label.as_deref() == Some(EMERGENCY_LABEL)).then(|| {
                Some(Emergency {
                    device: p.path.clone()?,
                    fstype: sig.kind.clone(),
                    mounts: p.usage.mounts.clone(),
                })
            })?
        })
}

/// A filesystem of the layout that copy-back mounts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Wanted {
    pub mountpoint: String,
    pub uuid: String,
    pub fstype: String,
    pub source: Source,
}

/// What a copy-back onto one disk will do, before any device is looked at again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskPlan {
    pub target: Target,
    pub emergency: Emergency,
    /// The layout's filesystems with a mount point, parents first (`/` first).
    pub filesystems: Vec<Wanted>,
    /// The LVs holding those filesystems that are not active, as `VG/LV`: activated
    /// (`lvchange -a y`) and deactivated again at the end, and only those, so LVs
    /// someone else activated stay as they were.
    pub activate: Vec<String>,
    /// Their device nodes, which activation makes.
    pub lv_nodes: Vec<PathBuf>,
}

impl DiskPlan {
    /// What the kernel must offer: device-mapper for LVs, the filesystems' drivers.
    pub fn kernel_needs(&self) -> Vec<KernelNeed> {
        let mut needs = Vec::new();
        if self
            .filesystems
            .iter()
            .any(|f| matches!(f.source, Source::Lv { .. }))
        {
            needs.push(KernelNeed::DeviceMapper);
        }
        let types = self
            .filesystems
            .iter()
            .map(|f| f.fstype.as_str())
            .chain([self.emergency.fstype.as_str()]);
        for need in types.filter_map(KernelNeed::filesystem) {
            if !needs.contains(&need) {
                needs.push(need);
            }
        }
        needs
    }
}

impl fmt::Display for DiskPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "copy back onto {} ({})",
            self.target.path.display(),
            described(&self.target)
        )?;
        for w in &self.filesystems {
            writeln!(
                f,
                "  {} {} UUID={} on {}",
                w.mountpoint, w.fstype, w.uuid, w.source
            )?;
        }
        for lv in &self.activate {
            writeln!(f, "  activate LV {lv} (deactivated again at the end)")?;
        }
        writeln!(
            f,
            "  from the emergency copy {} ({})",
            self.emergency.device.display(),
            self.emergency.fstype
        )
    }
}

/// The volume group of a device-mapper name (`vg--0-root` → `vg-0`): LVM doubles the
/// dashes of VG and LV names and joins them with one.
fn dm_vg(dm_name: &str) -> Option<String> {
    let mut vg = String::new();
    let mut chars = dm_name.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '-' if chars.peek() == Some(&'-') => {
                chars.next();
                vg.push('-');
            }
            '-' => return Some(vg),
            c => vg.push(c),
        }
    }
    None
}

/// The whole disk's node and its partitions' nodes.
fn nodes_of(d: &disk::Disk) -> BTreeSet<&Path> {
    d.partitions
        .iter()
        .filter_map(|p| p.path.as_deref())
        .chain([d.path.as_path()])
        .collect()
}

/// Plan a copy-back of the image's `layout` onto disk `target` (kernel name) of
/// `inv`, or refuse: not a disk a restore could write either (the secondary, by
/// `recorded` when known, ambiguous, read-only), carrying the emergency filesystem,
/// in use (mounted, swap or held, but for the device-mapper volumes of the layout's
/// own volume groups, which must not be in use themselves), no emergency filesystem
/// elsewhere or one that is mounted, a layout without `/` or with a filesystem
/// without UUID, volume groups not on the disk.
pub fn plan(
    layout: &Layout,
    inv: &Inventory,
    recorded: Option<&Recorded>,
    target: &str,
) -> Result<DiskPlan, Refusal> {
    let d = plan::writable_disk(inv, recorded, target)?;
    let name = d.name.clone();
    if carries_label(d, EMERGENCY_LABEL) {
        return Err(Refusal::CarriesEmergency(name));
    }
    let vgs: Vec<&str> = layout.lvm.vgs.iter().map(|v| v.name.as_str()).collect();
    let own = |h: &Holder| {
        h.dm_name
            .as_deref()
            .and_then(dm_vg)
            .is_some_and(|vg| vgs.contains(&vg.as_str()))
    };
    let mut reasons = d.busy_reasons_but(&own);
    if let LvmStatus::Found(l) = &inv.lvm {
        for lv in l.lvs.iter().filter(|lv| vgs.contains(&lv.vg.as_str())) {
            let what = format!("LV {}/{}", lv.vg, lv.name);
            lv.usage.reasons(&what, &|_| true, &mut reasons);
        }
    }
    if !reasons.is_empty() {
        return Err(plan::Refusal::Busy {
            disk: name,
            reasons,
        }
        .into());
    }
    let emergency = find_emergency(inv, &name).ok_or_else(|| Refusal::NoEmergency(name.clone()))?;
    if let Some(at) = emergency.mounts.first() {
        return Err(Refusal::EmergencyMounted {
            device: emergency.device.display().to_string(),
            at: at.display().to_string(),
        });
    }

    let mut filesystems = Vec::new();
    for fs in &layout.filesystems {
        let Some(at) = fs.mountpoint.as_deref().filter(|m| m.starts_with('/')) else {
            continue;
        };
        let Some(uuid) = &fs.uuid else {
            return Err(Refusal::NoUuid {
                fstype: fs.fstype.clone(),
                mountpoint: at.to_string(),
                disk: name,
            });
        };
        filesystems.push(Wanted {
            mountpoint: at.to_string(),
            uuid: uuid.clone(),
            fstype: fs.fstype.clone(),
            source: fs.source.clone(),
        });
    }
    filesystems.sort_by_key(|w| (depth(&w.mountpoint), w.mountpoint.clone()));
    if filesystems.first().map(|w| w.mountpoint.as_str()) != Some("/") {
        return Err(Refusal::NoRoot);
    }

    let on_disk = nodes_of(d);
    let mut activate: Vec<String> = Vec::new();
    let mut lv_nodes = Vec::new();
    for w in &filesystems {
        let Source::Lv { vg, name: lv } = &w.source else {
            continue;
        };
        let l = match &inv.lvm {
            LvmStatus::Found(l) => l,
            LvmStatus::Skipped => return Err(Refusal::NoLvm("not looked at".into())),
            LvmStatus::NotInstalled => return Err(Refusal::NoLvm("lvm is not installed".into())),
            LvmStatus::Failed(e) => return Err(Refusal::NoLvm(e.clone())),
        };
        let on = l
            .pvs
            .iter()
            .any(|p| p.vg.as_deref() == Some(vg.as_str()) && on_disk.contains(p.path.as_path()));
        if !on {
            return Err(Refusal::VgNotOnDisk {
                vg: vg.clone(),
                disk: name,
            });
        }
        let active = l
            .lvs
            .iter()
            .any(|x| &x.vg == vg && &x.name == lv && x.is_active());
        if !active {
            activate.push(format!("{vg}/{lv}"));
            lv_nodes.push(lv_device(vg, lv));
        }
    }
    let sector = SectorSize::try_from(d.logical_sector.0).map_err(|e| {
        plan::Refusal::Unsupported(format!("{name} has {}-byte sectors: {e}", d.logical_sector))
    })?;
    Ok(DiskPlan {
        target: Target::of(d, sector),
        emergency,
        filesystems,
        activate,
        lv_nodes,
    })
}

/// The devices to mount for `p` in `inv` (taken again once its LVs are active):
/// each filesystem of the layout found on the disk by its UUID (on the whole
/// disk, a partition, or an LV with extents on the disk; snapshots left out), with the
/// type found there, parents first.
pub fn mounts(p: &DiskPlan, inv: &Inventory) -> Result<Vec<MountStep>, Refusal> {
    let disk = &p.target.name;
    let d = inv
        .disk(disk)
        .ok_or_else(|| plan::Refusal::NoSuchDisk(disk.clone()))?;
    let on_disk = nodes_of(d);
    let lvs = match &inv.lvm {
        LvmStatus::Found(l) => l.lvs.as_slice(),
        _ => &[],
    };
    let mut out = Vec::new();
    for w in &p.filesystems {
        let same = |u: Option<&str>| u.is_some_and(|u| u.eq_ignore_ascii_case(&w.uuid));
        let whole = d
            .signature
            .iter()
            .filter(|s| same(s.uuid.as_deref()))
            .map(|s| (d.path.clone(), s.kind.clone()));
        let parts = d.partitions.iter().filter_map(|part| {
            let s = part
                .signature
                .as_ref()
                .filter(|s| same(s.uuid.as_deref()))?;
            Some((part.path.clone()?, s.kind.clone()))
        });
        let on_lvs = lvs.iter().filter_map(|lv| {
            let s = lv.signature.as_ref().filter(|s| same(s.uuid.as_deref()))?;
            let here = lv.devices.iter().any(|dev| on_disk.contains(dev.as_path()));
            (lv.origin.is_none() && here).then(|| {
                let node = lv
                    .dm_path
                    .clone()
                    .unwrap_or_else(|| lv_device(&lv.vg, &lv.name));
                (node, s.kind.clone())
            })
        });
        let found: Vec<(PathBuf, String)> = whole.chain(parts).chain(on_lvs).collect();
        match found.as_slice() {
            [(device, fstype)] => out.push(MountStep {
                device: device.clone(),
                fstype: fstype.clone(),
                mountpoint: w.mountpoint.clone(),
            }),
            [] => {
                return Err(Refusal::NotFound {
                    uuid: w.uuid.clone(),
                    mountpoint: w.mountpoint.clone(),
                    disk: disk.clone(),
                });
            }
            several => {
                return Err(Refusal::SeveralWithUuid {
                    uuid: w.uuid.clone(),
                    mountpoint: w.mountpoint.clone(),
                    disk: disk.clone(),
                    devices: several
                        .iter()
                        .map(|(dev, _)| dev.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            }
        }
    }
    Ok(out)
}

/// What the emergency filesystem mounted at a root holds as copy-back index.
pub(super) enum IndexState {
    Missing,
    /// Not an index, of another version, or cut short (an [`IndexError`]).
    Unusable(anyhow::Error),
    Loaded(Index),
}

/// The copy-back index of the emergency tree at `emergency_root` ([`INDEX_PATH`]).
pub(super) fn read_index(emergency_root: &Path) -> Result<IndexState> {
    let path = emergency_root.join(INDEX_PATH);
    if !path.exists() {
        return Ok(IndexState::Missing);
    }
    match Index::load(&path) {
        Ok(i) => Ok(IndexState::Loaded(i)),
        Err(e) if e.downcast_ref::<IndexError>().is_some() => Ok(IndexState::Unusable(e)),
        Err(e) => Err(e),
    }
}

/// Compare the emergency tree at `emergency_root` with `index` and write what changed
/// onto the root mounted at `root`, reporting file bytes as progress, a note per
/// conflict or problem, and the result as a `copied-back` event.
pub(super) fn apply(
    rep: &mut Reporter,
    index: &Index,
    emergency_root: &Path,
    root: &Path,
) -> Result<()> {
    let plan = copyback::plan(index, emergency_root)?;
    rep.total(plan.bytes);
    let report = copyback::apply(&plan, emergency_root, root, &mut |n| rep.add(n))?;
    rep.note(report.to_string());
    for n in &report.notes {
        rep.note(format!("copy-back: {n}"));
    }
    rep.copied_back(plan.copied(&report));
    Ok(())
}

/// What `understudy copy-back --disk` is asked.
#[derive(Clone, Debug)]
pub struct Options {
    /// The primary disk (`/dev/vda`, or a link to it).
    pub disk: PathBuf,
    /// The image whose manifest's layout names the disk's filesystems.
    pub image: PathBuf,
    /// Do not ask for the serial number.
    pub yes: bool,
    pub format: Format,
}

/// Copy back onto a disk, step by step (`refuse lvm mount copy-back sync`). In JSON
/// mode the stream ends with `done` or `failed`. A failure unmounts and deactivates
/// what this run mounted and activated; from the copy-back step on, what was copied
/// stays, and a rerun completes it.
pub fn run(opts: &Options) -> Result<()> {
    if opts.format == Format::Json && !opts.yes {
        bail!("--progress=json needs --yes: the confirmation is the caller's to ask");
    }
    let mut rep = Reporter::of(Operation::CopyBack, opts.format);
    let cancel = Cancel::install();
    let mut run = Run {
        opts,
        rep: &mut rep,
        cancel: &cancel,
        mounts: MountGuard::new(),
        activated: Vec::new(),
    };
    let result = run.all();
    if result.is_err() {
        run.on_failure();
    }
    drop(run);
    match result {
        Ok(()) => {
            rep.done();
            Ok(())
        }
        Err(e) => {
            let e = if rep.past_point_of_no_return() {
                e.context(format!(
                    "copy-back failed at step {}; {} is left as the failure left it (what was \
                     copied stays): run copy-back again to complete it",
                    rep.step().name(),
                    opts.disk.display()
                ))
            } else {
                e
            };
            rep.failed(&e);
            Err(e)
        }
    }
}

struct Run<'a> {
    opts: &'a Options,
    rep: &'a mut Reporter,
    cancel: &'a Cancel,
    mounts: MountGuard,
    /// LVs (`VG/LV`) this run activated, deactivated on every path.
    activated: Vec<String>,
}

impl Run<'_> {
    /// The next step; a cancel asked for before the copy-back step stops here.
    fn step(&mut self, step: Step) -> Result<()> {
        if step <= Step::CopyBack && self.cancel.requested() {
            return Err(Stopped::CancelledBefore.into());
        }
        self.rep.phase(step, None);
        Ok(())
    }

    fn all(&mut self) -> Result<()> {
        let opts = self.opts;
        // 1. Refuse what must not be written to, before anything changes.
        self.step(Step::Refuse)?;
        let (dev, name) = whole_disk(&opts.disk)?;
        let manifest = Manifest::load(&opts.image)
            .with_context(|| format!("loading the image at {}", opts.image.display()))?;
        let inv = disk::inventory(&Sources::system());
        let recorded = recorded_identities(&inv, self.rep);
        let p = plan(&manifest.layout, &inv, recorded.as_ref(), &name)?;
        wait_for_kernel(self.rep, &p.kernel_needs())?;
        let dir = private_dir("copy-back")?;
        let emergency = dir.join("emergency");
        let em = &p.emergency;
        self.mounts
            .mount_read_only(&em.device, &emergency, &em.fstype)?;
        let index = match read_index(&emergency)? {
            IndexState::Loaded(i) => i,
            IndexState::Missing => {
                return Err(Refusal::NoIndex(em.device.display().to_string()).into());
            }
            IndexState::Unusable(e) => {
                return Err(e.context(format!(
                    "the copy-back index on {} is not usable: nothing to copy back",
                    em.device.display()
                )));
            }
        };

        // 2. The LVs of the layout's filesystems, when they are not active.
        self.step(Step::Lvm)?;
        for lv in &p.activate {
            // Listed before it runs: a half-done activation is undone too.
            self.activated.push(lv.clone());
            lvm(&["lvchange", "-a", "y", lv])
                .with_context(|| format!("activating LV {lv} on {}", dev.display()))?;
            self.rep.note(format!("activated LV {lv}"));
        }
        wait_for(&p.lv_nodes)?;

        // 3. The layout's filesystems on the disk, by UUID; the confirmation.
        self.step(Step::Mount)?;
        let inv = if p.activate.is_empty() {
            inv
        } else {
            disk::inventory(&Sources::system())
        };
        let found = mounts(&p, &inv)?;
        for m in &found {
            self.rep.note(format!(
                "{} is {} ({})",
                m.mountpoint,
                m.device.display(),
                m.fstype
            ));
        }
        if !opts.yes {
            confirm(&p, &found, &manifest.id)?;
        }
        let root = dir.join("root");
        for m in &found {
            let at = root.join(m.mountpoint.trim_start_matches('/'));
            self.mounts.mount(&m.device, &at, &m.fstype)?;
        }

        // 4. Copy back: from here on the disk's files change.
        self.step(Step::CopyBack)?;
        apply(self.rep, &index, &emergency, &root)?;

        // 5. Sync, unmount, deactivate what this run activated.
        self.step(Step::Sync)?;
        nix::unistd::sync();
        self.mounts.unmount_all()?;
        self.deactivate()?;
        sync_device(&dev)?;
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    }

    fn deactivate(&mut self) -> Result<()> {
        while let Some(lv) = self.activated.pop() {
            lvm(&["lvchange", "-a", "n", &lv]).with_context(|| format!("deactivating LV {lv}"))?;
        }
        Ok(())
    }

    /// After a failure: unmount and deactivate what this run mounted and activated.
    fn on_failure(&mut self) {
        if let Err(e) = self.mounts.unmount_all() {
            self.rep.note(format!("cleaning up: {e:#}"));
        }
        if let Err(e) = self.deactivate() {
            self.rep.note(format!("cleaning up: {e:#}"));
        }
    }
}

/// Show which disk's filesystems change, and ask for its serial number.
fn confirm(p: &DiskPlan, found: &[MountStep], image: &str) -> Result<()> {
    eprint!("{p}");
    for m in found {
        eprintln!("  {} is {}", m.mountpoint, m.device.display());
    }
    eprintln!(
        "\nFiles on {} ({}) will be CHANGED: what changed on the emergency copy since its \
         expansion is written onto the filesystems of image {image}'s layout (paths \
         remapped at expansion are left alone).",
        p.target.path.display(),
        described(&p.target)
    );
    ask_serial(&p.target)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::lvm::{Lv, Lvm, Pv, Vg};
    use crate::disk::{Bytes, Readability, Signature, Usage};
    use crate::recovery::situation::fixtures;

    const ROOT: &str = "9a1b2c3d-4e5f-4a6b-8c7d-0e1f2a3b4c5d";
    const BOOT: &str = "3f6c9a57-8f0e-4c42-9d2e-6b1c0e7a5d21";
    const ESP: &str = "ABCD-1234";

    /// `/boot` on partition 1, the ESP at `/boot/efi` on partition 3, `/` and swap on
    /// LVs of vg0 on partition 2.
    fn layout() -> Layout {
        Layout::from_json(&format!(
            r#"{{
  "schema": 1,
  "table": {{"type": "gpt", "disk_guid": "5a5a5a5a-0000-4000-8000-000000000001"}},
  "disk": {{"size_bytes": 67108864, "logical_sector": 512, "physical_sector": 512}},
  "partitions": [
    {{"number": 1, "start_lba": 2048, "size_lba": 20480,
     "type_guid": "0fc63daf-8483-4772-8e79-3d69d8477de4", "name": "boot"}},
    {{"number": 2, "start_lba": 22528, "size_lba": 90112,
     "type_guid": "e6d6d379-f507-44c2-a23c-238f2a3df928", "name": "lvm"}},
    {{"number": 3, "start_lba": 112640, "size_lba": 10240,
     "type_guid": "c12a7328-f81f-11d2-ba4b-00a0c93ec93b", "name": "esp"}}
  ],
  "filesystems": [
    {{"source": {{"partition": 3}}, "fstype": "vfat", "uuid": "{ESP}", "used_bytes": 1048576,
     "mountpoint": "/boot/efi", "mount_options": []}},
    {{"source": {{"lv": {{"vg": "vg0", "name": "root"}}}}, "fstype": "ext4", "uuid": "{ROOT}",
     "used_bytes": 1048576, "mountpoint": "/", "mount_options": []}},
    {{"source": {{"partition": 1}}, "fstype": "ext4", "uuid": "{BOOT}", "used_bytes": 1048576,
     "mountpoint": "/boot", "mount_options": []}}
  ],
  "lvm": {{
    "vgs": [{{"name": "vg0", "uuid": "Xq3kzN", "extent_size": 4194304,
             "pvs": [{{"partition": 2, "uuid": "c7RdPq", "pe_start": 1048576}}]}}],
    "lvs": [{{"vg": "vg0", "name": "root", "uuid": "b3Kx9e", "size_bytes": 33554432}},
            {{"vg": "vg0", "name": "swap", "uuid": "m5Gt2w", "size_bytes": 8388608}}]
  }},
  "swap": [{{"source": {{"lv": {{"vg": "vg0", "name": "swap"}}}}, "size_bytes": 8388608}}]
}}"#
        ))
        .unwrap()
    }

    fn sig(kind: &str, uuid: &str) -> Signature {
        Signature {
            kind: kind.into(),
            uuid: Some(uuid.into()),
            label: None,
            usage: None,
            version: None,
            bad_checksum: false,
        }
    }

    /// The primary as the recovery console finds it: `/boot`, the PV, the ESP.
    fn primary() -> disk::Disk {
        let mut d = fixtures::disk("vda", "US-PRIMARY-0001", 64, Readability::Readable);
        let mut boot = fixtures::partition("vda", 1, 10, "ext4", "boot");
        boot.signature = Some(sig("ext4", BOOT));
        let mut pv = fixtures::partition("vda", 2, 44, "LVM2_member", "");
        pv.signature = Some(sig("LVM2_member", "c7RdPq"));
        let mut esp = fixtures::partition("vda", 3, 5, "vfat", "");
        esp.signature = Some(sig("vfat", "abcd-1234"));
        d.partitions = vec![boot, pv, esp];
        d
    }

    fn lv(name: &str, active: bool, fs: Option<&str>, devices: &[&str]) -> Lv {
        Lv {
            name: name.into(),
            vg: "vg0".into(),
            uuid: format!("uuid-{name}"),
            size: Bytes(8 << 20),
            path: Some(format!("/dev/vg0/{name}").into()),
            dm_path: Some(format!("/dev/mapper/vg0-{name}").into()),
            attr: if active { "-wi-a-----" } else { "-wi-------" }.into(),
            origin: None,
            segtypes: vec!["linear".into()],
            devices: devices.iter().map(PathBuf::from).collect(),
            device: active.then(|| "dm-0".into()),
            signature: fs.map(|u| sig("ext4", u)),
            error: None,
            usage: Usage::default(),
        }
    }

    fn lvm(lvs: Vec<Lv>, pv_at: &str) -> LvmStatus {
        LvmStatus::Found(Lvm {
            pvs: vec![Pv {
                path: pv_at.into(),
                uuid: "c7RdPq".into(),
                vg: Some("vg0".into()),
                size: Bytes(44 << 20),
                free: Bytes(0),
                dev_size: Bytes(44 << 20),
                attr: "a--".into(),
            }],
            vgs: vec![Vg {
                name: "vg0".into(),
                uuid: "Xq3kzN".into(),
                size: Bytes(44 << 20),
                free: Bytes(0),
                extent_size: Bytes(4 << 20),
                pv_count: 1,
                lv_count: 2,
                attr: "wz--n-".into(),
            }],
            lvs,
        })
    }

    /// Both disks, vg0 inactive (as the recovery system leaves it).
    fn inventory() -> Inventory {
        let mut inv = fixtures::inventory(vec![primary(), fixtures::secondary()]);
        inv.lvm = lvm(
            vec![
                lv("root", false, None, &["/dev/vda2"]),
                lv("swap", false, None, &["/dev/vda2"]),
            ],
            "/dev/vda2",
        );
        inv
    }

    fn recorded() -> Recorded {
        match fixtures::recorded() {
            crate::init::recorded::RecordedState::Found { recorded, .. } => recorded,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_healthy_primary_mounts_root_first_and_activates_the_root_lv() {
        let p = plan(&layout(), &inventory(), Some(&recorded()), "vda").unwrap();
        let order: Vec<&str> = p
            .filesystems
            .iter()
            .map(|w| w.mountpoint.as_str())
            .collect();
        assert_eq!(order, ["/", "/boot", "/boot/efi"]);
        assert_eq!(p.activate, ["vg0/root"]);
        assert_eq!(p.lv_nodes, [PathBuf::from("/dev/mapper/vg0-root")]);
        assert_eq!(p.target.path, PathBuf::from("/dev/vda"));
        assert_eq!(p.target.confirmation(), "US-PRIMARY-0001");
        assert_eq!(p.emergency.device, PathBuf::from("/dev/vdb4"));
        assert!(p.kernel_needs().contains(&KernelNeed::DeviceMapper));
        assert!(
            p.kernel_needs()
                .contains(&KernelNeed::filesystem("vfat").unwrap())
        );
        let text = p.to_string();
        assert!(text.contains("copy back onto /dev/vda (QEMU HARDDISK, serial US-PRIMARY-0001"));
        assert!(text.contains("activate LV vg0/root"), "{text}");

        // Already active: nothing to activate (and nothing to deactivate after).
        let mut inv = inventory();
        inv.lvm = lvm(
            vec![lv("root", true, Some(ROOT), &["/dev/vda2"])],
            "/dev/vda2",
        );
        let p = plan(&layout(), &inv, Some(&recorded()), "vda").unwrap();
        assert!(p.activate.is_empty() && p.lv_nodes.is_empty());
    }

    #[test]
    fn refusals_come_before_anything_and_say_why() {
        let rec = recorded();
        let go = |inv: &Inventory, lay: &Layout, rec: Option<&Recorded>, disk: &str| {
            plan(lay, inv, rec, disk).unwrap_err()
        };
        let lay = layout();

        // The secondary, by its recorded identity, or by its recovery filesystem.
        assert_eq!(
            go(&inventory(), &lay, Some(&rec), "vdb"),
            Refusal::Disk(plan::Refusal::Secondary("vdb".into()))
        );
        assert_eq!(
            go(&inventory(), &lay, None, "vdb"),
            Refusal::Disk(plan::Refusal::CarriesRecovery("vdb".into()))
        );
        // A disk carrying only an emergency filesystem.
        let mut other = fixtures::disk("vdc", "OTHER-3", 64, Readability::Readable);
        other.partitions = vec![fixtures::partition("vdc", 1, 32, "ext4", EMERGENCY_LABEL)];
        let mut inv = inventory();
        inv.disks.push(other);
        assert_eq!(
            go(&inv, &lay, None, "vdc"),
            Refusal::CarriesEmergency("vdc".into())
        );
        assert!(matches!(
            go(&inventory(), &lay, None, "vdz"),
            Refusal::Disk(plan::Refusal::NoSuchDisk(_))
        ));

        // In use: a partition mounted; held by something else than vg0's volumes; an
        // LV of vg0 mounted. Held by vg0's own volumes is expected.
        let mut inv = inventory();
        inv.disks[0].partitions[0].usage.mounts = vec!["/mnt".into()];
        let Refusal::Disk(plan::Refusal::Busy { reasons, .. }) = go(&inv, &lay, Some(&rec), "vda")
        else {
            panic!()
        };
        assert_eq!(reasons, ["vda1 is mounted at /mnt"]);
        let mut inv = inventory();
        inv.disks[0].partitions[1].usage.holders = vec![
            Holder {
                device: "dm-0".into(),
                dm_name: Some("vg0-root".into()),
            },
            Holder {
                device: "dm-1".into(),
                dm_name: Some("vg0-root-real".into()),
            },
        ];
        assert!(plan(&lay, &inv, Some(&rec), "vda").is_ok());
        inv.disks[0].partitions[1].usage.holders.push(Holder {
            device: "dm-2".into(),
            dm_name: Some("crypt-data".into()),
        });
        let Refusal::Disk(plan::Refusal::Busy { reasons, .. }) = go(&inv, &lay, Some(&rec), "vda")
        else {
            panic!()
        };
        assert_eq!(reasons, ["vda2 is held by dm-2 (crypt-data)"]);
        let mut inv = inventory();
        if let LvmStatus::Found(l) = &mut inv.lvm {
            l.lvs[0].usage.mounts = vec!["/srv/old".into()];
        }
        let Refusal::Disk(plan::Refusal::Busy { reasons, .. }) = go(&inv, &lay, Some(&rec), "vda")
        else {
            panic!()
        };
        assert_eq!(reasons, ["LV vg0/root is mounted at /srv/old"]);

        // No emergency filesystem, or one in use.
        let mut inv = inventory();
        inv.disks.truncate(1);
        assert_eq!(
            go(&inv, &lay, None, "vda"),
            Refusal::NoEmergency("vda".into())
        );
        let mut inv = inventory();
        inv.disks[1].partitions[1].usage.mounts = vec!["/".into()];
        let e = go(&inv, &lay, Some(&rec), "vda");
        assert!(matches!(e, Refusal::EmergencyMounted { .. }), "{e}");
        assert!(e.to_string().contains("/dev/vdb4 is mounted at /"), "{e}");

        // Layouts that name no root, or a filesystem without UUID.
        let mut no_root = layout();
        no_root
            .filesystems
            .retain(|f| f.mountpoint.as_deref() != Some("/"));
        assert_eq!(
            go(&inventory(), &no_root, Some(&rec), "vda"),
            Refusal::NoRoot
        );
        let mut no_uuid = layout();
        no_uuid.filesystems[2].uuid = None;
        let e = go(&inventory(), &no_uuid, Some(&rec), "vda");
        assert!(
            e.to_string()
                .contains("no UUID for its ext4 filesystem at /boot"),
            "{e}"
        );

        // vg0 elsewhere, or LVM not readable.
        let mut inv = inventory();
        inv.lvm = lvm(vec![lv("root", false, None, &["/dev/vdc2"])], "/dev/vdc2");
        assert_eq!(
            go(&inv, &lay, Some(&rec), "vda"),
            Refusal::VgNotOnDisk {
                vg: "vg0".into(),
                disk: "vda".into()
            }
        );
        let mut inv = inventory();
        inv.lvm = LvmStatus::NotInstalled;
        assert!(matches!(
            go(&inv, &lay, Some(&rec), "vda"),
            Refusal::NoLvm(_)
        ));
    }

    /// The inventory taken again after vg0/root was activated.
    fn activated() -> Inventory {
        let mut inv = inventory();
        let mut snap = lv("root-snap", true, Some(ROOT), &["/dev/vdb6"]);
        snap.origin = Some("root".into());
        inv.lvm = lvm(
            vec![
                lv("root", true, Some(ROOT), &["/dev/vda2"]),
                lv("swap", true, None, &["/dev/vda2"]),
                snap,
            ],
            "/dev/vda2",
        );
        inv
    }

    #[test]
    fn the_layouts_filesystems_are_found_on_the_disk_by_uuid() {
        let p = plan(&layout(), &inventory(), Some(&recorded()), "vda").unwrap();
        // The same UUID on another disk is not this disk's.
        let mut inv = activated();
        let mut stray = fixtures::partition("vdb", 7, 10, "ext4", "");
        stray.signature = Some(sig("ext4", BOOT));
        inv.disks[1].partitions.push(stray);
        let got: Vec<(String, String, String)> = mounts(&p, &inv)
            .unwrap()
            .into_iter()
            .map(|m| (m.mountpoint, m.device.display().to_string(), m.fstype))
            .collect();
        assert_eq!(
            got,
            [
                ("/".into(), "/dev/mapper/vg0-root".into(), "ext4".into()),
                ("/boot".into(), "/dev/vda1".into(), "ext4".into()),
                ("/boot/efi".into(), "/dev/vda3".into(), "vfat".into()),
            ]
        );

        // Missing: the refusal names the UUID and the mount point.
        let mut inv = activated();
        inv.disks[0].partitions[0].signature =
            Some(sig("ext4", "00000000-0000-4000-8000-0000000000ff"));
        let e = mounts(&p, &inv).unwrap_err();
        assert_eq!(
            e,
            Refusal::NotFound {
                uuid: BOOT.into(),
                mountpoint: "/boot".into(),
                disk: "vda".into()
            }
        );
        assert!(e.to_string().contains(&format!(
            "no filesystem with UUID {BOOT} (the layout's /boot) on vda"
        )));
        // An LV that did not come up is not found either.
        let mut inv = activated();
        inv.lvm = lvm(vec![lv("root", false, None, &["/dev/vda2"])], "/dev/vda2");
        assert!(
            matches!(mounts(&p, &inv), Err(Refusal::NotFound { mountpoint, .. }) if mountpoint == "/")
        );
        // Twice on the disk: which one cannot be told.
        let mut inv = activated();
        inv.disks[0].partitions[2].signature = Some(sig("ext4", BOOT));
        assert!(matches!(
            mounts(&p, &inv),
            Err(Refusal::SeveralWithUuid { devices, .. }) if devices == "/dev/vda1, /dev/vda3"
        ));
    }

    #[test]
    fn device_mapper_names_give_their_volume_group() {
        assert_eq!(dm_vg("vg0-root").as_deref(), Some("vg0"));
        assert_eq!(dm_vg("vg0-root-real").as_deref(), Some("vg0"));
        assert_eq!(dm_vg("vg--0-my--lv").as_deref(), Some("vg-0"));
        assert_eq!(dm_vg("crypt"), None);
    }

    #[test]
    fn the_emergency_filesystem_is_looked_for_on_the_other_disks_only() {
        let inv = inventory();
        assert_eq!(
            find_emergency(&inv, "vda").map(|e| e.device),
            Some(PathBuf::from("/dev/vdb4"))
        );
        assert_eq!(find_emergency(&inv, "vdb"), None);
    }
}
