//! Making an image from directory trees and a layout description: what a vendor's
//! build pipeline and our tests do to get a golden image.
//!
//! Owns: the layout description (a short JSON a person writes: partitions with sizes
//! and which grows, LVM VGs and LVs, filesystems with mount points, swap; see
//! `docs/image-format.md`), turning it into the layout document ([`describe`], pure),
//! estimating the bytes a tree uses on disk, and writing the image directory
//! atomically ([`create`]).
//! Does not own: the layout schema and planner (`layout`), the archive format
//! (`archive`), the manifest schema (`manifest`).

use std::collections::{BTreeMap, HashSet};
use std::fs::{self, File};
use std::io::BufWriter;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Deserializer};
use uuid::Uuid;

use super::PARTIAL_SUFFIX;
use super::manifest::{self, ArchiveEntry, Manifest};
use crate::archive::{self, CaptureOptions, Excludes};
use crate::layout::{
    self, Bytes, Disk, Filesystem, Layout, Lba, Lv, Lvm, MIB, Partition, Pv, SectorSize, Sectors,
    Source, Swap, Table, Vg,
};

/// GPT partition types by the names a description may use.
const PART_TYPES: [(&str, &str); 6] = [
    ("bios-boot", "21686148-6449-6e6f-744e-656564454649"),
    ("efi", "c12a7328-f81f-11d2-ba4b-00a0c93ec93b"),
    ("linux", "0fc63daf-8483-4772-8e79-3d69d8477de4"),
    ("lvm", "e6d6d379-f507-44c2-a23c-238f2a3df928"),
    ("swap", "0657fd6d-a4ab-43c4-84e5-0933c84b4f4f"),
    ("root-x86-64", "4f68bce3-e8cd-4db1-96e7-fbcaf984b709"),
];

/// LVM's default extent size.
const DEFAULT_EXTENT: u64 = 4 * MIB;

/// A size in a description: bytes as a number, or a string with a binary suffix
/// (`512MiB`, `4G`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Size(pub Bytes);

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Size, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(Size(Bytes(n))),
            Raw::S(s) => layout::parse_size(&s)
                .map(Size)
                .map_err(serde::de::Error::custom),
        }
    }
}

/// The layout description a vendor writes (`docs/image-format.md`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Description {
    /// The manifest's `host` [default: `appliance`].
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default)]
    pub disk: DiskDescription,
    pub partitions: Vec<PartitionDescription>,
    #[serde(default)]
    pub vgs: Vec<VgDescription>,
    /// Exclude patterns applied to every tree (as `archive create --exclude`).
    #[serde(default)]
    pub excludes: Vec<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskDescription {
    /// The disk the image is made for. Without it, the disk is just large enough.
    #[serde(default)]
    pub size: Option<Size>,
    /// Logical sector size [default: 512].
    #[serde(default)]
    pub sector: Option<u32>,
    #[serde(default)]
    pub guid: Option<Uuid>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartitionDescription {
    /// The GPT partition name (PARTLABEL).
    pub name: String,
    /// Rounded up to a MiB. Without it (only with `grow` and a disk size), the rest of
    /// the disk.
    #[serde(default)]
    pub size: Option<Size>,
    /// Grow this partition on a larger disk (and take the rest of the disk here).
    #[serde(default)]
    pub grow: bool,
    /// `bios-boot`, `efi`, `linux`, `lvm`, `swap`, `root-x86-64` or a GPT type GUID
    /// [default: from the content].
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    #[serde(default)]
    pub uuid: Option<Uuid>,
    #[serde(default)]
    pub filesystem: Option<FilesystemDescription>,
    #[serde(default)]
    pub swap: Option<SwapDescription>,
    /// This partition is the LVM PV of the VG of this name.
    #[serde(default)]
    pub pv: Option<String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilesystemDescription {
    /// `ext4`, `xfs`, `vfat`… as blkid names it.
    #[serde(rename = "type")]
    pub fstype: String,
    /// The mount point; a filesystem without one gets no archive.
    #[serde(default)]
    pub mount: Option<String>,
    #[serde(default)]
    pub label: Option<String>,
    /// [default: a new random one]
    #[serde(default)]
    pub uuid: Option<String>,
    #[serde(default)]
    pub options: Vec<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SwapDescription {
    #[serde(default)]
    pub label: Option<String>,
    #[serde(default)]
    pub uuid: Option<String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VgDescription {
    pub name: String,
    #[serde(default)]
    pub uuid: Option<String>,
    /// [default: 4 MiB]
    #[serde(default)]
    pub extent_size: Option<Size>,
    pub lvs: Vec<LvDescription>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LvDescription {
    pub name: String,
    /// Rounded up to whole extents. Without it (only with `grow`), the rest of the VG.
    #[serde(default)]
    pub size: Option<Size>,
    #[serde(default)]
    pub grow: bool,
    #[serde(default)]
    pub uuid: Option<String>,
    #[serde(default)]
    pub filesystem: Option<FilesystemDescription>,
    #[serde(default)]
    pub swap: Option<SwapDescription>,
}

impl Description {
    pub fn load(path: &Path) -> Result<Description> {
        let text =
            fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_str(&text)
            .with_context(|| format!("parsing layout description {}", path.display()))
    }

    /// The mount points of its filesystems, in the order they appear.
    pub fn mountpoints(&self) -> Vec<String> {
        let parts = self.partitions.iter().filter_map(|p| p.filesystem.as_ref());
        let lvs = self
            .vgs
            .iter()
            .flat_map(|v| &v.lvs)
            .filter_map(|l| l.filesystem.as_ref());
        parts.chain(lvs).filter_map(|f| f.mount.clone()).collect()
    }
}

/// Where new identities come from: random in use, fixed in tests.
pub trait Ids {
    fn uuid(&mut self) -> Uuid;
}

/// Random version-4 UUIDs.
#[derive(Debug)]
pub struct RandomIds;

impl Ids for RandomIds {
    fn uuid(&mut self) -> Uuid {
        Uuid::new_v4()
    }
}

/// An LVM-style UUID (`xxxxxx-xxxx-xxxx-xxxx-xxxx-xxxx-xxxxxx`, 32 characters of
/// `[0-9A-Za-z]`) from the bytes of two UUIDs.
fn lvm_uuid(ids: &mut dyn Ids) -> String {
    const CHARS: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut raw = ids.uuid().into_bytes().to_vec();
    raw.extend_from_slice(ids.uuid().as_bytes());
    let mut out = String::new();
    for (i, b) in raw.iter().enumerate() {
        if [6, 10, 14, 18, 22, 26].contains(&i) {
            out.push('-');
        }
        out.push(char::from(CHARS[usize::from(*b) % CHARS.len()]));
    }
    out
}

fn part_type(kind: Option<&str>, p: &PartitionDescription) -> Result<Uuid> {
    let name = match kind {
        Some(k) => k,
        None if p.pv.is_some() => "lvm",
        None if p.swap.is_some() => "swap",
        None => "linux",
    };
    let guid = PART_TYPES
        .iter()
        .find(|(n, _)| *n == name)
        .map_or(name, |(_, g)| g);
    Uuid::parse_str(guid).map_err(|_| {
        anyhow::anyhow!(
            "partition {}: type {name:?} is neither a known name ({}) nor a GUID",
            p.name,
            PART_TYPES.map(|(n, _)| n).join(", ")
        )
    })
}

fn check_mount(m: &str) -> Result<()> {
    let ok = m.starts_with('/')
        && (m == "/" || !m.ends_with('/'))
        && m.split('/').all(|c| c != "." && c != "..")
        && !m.contains("//");
    if ok {
        Ok(())
    } else {
        bail!("mount point {m:?} is not a clean absolute path")
    }
}

fn filesystem(src: Source, d: &FilesystemDescription, ids: &mut dyn Ids) -> Result<Filesystem> {
    if let Some(m) = &d.mount {
        check_mount(m)?;
    }
    Ok(Filesystem {
        source: src,
        fstype: d.fstype.clone(),
        uuid: Some(d.uuid.clone().unwrap_or_else(|| ids.uuid().to_string())),
        label: d.label.clone(),
        used_bytes: Bytes(0),
        mountpoint: d.mount.clone(),
        mount_options: d.options.clone(),
    })
}

/// Turn a description into a layout document (pure but for `ids`). Filesystems'
/// `used_bytes` are 0 here; [`create`] measures them from the trees.
///
/// Partitions are laid out in order from 1 MiB, each a whole number of MiB. A
/// partition without a size takes the rest of the disk, which then needs a size;
/// without a disk size, the disk is the partitions plus the GPT's end, to the MiB.
/// In each VG the LVs take whole extents after the PV's first MiB, and an LV without
/// a size takes the rest of its VG.
pub fn describe(d: &Description, ids: &mut dyn Ids) -> Result<Layout> {
    let sector = SectorSize::try_from(d.disk.sector.unwrap_or(512)).map_err(anyhow::Error::msg)?;
    let ss = sector.bytes();
    let table = Table::Gpt {
        disk_guid: d.disk.guid.unwrap_or_else(|| ids.uuid()),
    };
    let unsized_parts = d.partitions.iter().filter(|p| p.size.is_none()).count();
    if unsized_parts > 1 {
        bail!("only one partition may leave out its size (it takes the rest of the disk)");
    }
    if d.partitions.is_empty() || d.partitions.len() > 128 {
        bail!("a layout needs 1 to 128 partitions");
    }
    // The end of the usable area on a disk of `size` bytes, aligned down to a MiB.
    let usable_end = |size: u64| -> Result<u64> {
        let geo = layout::Geometry::new(&table, Bytes(size), sector)
            .context("the disk is too small for a GPT")?;
        let end = (geo.last_usable.0 + 1) * ss;
        Ok(end - end % MIB)
    };
    let mut starts = Vec::new();
    let mut at = MIB;
    let mut sizes: Vec<Option<u64>> = Vec::new();
    for p in &d.partitions {
        let s = match p.size {
            Some(Size(Bytes(b))) => Some(
                b.checked_next_multiple_of(MIB)
                    .filter(|b| *b > 0)
                    .with_context(|| format!("partition {}: size {b} is not usable", p.name))?,
            ),
            None if !p.grow => bail!("partition {}: give a size, or mark it grow", p.name),
            None => None,
        };
        sizes.push(s);
    }
    let fixed: u64 = sizes
        .iter()
        .flatten()
        .try_fold(0u64, |a, b| a.checked_add(*b))
        .context("partition sizes overflow")?;
    let disk_size = match d.disk.size {
        Some(Size(b)) => b.0,
        None => {
            if unsized_parts > 0 {
                bail!(
                    "a partition without a size takes the rest of the disk: give the disk a size"
                );
            }
            // The partitions, the MiB before them, and the GPT's backup array and
            // header after them, rounded up to a MiB.
            let tail = 1 + (u64::from(layout::GPT_ENTRIES) * 128).div_ceil(ss);
            (MIB + fixed + tail * ss)
                .checked_next_multiple_of(MIB)
                .context("disk size overflows")?
        }
    };
    let end = usable_end(disk_size)?;
    let rest = end
        .checked_sub(MIB + fixed)
        .filter(|r| unsized_parts == 0 || *r >= MIB)
        .with_context(|| {
            format!(
                "the partitions ({} from the first MiB) do not fit on a disk of {}",
                Bytes(fixed),
                Bytes(disk_size)
            )
        })?;
    for s in &mut sizes {
        if s.is_none() {
            *s = Some(rest);
        }
    }

    let mut partitions = Vec::new();
    let mut filesystems = Vec::new();
    let mut swap = Vec::new();
    let mut pv_of: BTreeMap<&str, (u32, u64)> = BTreeMap::new();
    for (i, (p, size)) in d.partitions.iter().zip(&sizes).enumerate() {
        let size = size.unwrap_or(0);
        let number = u32::try_from(i + 1).context("too many partitions")?;
        starts.push(at);
        let contents = [p.filesystem.is_some(), p.swap.is_some(), p.pv.is_some()];
        if contents.iter().filter(|c| **c).count() > 1 {
            bail!(
                "partition {}: give at most one of filesystem, swap, pv",
                p.name
            );
        }
        partitions.push(Partition {
            number,
            start_lba: Lba(at / ss),
            size_lba: Sectors(size / ss),
            type_guid: Some(part_type(p.kind.as_deref(), p)?),
            mbr_type: None,
            part_uuid: Some(p.uuid.unwrap_or_else(|| ids.uuid())),
            name: p.name.clone(),
            attributes: 0,
            growable: p.grow,
        });
        if let Some(f) = &p.filesystem {
            filesystems.push(filesystem(Source::Partition(number), f, ids)?);
        }
        if let Some(s) = &p.swap {
            swap.push(Swap {
                source: Source::Partition(number),
                uuid: Some(s.uuid.clone().unwrap_or_else(|| ids.uuid().to_string())),
                label: s.label.clone(),
                size_bytes: Bytes(size),
            });
        }
        if let Some(vg) = &p.pv {
            if pv_of.insert(vg, (number, size)).is_some() {
                bail!("VG {vg} has two PVs; a description gives one PV per VG");
            }
        }
        at = at.checked_add(size).context("partition offsets overflow")?;
    }
    if at > end {
        bail!(
            "the partitions end at {} but the disk's usable area ends at {}",
            Bytes(at),
            Bytes(end)
        );
    }

    let mut lvm = Lvm::default();
    for vg in &d.vgs {
        let (pv_part, pv_size) = *pv_of.get(vg.name.as_str()).with_context(|| {
            format!("VG {} has no partition with \"pv\": {:?}", vg.name, vg.name)
        })?;
        let extent = vg.extent_size.map_or(DEFAULT_EXTENT, |s| s.0.0);
        if extent == 0 || !extent.is_power_of_two() || extent % ss != 0 {
            bail!(
                "VG {}: extent size {extent} is not a power of two of whole sectors",
                vg.name
            );
        }
        let pe_start = MIB;
        let extents = pv_size.saturating_sub(pe_start) / extent;
        let unsized_lvs = vg.lvs.iter().filter(|l| l.size.is_none()).count();
        if unsized_lvs > 1 {
            bail!("VG {}: only one LV may leave out its size", vg.name);
        }
        let mut used = 0u64;
        let mut lv_sizes = Vec::new();
        for l in &vg.lvs {
            let n = match l.size {
                Some(Size(Bytes(b))) => {
                    let n = b.div_ceil(extent);
                    if n == 0 {
                        bail!("LV {}/{}: size 0", vg.name, l.name);
                    }
                    Some(n)
                }
                None if !l.grow => bail!("LV {}/{}: give a size, or mark it grow", vg.name, l.name),
                None => None,
            };
            used = used.saturating_add(n.unwrap_or(0));
            lv_sizes.push(n);
        }
        let free = extents.checked_sub(used).with_context(|| {
            format!(
                "VG {}: the LVs need {} but its PV holds {}",
                vg.name,
                Bytes(used.saturating_mul(extent)),
                Bytes(extents * extent)
            )
        })?;
        if unsized_lvs == 1 && free == 0 {
            bail!("VG {}: no room left for the LV without a size", vg.name);
        }
        lvm.vgs.push(Vg {
            name: vg.name.clone(),
            uuid: vg.uuid.clone().unwrap_or_else(|| lvm_uuid(ids)),
            pvs: vec![Pv {
                partition: pv_part,
                uuid: lvm_uuid(ids),
                pe_start: Bytes(pe_start),
            }],
            extent_size: Bytes(extent),
        });
        for (l, n) in vg.lvs.iter().zip(lv_sizes) {
            let size = n.unwrap_or(free) * extent;
            let src = Source::Lv {
                vg: vg.name.clone(),
                name: l.name.clone(),
            };
            if l.filesystem.is_some() && l.swap.is_some() {
                bail!(
                    "LV {}/{}: give filesystem or swap, not both",
                    vg.name,
                    l.name
                );
            }
            if let Some(f) = &l.filesystem {
                filesystems.push(filesystem(src.clone(), f, ids)?);
            }
            if let Some(s) = &l.swap {
                swap.push(Swap {
                    source: src,
                    uuid: Some(s.uuid.clone().unwrap_or_else(|| ids.uuid().to_string())),
                    label: s.label.clone(),
                    size_bytes: Bytes(size),
                });
            }
            lvm.lvs.push(Lv {
                vg: vg.name.clone(),
                name: l.name.clone(),
                uuid: l.uuid.clone().unwrap_or_else(|| lvm_uuid(ids)),
                size_bytes: Bytes(size),
                growable: l.grow,
            });
        }
    }
    if let Some(vg) = pv_of.keys().find(|v| !d.vgs.iter().any(|g| g.name == **v)) {
        bail!("a partition is the PV of VG {vg}, which is not described");
    }
    let mut seen = HashSet::new();
    for m in filesystems.iter().filter_map(|f| f.mountpoint.as_deref()) {
        if !seen.insert(m) {
            bail!("two filesystems are mounted at {m}");
        }
    }

    let layout = Layout {
        schema: layout::SCHEMA,
        table,
        disk: Disk {
            size_bytes: Bytes(disk_size),
            logical_sector: sector,
            physical_sector: u32::from(sector),
        },
        partitions,
        filesystems,
        lvm,
        swap,
    };
    // The planner is the restore's judge: the layout must plan onto its own disk.
    layout::plan(&layout, layout.disk.size_bytes, sector)
        .map_err(|e| anyhow::anyhow!("the described layout cannot be planned: {e}"))?;
    Ok(layout)
}

/// The size of the container (partition or LV) of a filesystem.
pub fn container_bytes(l: &Layout, src: &Source) -> Option<Bytes> {
    match src {
        Source::Partition(n) => l
            .partitions
            .iter()
            .find(|p| p.number == *n)
            .and_then(|p| p.size_lba.bytes(l.disk.logical_sector)),
        Source::Lv { vg, name } => l
            .lvm
            .lvs
            .iter()
            .find(|v| &v.vg == vg && &v.name == name)
            .map(|v| v.size_bytes),
        Source::Disk => Some(l.disk.size_bytes),
    }
}

/// For each filesystem with a mount point: the directory its archive is made from,
/// and the paths below it to leave out (the mount points of filesystems nested in
/// it, kept as empty directories). A filesystem without a tree of its own takes the
/// matching subdirectory of the tree of the filesystem it is mounted in, if there
/// is one; otherwise it is empty (`None`).
/// A mount point, the directory its archive is made from (`None`: empty), and the
/// exclude patterns for the filesystems nested in it.
pub type TreeSource = (String, Option<PathBuf>, Vec<String>);

pub fn sources(mountpoints: &[String], trees: &[(String, PathBuf)]) -> Result<Vec<TreeSource>> {
    for (m, _) in trees {
        check_mount(m)?;
        if !mountpoints.contains(m) {
            bail!("--tree {m}: the layout has no filesystem mounted at {m}");
        }
    }
    let below = |inner: &str, outer: &str| -> Option<String> {
        let rest = if outer == "/" {
            inner.strip_prefix('/')
        } else {
            inner.strip_prefix(outer).and_then(|r| r.strip_prefix('/'))
        }?;
        (!rest.is_empty()).then(|| rest.to_string())
    };
    let mut out = Vec::new();
    for m in mountpoints {
        let explicit = trees.iter().find(|(t, _)| t == m).map(|(_, p)| p.clone());
        let dir = explicit.or_else(|| {
            // The innermost enclosing filesystem that has a tree.
            let mut enclosing: Vec<&(String, PathBuf)> = trees
                .iter()
                .filter(|(t, _)| below(m, t).is_some())
                .collect();
            enclosing.sort_by_key(|(t, _)| std::cmp::Reverse(t.len()));
            enclosing
                .first()
                .and_then(|(t, p)| below(m, t).map(|r| p.join(r)))
                .filter(|p| p.is_dir())
        });
        let nested = mountpoints
            .iter()
            .filter_map(|inner| below(inner, m))
            .map(|r| format!("{}/*", globset::escape(&r)))
            .collect();
        out.push((m.clone(), dir, nested));
    }
    Ok(out)
}

/// Bytes a tree takes on a filesystem with 4 KiB blocks: whole blocks of file data
/// and directories, symlinks too long to live in the inode, and one inode (256 bytes)
/// per entry; hardlinked files counted once. Excluded paths are not counted.
pub fn used_bytes(root: &Path, excludes: &Excludes) -> Result<Bytes> {
    const BLOCK: u64 = 4096;
    let mut seen = HashSet::new();
    let mut total = 0u64;
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let dir = root.join(&rel);
        let rd = fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))?;
        total = total.saturating_add(BLOCK + 256);
        for e in rd {
            let e = e.with_context(|| format!("reading {}", dir.display()))?;
            let child = rel.join(e.file_name());
            if excludes.matches(&child, &e.file_name()) {
                continue;
            }
            let meta = fs::symlink_metadata(root.join(&child))
                .with_context(|| format!("reading {}", root.join(&child).display()))?;
            if meta.is_dir() {
                stack.push(child);
                continue;
            }
            if meta.nlink() > 1 && !seen.insert((meta.dev(), meta.ino())) {
                continue;
            }
            let data = if meta.is_file() {
                meta.len().div_ceil(BLOCK) * BLOCK
            } else if meta.file_type().is_symlink() && meta.len() >= 60 {
                BLOCK
            } else {
                0
            };
            total = total.saturating_add(data + 256);
        }
    }
    Ok(Bytes(total))
}

/// What `image create` was asked to do.
#[derive(Clone, Debug)]
pub struct CreateOptions {
    /// The layout description file.
    pub description: PathBuf,
    /// Mount point and directory, per `--tree`.
    pub trees: Vec<(String, PathBuf)>,
    /// The image's id and directory name [default: `YYYYMMDDTHHMMSSZ-HOST`].
    pub id: Option<String>,
    /// The directory the image directory is made in.
    pub out_dir: PathBuf,
    pub threads: usize,
}

/// Parse `MOUNTPOINT=DIR` as `--tree` takes it.
pub fn parse_tree(arg: &str) -> Result<(String, PathBuf), String> {
    let (m, d) = arg
        .split_once('=')
        .ok_or_else(|| format!("`{arg}`: expected MOUNTPOINT=DIR, e.g. /=rootfs"))?;
    if d.is_empty() {
        return Err(format!("`{arg}`: no directory"));
    }
    Ok((m.to_string(), PathBuf::from(d)))
}

/// Make an image: measure the trees, write one archive per filesystem into
/// `OUT/ID.partial/` (each fsynced), then the manifest, rename to `OUT/ID/` and fsync
/// `OUT`. A stale `ID.partial` is removed first; an existing `ID` is refused.
/// Returns the image's directory and manifest.
pub fn create(opts: &CreateOptions, progress: &mut dyn FnMut(u64)) -> Result<(PathBuf, Manifest)> {
    let desc = Description::load(&opts.description)?;
    let mut layout = describe(&desc, &mut RandomIds)
        .with_context(|| format!("in layout description {}", opts.description.display()))?;
    let host = desc.host.clone().unwrap_or_else(|| "appliance".into());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let id = opts
        .id
        .clone()
        .unwrap_or_else(|| format!("{}-{host}", manifest::compact_utc(now)));
    if !manifest::is_plain_name(&id) || id.starts_with('.') || id.ends_with(PARTIAL_SUFFIX) {
        bail!("image id {id:?} is not a usable directory name");
    }
    let mountpoints = desc.mountpoints();
    let sources = sources(&mountpoints, &opts.trees)?;

    let final_dir = opts.out_dir.join(&id);
    let partial = opts.out_dir.join(format!("{id}{PARTIAL_SUFFIX}"));
    if final_dir.exists() {
        bail!("image {} already exists", final_dir.display());
    }
    fs::create_dir_all(&opts.out_dir)
        .with_context(|| format!("creating {}", opts.out_dir.display()))?;
    if partial.exists() {
        fs::remove_dir_all(&partial)
            .with_context(|| format!("removing the unfinished {}", partial.display()))?;
    }
    fs::create_dir(&partial).with_context(|| format!("creating {}", partial.display()))?;

    let empty = partial.join(".empty");
    let mut archives = Vec::new();
    for (mount, dir, nested) in &sources {
        let mut excludes = desc.excludes.clone();
        excludes.extend(nested.iter().cloned());
        let src = match dir {
            Some(d) => d.clone(),
            None => {
                fs::create_dir_all(&empty)
                    .with_context(|| format!("creating {}", empty.display()))?;
                empty.clone()
            }
        };
        let used = used_bytes(&src, &Excludes::new(&excludes)?)
            .with_context(|| format!("measuring the tree for {mount}"))?;
        let fs_index = layout
            .filesystems
            .iter()
            .position(|f| f.mountpoint.as_deref() == Some(mount.as_str()))
            .context("a mount point without its filesystem")?;
        let source = layout.filesystems[fs_index].source.clone();
        layout.filesystems[fs_index].used_bytes = used;
        let room = container_bytes(&layout, &source).unwrap_or_default();
        let need = layout::min_filesystem_bytes(used, Bytes(u64::MAX));
        if need > room {
            bail!(
                "the tree for {mount} ({}) uses {used} on disk; with headroom it needs {need}, \
                 more than the {room} of {source}",
                src.display(),
            );
        }
        let file = manifest::archive_file_name(mount);
        let path = partial.join(&file);
        let out = File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        let capture = CaptureOptions {
            excludes,
            threads: opts.threads,
            one_file_system: false,
            mtime: now,
        };
        let (w, report) = archive::create(
            &src,
            BufWriter::with_capacity(1 << 20, out),
            &capture,
            progress,
        )
        .with_context(|| format!("archiving {} for {mount}", src.display()))?;
        let f = w
            .into_inner()
            .map_err(|e| e.into_error())
            .with_context(|| format!("writing {}", path.display()))?;
        f.sync_all()
            .with_context(|| format!("syncing {}", path.display()))?;
        for n in &report.notes {
            eprintln!("understudy: {mount}: {n}");
        }
        archives.push(ArchiveEntry {
            filesystem: mount.clone(),
            file,
            summary: report.summary,
        });
    }
    if empty.exists() {
        fs::remove_dir(&empty).with_context(|| format!("removing {}", empty.display()))?;
    }
    let m = Manifest {
        schema: manifest::SCHEMA,
        id: id.clone(),
        created: manifest::rfc3339(now),
        host,
        tool_version: env!("CARGO_PKG_VERSION").into(),
        layout,
        archives,
        excludes: desc.excludes.clone(),
    };
    m.check().context("checking the new manifest")?;
    archive::write_atomic(&partial.join(manifest::FILE), m.to_json_pretty().as_bytes())?;
    File::open(&partial)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing {}", partial.display()))?;
    fs::rename(&partial, &final_dir)
        .with_context(|| format!("renaming {} to {}", partial.display(), final_dir.display()))?;
    File::open(&opts.out_dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing {}", opts.out_dir.display()))?;
    Ok((final_dir, m))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counting UUIDs, so that layouts are reproducible.
    struct Counting(u128);
    impl Ids for Counting {
        fn uuid(&mut self) -> Uuid {
            self.0 += 1;
            Uuid::from_u128(self.0)
        }
    }

    const APPLIANCE: &str = r#"{
      "disk": { "size": "2GiB" },
      "partitions": [
        { "name": "bios", "size": "1MiB", "type": "bios-boot" },
        { "name": "boot", "size": "256MiB", "filesystem": { "type": "ext4", "mount": "/boot", "label": "boot" } },
        { "name": "lvm", "grow": true, "pv": "vg0" }
      ],
      "vgs": [ { "name": "vg0", "lvs": [
        { "name": "root", "grow": true, "filesystem": { "type": "ext4", "mount": "/", "uuid": "r00t" } },
        { "name": "swap", "size": "100MiB", "swap": {} }
      ] } ]
    }"#;

    fn layout(text: &str) -> Result<Layout> {
        let d: Description = serde_json::from_str(text)?;
        describe(&d, &mut Counting(0))
    }

    #[test]
    fn appliance_description_becomes_a_plannable_layout() -> Result<()> {
        let l = layout(APPLIANCE)?;
        assert_eq!(l.disk.size_bytes, Bytes(2 << 30));
        let p: Vec<(u64, u64, bool)> = l
            .partitions
            .iter()
            .map(|p| (p.start_lba.0, p.size_lba.0, p.growable))
            .collect();
        // 1 MiB, 256 MiB, then the rest up to the last whole MiB before the GPT's end.
        let end = (2u64 << 30) / 512 - 2048;
        assert_eq!(
            p,
            [
                (2048, 2048, false),
                (4096, 524_288, false),
                (528_384, end - 528_384, true)
            ]
        );
        assert_eq!(
            l.partitions[0].type_guid.map(|g| g.to_string()).as_deref(),
            Some("21686148-6449-6e6f-744e-656564454649")
        );
        assert_eq!(
            l.partitions[2].type_guid.map(|g| g.to_string()).as_deref(),
            Some("e6d6d379-f507-44c2-a23c-238f2a3df928")
        );
        // Swap rounded up to 4 MiB extents; root takes the rest of the PV after its
        // first MiB.
        let pv_bytes = (end - 528_384) * 512;
        let extents = (pv_bytes - MIB) / (4 * MIB);
        let sizes: Vec<(&str, u64, bool)> = l
            .lvm
            .lvs
            .iter()
            .map(|v| (v.name.as_str(), v.size_bytes.0, v.growable))
            .collect();
        assert_eq!(
            sizes,
            [
                ("root", (extents - 25) * 4 * MIB, true),
                ("swap", 25 * 4 * MIB, false)
            ]
        );
        assert_eq!(l.swap[0].size_bytes, Bytes(100 * MIB));
        assert_eq!(l.filesystems[1].uuid.as_deref(), Some("r00t"));
        assert_eq!(l.filesystems[1].mountpoint.as_deref(), Some("/"));
        let vg = &l.lvm.vgs[0];
        assert_eq!((vg.pvs[0].partition, vg.extent_size), (3, Bytes(4 * MIB)));
        assert_eq!(vg.uuid.len(), 38);
        // Same disk: the planner gives back the layout unchanged.
        let plan = layout::plan(&l, l.disk.size_bytes, SectorSize::B512)?;
        assert!(plan.unchanged(), "{plan}");
        // And the JSON reads back through the layout's own parser.
        assert_eq!(Layout::from_json(&l.to_json_pretty())?, l);
        Ok(())
    }

    #[test]
    fn without_a_disk_size_the_disk_just_fits() -> Result<()> {
        let l = layout(
            r#"{ "partitions": [ { "name": "a", "size": "10M", "filesystem": { "type": "ext4", "mount": "/" } } ] }"#,
        )?;
        // 1 MiB, 10 MiB, the GPT's 33 sectors at the end rounded up to a MiB.
        assert_eq!(l.disk.size_bytes, Bytes(12 * MIB));
        layout::plan(&l, l.disk.size_bytes, SectorSize::B512)?;
        Ok(())
    }

    #[test]
    fn bad_descriptions_say_why() {
        let cases = [
            (
                r#"{ "partitions": [ { "name": "a", "grow": true } ] }"#,
                "give the disk a size",
            ),
            (
                r#"{ "partitions": [ { "name": "a" } ] }"#,
                "give a size, or mark it grow",
            ),
            (
                r#"{ "disk": {"size": "8M"}, "partitions": [ { "name": "a", "size": "16M" } ] }"#,
                "do not fit",
            ),
            (
                r#"{ "disk": {"size": "64M"}, "partitions": [ { "name": "a", "size": "16M", "pv": "vg1" } ] }"#,
                "VG vg1, which is not described",
            ),
            (
                r#"{ "disk": {"size": "64M"}, "partitions": [ { "name": "a", "size": "16M", "pv": "vg0" } ],
                     "vgs": [ { "name": "vg0", "lvs": [ { "name": "x", "size": "32M" } ] } ] }"#,
                "the LVs need 32.0 MiB but its PV holds 12.0 MiB",
            ),
            (
                r#"{ "partitions": [ { "name": "a", "size": "1M", "type": "nonsense" } ] }"#,
                "neither a known name",
            ),
            (
                r#"{ "partitions": [ { "name": "a", "size": "1M", "filesystem": { "type": "ext4", "mount": "/x/../y" } } ] }"#,
                "not a clean absolute path",
            ),
            (
                r#"{ "partitions": [ { "name": "a", "size": "1M", "filesystem": { "type": "ext4", "mount": "/" } },
                                     { "name": "b", "size": "1M", "filesystem": { "type": "ext4", "mount": "/" } } ] }"#,
                "two filesystems are mounted at /",
            ),
        ];
        for (text, want) in cases {
            let err = layout(text).map(|_| ()).unwrap_err();
            assert!(format!("{err:#}").contains(want), "{text}: {err:#}");
        }
        let unknown: Result<Description, _> =
            serde_json::from_str(r#"{ "partitions": [], "disks": {} }"#);
        assert!(unknown.is_err(), "unknown fields are refused");
    }

    #[test]
    fn nested_filesystems_take_their_parents_subdirectory() -> Result<()> {
        let tmp = tempdir()?;
        fs::create_dir_all(tmp.join("root/boot/grub"))?;
        let mounts = vec!["/boot".to_string(), "/".to_string(), "/srv".to_string()];
        let s = sources(&mounts, &[("/".into(), tmp.join("root"))])?;
        assert_eq!(s[0], ("/boot".into(), Some(tmp.join("root/boot")), vec![]));
        assert_eq!(
            s[1],
            (
                "/".into(),
                Some(tmp.join("root")),
                vec!["boot/*".into(), "srv/*".into()]
            )
        );
        // No root/srv: the filesystem is empty.
        assert_eq!(s[2], ("/srv".into(), None, vec![]));
        let err = sources(&mounts, &[("/var".into(), tmp.clone())]).unwrap_err();
        assert!(
            err.to_string().contains("no filesystem mounted at /var"),
            "{err}"
        );
        fs::remove_dir_all(&tmp)?;
        Ok(())
    }

    fn tempdir() -> Result<PathBuf> {
        let d = std::env::temp_dir().join(format!(
            "understudy-image-{}-{}",
            std::process::id(),
            Uuid::new_v4()
        ));
        fs::create_dir_all(&d)?;
        Ok(d)
    }

    #[test]
    fn create_list_verify_round_trip() -> Result<()> {
        let tmp = tempdir()?;
        let root = tmp.join("tree");
        fs::create_dir_all(root.join("boot"))?;
        fs::create_dir_all(root.join("etc"))?;
        fs::write(root.join("etc/hostname"), "appliance\n")?;
        fs::write(root.join("boot/vmlinuz"), vec![7u8; 10_000])?;
        let desc = tmp.join("layout.json");
        fs::write(&desc, APPLIANCE)?;
        let out = tmp.join("images");
        let opts = CreateOptions {
            description: desc.clone(),
            trees: vec![("/".into(), root.clone())],
            id: Some("img-a".into()),
            out_dir: out.clone(),
            threads: 2,
        };
        let (dir, m) = create(&opts, &mut |_| {})?;
        assert_eq!(dir, out.join("img-a"));
        assert!(!out.join("img-a.partial").exists());
        assert_eq!(Manifest::load(&dir)?, m);
        let files: Vec<(&str, &str)> = m
            .archives
            .iter()
            .map(|a| (a.filesystem.as_str(), a.file.as_str()))
            .collect();
        assert_eq!(files, [("/boot", "boot.tar.lzo"), ("/", "root.tar.lzo")]);
        // /boot's contents are in its own archive, not in the root's.
        let mut names = Vec::new();
        archive::walk(File::open(dir.join("root.tar.lzo"))?, 1, &mut |_| {}, |l| {
            names.push(l.path);
            Ok(())
        })?;
        assert!(names.iter().any(|n| n == "./boot/"), "{names:?}");
        assert!(!names.iter().any(|n| n.contains("vmlinuz")), "{names:?}");
        let boot = m
            .layout
            .filesystems
            .iter()
            .find(|f| f.mountpoint.as_deref() == Some("/boot"));
        // Two directories' blocks, one file of 3 blocks, three inodes.
        assert_eq!(
            boot.map(|f| f.used_bytes),
            Some(Bytes(4096 + 256 + 3 * 4096 + 256))
        );
        super::super::verify(&dir, &m, 1, &mut |_| {})?;

        // The same id again is refused; a second image lists first.
        assert!(create(&opts, &mut |_| {}).is_err());
        let (_, m2) = create(
            &CreateOptions {
                id: Some("img-b".into()),
                ..opts.clone()
            },
            &mut |_| {},
        )?;
        let mut later = m2.clone();
        later.created = "2999-01-01T00:00:00Z".into();
        archive::write_atomic(
            &out.join("img-b/manifest.json"),
            later.to_json_pretty().as_bytes(),
        )?;
        fs::create_dir_all(out.join("broken"))?;
        fs::write(out.join("broken/manifest.json"), "{\"schema\": 2}")?;
        fs::create_dir_all(out.join("img-c.partial"))?;
        let listed = super::super::list(&out)?;
        let names: Vec<&str> = listed.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names[0], "img-b");
        assert!(
            names.contains(&"broken") && names.contains(&"img-a"),
            "{names:?}"
        );
        assert!(!names.contains(&"img-c.partial"));
        let broken = listed
            .iter()
            .find(|e| e.name == "broken")
            .and_then(|e| match &e.manifest {
                super::super::ManifestState::Unreadable { reason } => Some(reason.clone()),
                super::super::ManifestState::Readable(_) => None,
            });
        assert!(broken.is_some_and(|r| r.contains("schema 2 is not supported")));

        // A flipped byte, and a truncated archive, are refused with the archive named.
        let root_ar = dir.join("root.tar.lzo");
        let mut bytes = fs::read(&root_ar)?;
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0xff;
        fs::write(&root_ar, &bytes)?;
        let err = super::super::verify(&dir, &m, 1, &mut |_| {}).unwrap_err();
        assert!(
            format!("{err:#}").contains("root.tar.lzo of image img-a"),
            "{err:#}"
        );
        bytes.truncate(mid);
        fs::write(&root_ar, &bytes)?;
        let err = super::super::verify(&dir, &m, 1, &mut |_| {}).unwrap_err();
        assert!(format!("{err:#}").contains("the manifest says"), "{err:#}");

        // A tree too big for its filesystem is refused before anything is written.
        let small = tmp.join("small.json");
        fs::write(
            &small,
            r#"{ "partitions": [ { "name": "a", "size": "65M", "filesystem": { "type": "ext4", "mount": "/" } } ] }"#,
        )?;
        fs::write(root.join("etc/big"), vec![1u8; 2 << 20])?;
        let err = create(
            &CreateOptions {
                description: small,
                id: Some("img-d".into()),
                ..opts
            },
            &mut |_| {},
        )
        .unwrap_err();
        assert!(
            format!("{err:#}").contains("with headroom it needs"),
            "{err:#}"
        );
        assert!(!out.join("img-d").exists());
        fs::remove_dir_all(&tmp)?;
        Ok(())
    }
}
