//! The recovery initramfs builder: from a kernel's module directory, our static binary
//! and the host's tools, a reproducible compressed newc cpio whose `/init` is our
//! binary, with the storage, filesystem and device-mapper modules (and their
//! dependencies), the real `mke2fs`/`e2fsck`/`lvm`… with their libraries, a busybox
//! shell, and the files listed in `initramfs/files.txt`.
//!
//! Does not own: what PID 1 does once booted (it uses [`modules`] to pick drivers),
//! fetching a kernel (`cargo xtask kernel` does that for tests and the demo), or
//! where the image is installed (the provisioning code).

pub mod cpio;
pub mod deferred;
pub mod libs;
pub mod lz4;
pub mod modules;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::Serialize;

use crate::cmd::Cmd;
use cpio::{Header, Node};
use modules::Index;

/// The modules every recovery image carries (names or aliases; dependencies and soft
/// dependencies are added). Built-in ones are fine and reported as such.
pub const DEFAULT_MODULES: &[&str] = &[
    // Storage: QEMU's and real machines' disk controllers and USB sticks.
    "virtio_pci",
    "virtio_blk",
    "virtio_scsi",
    "ahci",
    "ata_piix",
    "nvme",
    "sd_mod",
    "usb_storage",
    "uas",
    "xhci_pci",
    "xhci_hcd",
    "ehci_pci",
    "ehci_hcd",
    "ohci_pci",
    "uhci_hcd",
    // A USB keyboard stops working at the VGA console once the USB host driver takes
    // the controller from the firmware's legacy emulation, unless HID is loaded too.
    "usbhid",
    "hid_generic",
    // Filesystems, and the code pages vfat mounts ask for.
    "ext4",
    "vfat",
    "xfs",
    "nls_cp437",
    "nls_iso8859_1",
    "nls_utf8",
    "loop",
    // Device-mapper: LVM, and snapshots of its volumes.
    "dm_mod",
    "dm_snapshot",
    "dm_mirror",
    "dm_thin_pool",
    // ext4 (metadata_csum) and xfs mount only once a crc32c implementation is loaded;
    // ext4 names it only as a soft dependency.
    "crc32c_generic",
    "crc32c_intel",
    "libcrc32c",
];

/// Modules (with whatever only they depend on) that travel in the image's deferred
/// part ([`deferred`]): nothing before the first screen loads them, and xfs alone is
/// 4 MiB. Storage drivers, ext4 and vfat (the recovery and images filesystems, read
/// for the first screen) stay in the part the kernel unpacks.
pub const DEFERRED_MODULES: &[&str] = &[
    "xfs",
    "libcrc32c",
    "loop",
    "dm_mod",
    "dm_snapshot",
    "dm_mirror",
    "dm_thin_pool",
];

/// A program to install with its libraries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Tool {
    pub name: String,
    /// A required tool missing on the host fails the build; an optional one is
    /// reported.
    pub required: bool,
}

impl Tool {
    fn new(name: &str, required: bool) -> Tool {
        Tool {
            name: name.to_string(),
            required,
        }
    }
}

/// The tools every recovery image carries: the real e2fsprogs and lvm (busybox's
/// applets of the same names are not installed), and a few that help a technician.
pub fn default_tools() -> Vec<Tool> {
    let mut tools: Vec<Tool> = ["mke2fs", "e2fsck", "tune2fs", "lvm"]
        .iter()
        .map(|n| Tool::new(n, true))
        .collect();
    tools.extend(
        [
            "resize2fs",
            "dmsetup",
            "blkid",
            "sgdisk",
            "mkfs.fat",
            "mkfs.xfs",
            "xfs_repair",
            "kexec",
        ]
        .iter()
        .map(|n| Tool::new(n, false)),
    );
    tools
}

/// What runs as `/init`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Init {
    /// A program (our static binary) copied to `/init`.
    Binary(PathBuf),
    /// A busybox `sh` script, for smoke-testing a kernel and the image without our
    /// binary; needs busybox in the image.
    BusyboxScript(String),
}

/// Compression of the cpio; the kernel must have the matching `CONFIG_RD_*`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Compression {
    /// zstd at a level (Debian's kernels have `CONFIG_RD_ZSTD=y`); it unpacks faster
    /// than xz at boot for a few percent more size.
    Zstd {
        level: i32,
    },
    /// LZ4's legacy frame ([`lz4`]; `CONFIG_RD_LZ4=y` in Debian's kernels): about
    /// twice zstd's size, but the kernel unpacks it several times faster, which is
    /// most of the boot time an image adds (the default).
    Lz4,
    None,
}

/// A line of `initramfs/files.txt`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExtraPath {
    /// Absolute path on the host and in the image.
    pub path: String,
    /// A missing optional path is skipped; a missing required one fails the build.
    pub optional: bool,
}

/// The list of extra host files shipped with the project (`initramfs/files.txt`).
pub const DEFAULT_FILES_LIST: &str = include_str!("../../initramfs/files.txt");

/// Files the image always carries, from the project's `initramfs/` directory.
const STATIC_FILES: &[(&str, &str)] = &[
    ("etc/passwd", include_str!("../../initramfs/etc/passwd")),
    ("etc/group", include_str!("../../initramfs/etc/group")),
    (
        "etc/lvm/lvm.conf",
        include_str!("../../initramfs/etc/lvm/lvm.conf"),
    ),
];

/// Parses a files list: one absolute path per line, `?` before optional ones, `#`
/// comments.
pub fn parse_files_list(text: &str) -> Result<Vec<ExtraPath>> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (optional, path) = match line.strip_prefix('?') {
            Some(p) => (true, p.trim()),
            None => (false, line),
        };
        if !path.starts_with('/') || path.split('/').any(|c| c == "..") {
            bail!(
                "files list line {}: {path:?} must be an absolute path without `..`",
                i + 1
            );
        }
        out.push(ExtraPath {
            path: path.to_string(),
            optional,
        });
    }
    Ok(out)
}

/// `SOURCE_DATE_EPOCH` (reproducible-builds.org) as the mtime of every member, or 0.
pub fn mtime_from_env(value: Option<&str>) -> Result<u32> {
    match value {
        None => Ok(0),
        Some(v) => v.trim().parse::<u32>().with_context(|| {
            format!("SOURCE_DATE_EPOCH={v:?} is not a time in seconds that fits newc's 32 bits")
        }),
    }
}

/// Everything a build needs; [`Spec::new`] fills in the defaults.
#[derive(Clone, Debug)]
pub struct Spec {
    /// `uname -r` of the kernel the image is for (`6.1.0-28-amd64`).
    pub kernel_version: String,
    /// `/lib/modules/VERSION`, or `/lib/modules` (the version is appended), possibly in
    /// an extracted package tree.
    pub modules_dir: PathBuf,
    pub init: Init,
    /// Modules wanted, by name or alias.
    pub modules: Vec<String>,
    pub tools: Vec<Tool>,
    /// busybox, absolute inside `host_root`; its applets fill in missing commands.
    pub busybox: Option<String>,
    pub files: Vec<ExtraPath>,
    /// The system the tools, libraries and files come from (`/`).
    pub host_root: PathBuf,
    /// The mtime of every member.
    pub mtime: u32,
    pub compression: Compression,
    /// Drop /init's debug sections (`objcopy --strip-debug`; symbols stay, so a
    /// backtrace still names functions). The release build keeps line tables, which
    /// are most of its size.
    pub strip_init: bool,
    pub output: PathBuf,
}

impl Spec {
    /// The standard recovery image: [`DEFAULT_MODULES`], [`default_tools`], busybox,
    /// `initramfs/files.txt`, from `/`, LZ4, mtime from `SOURCE_DATE_EPOCH`.
    pub fn new(
        kernel_version: &str,
        modules_dir: &Path,
        init: Init,
        output: &Path,
    ) -> Result<Spec> {
        Ok(Spec {
            kernel_version: kernel_version.to_string(),
            modules_dir: modules_dir.to_path_buf(),
            init,
            modules: DEFAULT_MODULES.iter().map(|m| m.to_string()).collect(),
            tools: default_tools(),
            busybox: Some("/usr/bin/busybox".to_string()),
            files: parse_files_list(DEFAULT_FILES_LIST)?,
            host_root: PathBuf::from("/"),
            mtime: mtime_from_env(std::env::var("SOURCE_DATE_EPOCH").ok().as_deref())?,
            compression: Compression::Lz4,
            strip_init: false,
            output: output.to_path_buf(),
        })
    }
}

/// What a member is counted as in the size report.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    Init,
    Modules,
    Tools,
    Libraries,
    Files,
    Layout,
}

impl fmt::Display for Category {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Category::Init => "init (our binary)",
            Category::Modules => "kernel modules",
            Category::Tools => "tools",
            Category::Libraries => "libraries",
            Category::Files => "files",
            Category::Layout => "directories, links, nodes",
        })
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct CategorySize {
    pub category: Category,
    pub entries: usize,
    pub bytes: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct EntrySize {
    pub path: String,
    pub category: Category,
    pub bytes: u64,
}

/// The deferred part ([`deferred`]) of an image.
#[derive(Clone, Debug, Serialize)]
pub struct DeferredSize {
    pub entries: usize,
    /// Its cpio before compression.
    pub cpio_bytes: u64,
    /// As it is in the image.
    pub compressed_bytes: u64,
}

/// What was built and what took the space.
#[derive(Clone, Debug, Serialize)]
pub struct BuildReport {
    pub output: PathBuf,
    pub kernel_version: String,
    pub compression: Compression,
    /// The file written.
    pub compressed_bytes: u64,
    /// The cpio before compression: what the kernel unpacks (the deferred part is one
    /// member of it).
    pub cpio_bytes: u64,
    /// Members, both parts counted.
    pub entries: usize,
    /// What PID 1 unpacks after the first screen; `None` when the kernel unpacks all.
    pub deferred: Option<DeferredSize>,
    /// Uncompressed data by category (both parts), largest first.
    pub categories: Vec<CategorySize>,
    /// The largest members, largest first.
    pub largest: Vec<EntrySize>,
    /// Modules in the image, in load order.
    pub modules: Vec<String>,
    /// Wanted modules that are built into the kernel (nothing to load).
    pub builtin: Vec<String>,
    /// Wanted modules and optional tools that the kernel or host does not have.
    pub missing: Vec<String>,
}

const MIB: f64 = 1024.0 * 1024.0;

impl fmt::Display for BuildReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mib = |b: u64| b as f64 / MIB;
        writeln!(
            f,
            "{}: {:.2} MiB compressed ({:?}), {:.2} MiB of cpio, {} entries, kernel {}",
            self.output.display(),
            mib(self.compressed_bytes),
            self.compression,
            mib(self.cpio_bytes),
            self.entries,
            self.kernel_version
        )?;
        if let Some(d) = &self.deferred {
            writeln!(
                f,
                "deferred part (tools, libraries, {} modules; PID 1 unpacks it after the first screen): {} entries, {:.2} MiB of cpio in {:.2} MiB of zstd",
                DEFERRED_MODULES.join("/"),
                d.entries,
                mib(d.cpio_bytes),
                mib(d.compressed_bytes)
            )?;
        }
        writeln!(f, "uncompressed by category:")?;
        for c in &self.categories {
            writeln!(
                f,
                "  {:>8.2} MiB  {:>5} entries  {}",
                mib(c.bytes),
                c.entries,
                c.category
            )?;
        }
        writeln!(f, "largest entries:")?;
        for e in &self.largest {
            writeln!(
                f,
                "  {:>8.2} MiB  {}  ({:?})",
                mib(e.bytes),
                e.path,
                e.category
            )?;
        }
        writeln!(
            f,
            "modules ({}): {}",
            self.modules.len(),
            self.modules.join(" ")
        )?;
        if !self.builtin.is_empty() {
            writeln!(f, "built into the kernel: {}", self.builtin.join(" "))?;
        }
        if !self.missing.is_empty() {
            writeln!(f, "not found (left out): {}", self.missing.join(" "))?;
        }
        Ok(())
    }
}

/// Where a member's bytes come from.
#[derive(Clone, Debug)]
enum Content {
    None,
    Host(PathBuf),
    Bytes(Vec<u8>),
    Link(String),
}

#[derive(Clone, Debug)]
struct Member {
    node: Node,
    perm: u32,
    content: Content,
    size_bytes: u64,
    category: Category,
}

/// The image's members by archive path: a `BTreeMap` keeps them sorted, so the
/// archive does not depend on directory listing order, and a parent always sorts
/// before its children.
#[derive(Default)]
struct Plan {
    members: BTreeMap<String, Member>,
}

impl Plan {
    /// Adds a member unless the path is taken (the first one added wins).
    fn add(&mut self, path: String, member: Member) -> bool {
        if self.members.contains_key(&path) {
            return false;
        }
        self.members.insert(path, member);
        true
    }

    fn dir(&mut self, path: &str, perm: u32) {
        self.add(
            path.to_string(),
            Member {
                node: Node::Dir,
                perm,
                content: Content::None,
                size_bytes: 0,
                category: Category::Layout,
            },
        );
    }

    fn link(&mut self, path: &str, target: &str, category: Category) -> bool {
        self.add(
            path.to_string(),
            Member {
                node: Node::Symlink,
                perm: 0o777,
                content: Content::Link(target.to_string()),
                size_bytes: target.len() as u64,
                category,
            },
        )
    }

    fn bytes(&mut self, path: &str, perm: u32, bytes: Vec<u8>, category: Category) -> bool {
        self.add(
            path.to_string(),
            Member {
                node: Node::File,
                perm,
                size_bytes: bytes.len() as u64,
                content: Content::Bytes(bytes),
                category,
            },
        )
    }

    fn host_file(&mut self, path: &str, source: &Path, category: Category) -> Result<bool> {
        let meta = fs::metadata(source)
            .with_context(|| format!("reading the metadata of {}", source.display()))?;
        Ok(self.add(
            path.to_string(),
            Member {
                node: Node::File,
                perm: std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o7777,
                content: Content::Host(source.to_path_buf()),
                size_bytes: meta.len(),
                category,
            },
        ))
    }

    /// Moves the members `later` picks (never directories: every directory stays, so
    /// both parts have their parents) into a plan of their own.
    fn split_off(&mut self, later: impl Fn(&str, &Member) -> bool) -> Plan {
        let (moved, kept) = std::mem::take(&mut self.members)
            .into_iter()
            .partition(|(p, m)| m.node != Node::Dir && later(p, m));
        self.members = kept;
        Plan { members: moved }
    }

    /// Adds the missing parent directories of every member; a parent that is not a
    /// directory (a file, or one of the merged-/usr links) is an error.
    fn add_parents(&mut self) -> Result<()> {
        let paths: Vec<String> = self.members.keys().cloned().collect();
        for p in paths {
            let mut parent = p.as_str();
            while let Some((up, _)) = parent.rsplit_once('/') {
                match self.members.get(up) {
                    Some(m) if m.node == Node::Dir => {}
                    Some(m) => bail!(
                        "{p} would be below {up}, which is a {:?} in the image",
                        m.node
                    ),
                    None => self.dir(up, 0o755),
                }
                parent = up;
            }
        }
        Ok(())
    }
}

/// Where an absolute path lands in the image. The image is merged-/usr (`/bin`,
/// `/sbin`, `/lib`, `/lib64` are links into `/usr`), so `/lib/x86_64-linux-gnu/libc.so.6`
/// and `/usr/lib/x86_64-linux-gnu/libc.so.6` are one member, whatever the host's layout.
pub fn archive_path(abs: &str) -> String {
    let rel = abs.trim_start_matches('/');
    for top in ["bin", "sbin", "lib", "lib64"] {
        if rel == top {
            return format!("usr/{top}");
        }
        if let Some(rest) = rel.strip_prefix(top).and_then(|r| r.strip_prefix('/')) {
            return format!("usr/{top}/{rest}");
        }
    }
    rel.to_string()
}

/// The directories searched for tools, in `PATH` order.
const BIN_DIRS: &[&str] = &["/usr/sbin", "/usr/bin", "/sbin", "/bin"];

/// The skeleton every image has: merged-/usr links, mount points, `/dev/console`.
fn add_layout(plan: &mut Plan) {
    for top in ["bin", "sbin", "lib", "lib64"] {
        plan.link(top, &format!("usr/{top}"), Category::Layout);
        plan.dir(&format!("usr/{top}"), 0o755);
    }
    for d in ["dev", "proc", "sys", "run", "etc", "mnt", "var"] {
        plan.dir(d, 0o755);
    }
    plan.dir("root", 0o700);
    plan.dir("tmp", 0o1777);
    plan.link("var/run", "/run", Category::Layout);
    // e2fsprogs and lvm look for mounted filesystems in /etc/mtab first.
    plan.link("etc/mtab", "/proc/self/mounts", Category::Layout);
    // The kernel opens /dev/console for init's standard streams before /init runs,
    // and does not mount devtmpfs in an initramfs by itself.
    for (name, perm, major, minor) in [("dev/console", 0o600, 5, 1), ("dev/null", 0o666, 1, 3)] {
        plan.add(
            name.to_string(),
            Member {
                node: Node::CharDev { major, minor },
                perm,
                content: Content::None,
                size_bytes: 0,
                category: Category::Layout,
            },
        );
    }
}

/// Finds `name` in [`BIN_DIRS`] below `root`: its absolute path (directory resolved,
/// so `/sbin/x` on a merged-/usr host is `/usr/sbin/x`) and its host file.
fn find_tool(root: &Path, name: &str) -> Result<Option<(String, PathBuf)>> {
    for dir in BIN_DIRS {
        let host = root.join(dir.trim_start_matches('/')).join(name);
        if host.is_file() {
            let real_dir = fs::canonicalize(root.join(dir.trim_start_matches('/')))
                .with_context(|| format!("resolving {dir} below {}", root.display()))?;
            let inside = real_dir
                .strip_prefix(root)
                .unwrap_or(&real_dir)
                .to_string_lossy()
                .into_owned();
            let source =
                fs::canonicalize(&host).with_context(|| format!("resolving {}", host.display()))?;
            return Ok(Some((
                format!("/{}/{name}", inside.trim_start_matches('/')),
                source,
            )));
        }
    }
    Ok(None)
}

/// Every symlink in [`BIN_DIRS`] below `root` with the host file it resolves to, as
/// (absolute path inside root, resolved host file).
fn bin_links(root: &Path) -> Result<Vec<(String, PathBuf)>> {
    let mut seen_dirs = Vec::new();
    let mut out = Vec::new();
    for dir in BIN_DIRS {
        let host_dir = root.join(dir.trim_start_matches('/'));
        let Ok(real) = fs::canonicalize(&host_dir) else {
            continue;
        };
        if seen_dirs.contains(&real) {
            continue;
        }
        seen_dirs.push(real.clone());
        let inside = real
            .strip_prefix(root)
            .unwrap_or(&real)
            .to_string_lossy()
            .into_owned();
        for entry in fs::read_dir(&real).with_context(|| format!("listing {}", real.display()))? {
            let entry = entry.with_context(|| format!("listing {}", real.display()))?;
            if !entry.file_type().is_ok_and(|t| t.is_symlink()) {
                continue;
            }
            if let Ok(target) = fs::canonicalize(entry.path()) {
                let name = entry.file_name().to_string_lossy().into_owned();
                out.push((
                    format!("/{}/{name}", inside.trim_start_matches('/')),
                    target,
                ));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// `bin` without its debug sections, by `objcopy --strip-debug` into a temporary file
/// beside `output`.
fn strip_debug(bin: &Path, output: &Path) -> Result<Vec<u8>> {
    let mut tmp = output.as_os_str().to_owned();
    tmp.push(".init-stripped");
    let tmp = PathBuf::from(tmp);
    if let Some(dir) = tmp.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let result = Cmd::new("objcopy")
        .arg("--strip-debug")
        .arg(bin)
        .arg(&tmp)
        .run()
        .and_then(|()| fs::read(&tmp).with_context(|| format!("reading {}", tmp.display())));
    let _ = fs::remove_file(&tmp);
    result
}

/// `/etc/profile`: `PATH`, and an alias to the real tool for every name busybox also
/// has as an applet. Debian's busybox is built with `FEATURE_SH_STANDALONE`, so its
/// shell runs its own `mke2fs` before searching `PATH`; aliases are expanded before
/// that lookup. PID 1 starts shells with `ENV=/etc/profile` (or `sh -l`).
pub fn profile(shadowed: &[(String, String)]) -> String {
    let mut out = String::from(
        "# Written by understudy's initramfs builder.\n\
         export PATH=/usr/sbin:/usr/bin:/sbin:/bin\n\
         # busybox's shell prefers its own applets to PATH: make these names the real tools.\n",
    );
    for (name, real) in shadowed {
        out.push_str(&format!("alias {name}={real}\n"));
    }
    out
}

/// Copies `abs` (file, link or directory tree) from `root` into the plan.
fn add_host_tree(plan: &mut Plan, root: &Path, abs: &str, top: bool) -> Result<()> {
    let host = root.join(abs.trim_start_matches('/'));
    // The listed path itself is followed if it is a link; links below it are kept.
    let meta = if top {
        fs::metadata(&host)
    } else {
        fs::symlink_metadata(&host)
    }
    .with_context(|| format!("reading the metadata of {}", host.display()))?;
    let path = archive_path(abs);
    if meta.file_type().is_symlink() {
        let target =
            fs::read_link(&host).with_context(|| format!("reading the link {}", host.display()))?;
        plan.link(&path, &target.to_string_lossy(), Category::Files);
    } else if meta.is_dir() {
        plan.dir(
            &path,
            std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o7777,
        );
        let mut names: Vec<String> = fs::read_dir(&host)
            .with_context(|| format!("listing {}", host.display()))?
            .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect::<Result<_, _>>()
            .with_context(|| format!("listing {}", host.display()))?;
        names.sort();
        for n in names {
            add_host_tree(
                plan,
                root,
                &format!("{}/{n}", abs.trim_end_matches('/')),
                false,
            )?;
        }
    } else if meta.is_file() {
        plan.host_file(&path, &host, Category::Files)?;
    }
    Ok(())
}

/// Builds the image `spec` describes, writing it to `spec.output` (through a
/// temporary file renamed into place), and reports what took the space.
pub fn build(spec: &Spec) -> Result<BuildReport> {
    let root = spec.host_root.as_path();
    let mut plan = Plan::default();
    let mut missing = Vec::new();
    add_layout(&mut plan);
    add_init(&mut plan, spec)?;
    // The real tools before busybox, so its applets of the same names never shadow them.
    let mut elves = add_tools(&mut plan, root, &spec.tools, &mut missing)?;
    let shadowed = match &spec.busybox {
        Some(busybox) => {
            elves.push(busybox.clone());
            add_busybox(&mut plan, root, busybox)?
        }
        None => Vec::new(),
    };
    plan.bytes(
        "etc/profile",
        0o644,
        profile(&shadowed).into_bytes(),
        Category::Files,
    );
    for lib in libs::closure(root, &elves)? {
        plan.host_file(&archive_path(&lib.path), &lib.source, Category::Libraries)?;
    }
    let (order, builtin, late_modules) = add_modules(&mut plan, spec, &mut missing)?;
    for (path, text) in STATIC_FILES {
        plan.bytes(path, 0o644, text.as_bytes().to_vec(), Category::Files);
    }
    for extra in &spec.files {
        let host = root.join(extra.path.trim_start_matches('/'));
        if fs::symlink_metadata(&host).is_err() {
            if extra.optional {
                missing.push(format!("file {}", extra.path));
                continue;
            }
            bail!(
                "{} (from the files list) is missing below {}",
                extra.path,
                root.display()
            );
        }
        add_host_tree(&mut plan, root, &extra.path, true)?;
    }
    plan.add_parents()?;
    let mut report = report(&plan, spec, order, builtin, missing);
    // Only our binary can unpack the deferred part: an image with a busybox script as
    // `/init` carries everything in the kernel's part.
    if matches!(spec.init, Init::Binary(_)) {
        let later = plan.split_off(|path, m| deferred_member(path, m, &late_modules));
        let (bytes, cpio_bytes) = deferred_part(&later, spec.mtime)?;
        report.deferred = Some(DeferredSize {
            entries: later.members.len(),
            cpio_bytes,
            compressed_bytes: bytes.len() as u64,
        });
        plan.bytes(deferred::NAME, 0o600, bytes, Category::Layout);
    }
    let (compressed_bytes, cpio_bytes) = write(&plan, spec)?;
    report.compressed_bytes = compressed_bytes;
    report.cpio_bytes = cpio_bytes;
    Ok(report)
}

/// Whether a member goes into the deferred part: tools, their libraries and the
/// modules in `late_modules` (archive paths).
fn deferred_member(path: &str, m: &Member, late_modules: &BTreeSet<String>) -> bool {
    matches!(m.category, Category::Tools | Category::Libraries)
        || (m.category == Category::Modules && late_modules.contains(path))
}

/// The members of `later` as a zstd-compressed cpio ([`deferred`]) and the cpio's
/// size.
fn deferred_part(later: &Plan, mtime: u32) -> Result<(Vec<u8>, u64)> {
    let mut enc =
        zstd::stream::write::Encoder::new(Vec::new(), deferred::LEVEL).context("starting zstd")?;
    enc.include_checksum(true)
        .context("asking zstd for a checksum")?;
    let (enc, cpio_bytes) = write_members(later, mtime, cpio::Writer::new(enc))?.finish()?;
    Ok((
        enc.finish().context("finishing the deferred part")?,
        cpio_bytes,
    ))
}

/// `/init`: our static binary (optionally without debug sections), or a busybox script.
fn add_init(plan: &mut Plan, spec: &Spec) -> Result<()> {
    let bytes = match &spec.init {
        Init::Binary(bin) => {
            let bytes = fs::read(bin).with_context(|| format!("reading {}", bin.display()))?;
            let needs = libs::parse(&bytes)
                .with_context(|| format!("reading the ELF header of {}", bin.display()))?;
            if needs.interpreter.is_some() {
                bail!(
                    "{} is dynamically linked ({:?}); /init must be the static build",
                    bin.display(),
                    needs.needed
                );
            }
            if spec.strip_init {
                strip_debug(bin, &spec.output)?
            } else {
                bytes
            }
        }
        Init::BusyboxScript(text) => {
            if spec.busybox.is_none() {
                bail!("a busybox script as /init needs busybox in the image");
            }
            text.clone().into_bytes()
        }
    };
    plan.bytes("init", 0o755, bytes, Category::Init);
    Ok(())
}

/// The tools found below `root`, and their other names (mkfs.ext4 -> mke2fs,
/// lvcreate -> lvm); returns their absolute paths, whose libraries must come along.
fn add_tools(
    plan: &mut Plan,
    root: &Path,
    tools: &[Tool],
    missing: &mut Vec<String>,
) -> Result<Vec<String>> {
    let mut found: Vec<(PathBuf, String)> = Vec::new();
    for tool in tools {
        match find_tool(root, &tool.name)? {
            Some((abs, source)) => {
                plan.host_file(&archive_path(&abs), &source, Category::Tools)?;
                found.push((source, abs));
            }
            None if tool.required => bail!(
                "required tool {} is in none of {} below {}",
                tool.name,
                BIN_DIRS.join(", "),
                root.display()
            ),
            None => missing.push(format!("tool {}", tool.name)),
        }
    }
    for (link, target) in bin_links(root)? {
        if let Some((_, abs)) = found.iter().find(|(s, _)| *s == target) {
            plan.link(&archive_path(&link), abs, Category::Tools);
        }
    }
    Ok(found.into_iter().map(|(_, abs)| abs).collect())
}

/// busybox and a link for each of its applets whose name no bin directory has yet;
/// returns the applet names that a real tool has, with that tool's path.
fn add_busybox(plan: &mut Plan, root: &Path, busybox: &str) -> Result<Vec<(String, String)>> {
    let host = root.join(busybox.trim_start_matches('/'));
    plan.host_file(&archive_path(busybox), &host, Category::Tools)?;
    let mut shadowed = Vec::new();
    let list = Cmd::new(&host).arg("--list-full").output()?.text();
    for applet in list.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let name = applet.rsplit('/').next().unwrap_or(applet);
        // No second init for the kernel to fall back to.
        if name == "init" || name == "linuxrc" || name == "busybox" || name.is_empty() {
            continue;
        }
        let taken = BIN_DIRS
            .iter()
            .map(|d| archive_path(&format!("{d}/{name}")))
            .find(|p| plan.members.contains_key(p));
        match taken {
            Some(real) => shadowed.push((name.to_string(), format!("/{real}"))),
            None => {
                plan.link(
                    &archive_path(&format!("/{applet}")),
                    busybox,
                    Category::Tools,
                );
            }
        }
    }
    Ok(shadowed)
}

/// The wanted modules with their (soft) dependencies, decompressed, and index files for
/// exactly this set; returns the load order, the wanted names built into the kernel,
/// and the archive paths of the modules only [`DEFERRED_MODULES`] need.
fn add_modules(
    plan: &mut Plan,
    spec: &Spec,
    missing: &mut Vec<String>,
) -> Result<(Vec<String>, Vec<String>, BTreeSet<String>)> {
    let mod_dir = modules::version_dir(&spec.modules_dir, &spec.kernel_version);
    let index = Index::load(&mod_dir)
        .with_context(|| format!("reading the module index of {}", mod_dir.display()))?;
    if index.modules.is_empty() {
        bail!("no kernel modules found in {}", mod_dir.display());
    }
    let mut builtin = Vec::new();
    for m in &spec.modules {
        if index.resolve(m).is_empty() {
            if index.builtin.contains(&modules::normalize(m)) {
                builtin.push(m.clone());
            } else {
                missing.push(format!("module {m}"));
            }
        }
    }
    let order = index.load_order(&spec.modules);
    let early: Vec<String> = spec
        .modules
        .iter()
        .filter(|m| !DEFERRED_MODULES.contains(&modules::normalize(m).as_str()))
        .cloned()
        .collect();
    let early = index.load_order(&early);
    let mut late = BTreeSet::new();
    let mut sub = index.subset(&order);
    let image_mod_dir = archive_path(&format!("/lib/modules/{}", spec.kernel_version));
    for (name, m) in sub.modules.iter_mut() {
        let source = mod_dir.join(&m.path);
        let installed = modules::installed_path(&m.path);
        let dest = format!("{image_mod_dir}/{installed}");
        if !early.contains(name) {
            late.insert(dest.clone());
        }
        if installed == m.path {
            plan.host_file(&dest, &source, Category::Modules)?;
        } else {
            plan.bytes(
                &dest,
                0o644,
                modules::read_module(&source)?,
                Category::Modules,
            );
        }
        m.path = installed;
    }
    for p in &mut sub.order {
        *p = modules::installed_path(p);
    }
    let builtin_path = mod_dir.join("modules.builtin");
    let builtin_text = match fs::read_to_string(&builtin_path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", builtin_path.display())),
    };
    for (name, text) in [
        ("modules.dep", sub.render_dep()),
        ("modules.alias", sub.render_alias()),
        ("modules.softdep", sub.render_softdep()),
        ("modules.order", sub.render_order()),
        ("modules.builtin", builtin_text),
    ] {
        plan.bytes(
            &format!("{image_mod_dir}/{name}"),
            0o644,
            text.into_bytes(),
            Category::Files,
        );
    }
    Ok((order, builtin, late))
}

/// Writes the plan as a compressed cpio to `spec.output`; returns (file size, cpio size).
fn write(plan: &Plan, spec: &Spec) -> Result<(u64, u64)> {
    let out_path = &spec.output;
    if let Some(dir) = out_path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut partial = out_path.as_os_str().to_owned();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    let result = (|| -> Result<u64> {
        let file =
            File::create(&partial).with_context(|| format!("creating {}", partial.display()))?;
        let buffered = BufWriter::with_capacity(1 << 20, file);
        let (file, cpio_bytes) = match spec.compression {
            Compression::Zstd { level } => {
                let mut enc =
                    zstd::stream::write::Encoder::new(buffered, level).context("starting zstd")?;
                enc.include_checksum(true)
                    .context("asking zstd for a checksum")?;
                let (enc, cpio_bytes) =
                    write_members(plan, spec.mtime, cpio::Writer::new(enc))?.finish()?;
                (
                    enc.finish().context("finishing the zstd stream")?,
                    cpio_bytes,
                )
            }
            Compression::Lz4 => {
                let enc = lz4::Writer::new(buffered).context("starting the LZ4 frame")?;
                let (enc, cpio_bytes) =
                    write_members(plan, spec.mtime, cpio::Writer::new(enc))?.finish()?;
                (enc.finish().context("finishing the LZ4 frame")?, cpio_bytes)
            }
            Compression::None => {
                write_members(plan, spec.mtime, cpio::Writer::new(buffered))?.finish()?
            }
        };
        let file = file
            .into_inner()
            .map_err(|e| e.into_error())
            .context("flushing the image")?;
        file.sync_all()
            .with_context(|| format!("syncing {}", partial.display()))?;
        fs::rename(&partial, out_path)
            .with_context(|| format!("renaming {} to {}", partial.display(), out_path.display()))?;
        Ok(cpio_bytes)
    })();
    match result {
        Ok(cpio_bytes) => {
            let size = fs::metadata(out_path)
                .with_context(|| format!("reading the size of {}", out_path.display()))?
                .len();
            Ok((size, cpio_bytes))
        }
        Err(e) => {
            let _ = fs::remove_file(&partial);
            Err(e)
        }
    }
}

fn write_members<W: Write>(
    plan: &Plan,
    mtime: u32,
    mut w: cpio::Writer<W>,
) -> Result<cpio::Writer<W>> {
    for (path, m) in &plan.members {
        let header = Header {
            name: path.clone(),
            node: m.node.clone(),
            perm: m.perm,
            mtime,
            size_bytes: u32::try_from(m.size_bytes).with_context(|| {
                format!("{path} is {} bytes; newc holds at most 4 GiB", m.size_bytes)
            })?,
        };
        match &m.content {
            Content::None => w.append(&header, &[])?,
            Content::Bytes(b) => w.append(&header, b)?,
            Content::Link(t) => w.append(&header, t.as_bytes())?,
            Content::Host(src) => {
                let mut f =
                    File::open(src).with_context(|| format!("opening {}", src.display()))?;
                w.append_from(&header, &mut f)
                    .with_context(|| format!("archiving {} as {path}", src.display()))?;
            }
        }
    }
    Ok(w)
}

/// The report on `plan` (both parts, before any split); the sizes written are
/// filled in once the image is.
fn report(
    plan: &Plan,
    spec: &Spec,
    modules: Vec<String>,
    builtin: Vec<String>,
    missing: Vec<String>,
) -> BuildReport {
    let mut by_cat: BTreeMap<Category, (usize, u64)> = BTreeMap::new();
    for m in plan.members.values() {
        let e = by_cat.entry(m.category).or_default();
        e.0 += 1;
        e.1 += m.size_bytes;
    }
    let mut categories: Vec<CategorySize> = by_cat
        .into_iter()
        .map(|(category, (entries, bytes))| CategorySize {
            category,
            entries,
            bytes,
        })
        .collect();
    categories.sort_by(|a, b| b.bytes.cmp(&a.bytes).then(a.category.cmp(&b.category)));
    let mut largest: Vec<EntrySize> = plan
        .members
        .iter()
        .filter(|(_, m)| m.node == Node::File)
        .map(|(p, m)| EntrySize {
            path: format!("/{p}"),
            category: m.category,
            bytes: m.size_bytes,
        })
        .collect();
    largest.sort_by(|a, b| b.bytes.cmp(&a.bytes).then(a.path.cmp(&b.path)));
    largest.truncate(15);
    BuildReport {
        output: spec.output.clone(),
        kernel_version: spec.kernel_version.clone(),
        compression: spec.compression,
        compressed_bytes: 0,
        cpio_bytes: 0,
        entries: plan.members.len(),
        deferred: None,
        categories,
        largest,
        modules,
        builtin,
        missing,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The default (LZ4) image is the uncompressed image's cpio, byte for byte, in
    /// the frame the kernel reads, and the same bytes on every build.
    #[test]
    fn the_lz4_image_wraps_the_same_reproducible_cpio() {
        let dir = std::env::temp_dir().join(format!("understudy-lz4-image-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let modules =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/initramfs/modules");
        let build_as = |name: &str, compression: Compression| {
            let out = dir.join(name);
            let mut spec = Spec::new(
                "6.1.0-test-amd64",
                &modules,
                Init::BusyboxScript("#!/bin/sh\necho hi\n".into()),
                &out,
            )
            .unwrap();
            spec.modules.clear();
            spec.tools.clear();
            spec.files.clear();
            spec.mtime = 1_700_000_000;
            assert_eq!(spec.compression, Compression::Lz4, "LZ4 is the default");
            spec.compression = compression;
            let report = build(&spec).unwrap();
            (fs::read(&out).unwrap(), report)
        };
        let (plain, plain_report) = build_as("plain.cpio", Compression::None);
        let (lz4_a, report) = build_as("a.img", Compression::Lz4);
        let (lz4_b, _) = build_as("b.img", Compression::Lz4);
        assert!(lz4_a == lz4_b, "two builds differ");
        assert!(lz4::decompress(&lz4_a[..]).unwrap() == plain);
        assert_eq!(report.cpio_bytes, plain_report.cpio_bytes);
        assert_eq!(report.compressed_bytes, lz4_a.len() as u64);
        assert!(
            report.compressed_bytes < report.cpio_bytes,
            "it did not compress"
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn tools_libraries_and_late_modules_are_deferred_and_directories_stay() {
        let mut plan = Plan::default();
        add_layout(&mut plan);
        let m = "usr/lib/modules/v/kernel";
        plan.bytes("init", 0o755, vec![1], Category::Init);
        plan.bytes("usr/sbin/lvm", 0o755, vec![1], Category::Tools);
        plan.link("usr/sbin/vgs", "lvm", Category::Tools);
        plan.bytes("usr/lib/x/libc.so.6", 0o755, vec![1], Category::Libraries);
        plan.bytes(&format!("{m}/xfs.ko"), 0o644, vec![1], Category::Modules);
        plan.bytes(&format!("{m}/ext4.ko"), 0o644, vec![1], Category::Modules);
        plan.bytes(
            "usr/lib/modules/v/modules.dep",
            0o644,
            vec![1],
            Category::Files,
        );
        plan.add_parents().unwrap();
        let dirs = plan
            .members
            .values()
            .filter(|m| m.node == Node::Dir)
            .count();
        let late = BTreeSet::from([format!("{m}/xfs.ko")]);
        let later = plan.split_off(|p, mem| deferred_member(p, mem, &late));
        let moved: Vec<&str> = later.members.keys().map(String::as_str).collect();
        assert_eq!(
            moved,
            [
                "usr/lib/modules/v/kernel/xfs.ko",
                "usr/lib/x/libc.so.6",
                "usr/sbin/lvm",
                "usr/sbin/vgs"
            ]
        );
        for kept in [
            "init",
            "usr/lib/modules/v/kernel/ext4.ko",
            "dev/console",
            "etc/mtab",
        ] {
            assert!(plan.members.contains_key(kept), "{kept}");
        }
        assert_eq!(
            plan.members
                .values()
                .filter(|m| m.node == Node::Dir)
                .count(),
            dirs,
            "every directory stays with the kernel's part"
        );
    }

    #[test]
    fn paths_fold_into_merged_usr() {
        assert_eq!(
            archive_path("/lib/x86_64-linux-gnu/libc.so.6"),
            "usr/lib/x86_64-linux-gnu/libc.so.6"
        );
        assert_eq!(
            archive_path("/usr/lib/x86_64-linux-gnu/libc.so.6"),
            "usr/lib/x86_64-linux-gnu/libc.so.6"
        );
        assert_eq!(
            archive_path("/lib64/ld-linux-x86-64.so.2"),
            "usr/lib64/ld-linux-x86-64.so.2"
        );
        assert_eq!(archive_path("/sbin/e2fsck"), "usr/sbin/e2fsck");
        assert_eq!(archive_path("/bin"), "usr/bin");
        assert_eq!(archive_path("/libexec/x"), "libexec/x");
        assert_eq!(archive_path("/etc/mke2fs.conf"), "etc/mke2fs.conf");
    }

    #[test]
    fn files_list_reads_optional_marks_and_refuses_relative_paths() {
        let list = parse_files_list("# c\n\n/etc/a\n? /etc/b\n").unwrap();
        assert_eq!(
            list,
            [
                ExtraPath {
                    path: "/etc/a".into(),
                    optional: false
                },
                ExtraPath {
                    path: "/etc/b".into(),
                    optional: true
                }
            ]
        );
        assert!(parse_files_list("etc/a\n").is_err());
        assert!(parse_files_list("/etc/../a\n").is_err());
        // The shipped list parses.
        assert!(!parse_files_list(DEFAULT_FILES_LIST).unwrap().is_empty());
    }

    #[test]
    fn source_date_epoch_sets_the_mtime() {
        assert_eq!(mtime_from_env(None).unwrap(), 0);
        assert_eq!(mtime_from_env(Some("1700000000")).unwrap(), 1_700_000_000);
        assert!(mtime_from_env(Some("yesterday")).is_err());
        assert!(mtime_from_env(Some("99999999999")).is_err());
    }

    #[test]
    fn parents_are_added_and_a_file_parent_is_refused() {
        let mut plan = Plan::default();
        add_layout(&mut plan);
        plan.bytes(
            "usr/lib/modules/v/kernel/a.ko",
            0o644,
            vec![1],
            Category::Modules,
        );
        plan.add_parents().unwrap();
        for d in [
            "usr/lib/modules",
            "usr/lib/modules/v",
            "usr/lib/modules/v/kernel",
        ] {
            assert_eq!(plan.members[d].node, Node::Dir, "{d}");
        }
        plan.bytes("lib/x", 0o644, vec![1], Category::Files);
        let err = plan.add_parents().unwrap_err();
        assert!(
            err.to_string().contains("lib/x would be below lib"),
            "{err}"
        );
    }
}
