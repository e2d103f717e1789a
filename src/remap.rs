//! Remapping a root filesystem so it runs from another disk: the pure fstab remap
//! ([`fstab`]), the executor that applies a [`RemapPlan`] to a mounted root through its
//! directory handle ([`apply`]: fstab, GRUB's `grub.cfg` and `/etc/default/grub`,
//! initramfs-tools' resume setting), and vendor hooks ([`run_hooks`]).
//!
//! Owns: the rules of what becomes of each fstab line (docs/layout.md, "Remapping").
//! Does not own: fstab or command-line syntax (`fstab`, `cmdline`), path confinement
//! (`rootfs`), choosing the new root or which filesystems the target has (the expand
//! and restore engines build the plan).

use std::collections::BTreeMap;
use std::fmt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::cmd::Cmd;
use crate::cmdline;
use crate::fstab::{self, Entry, Fstab, Line, Spec};
use crate::rootfs::RootDir;

/// What the fstab of the target must say.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FstabRemap {
    /// The filesystem mounted at `/` on the target.
    pub root: NewRoot,
    #[serde(default)]
    pub swap: SwapPolicy,
    #[serde(default)]
    pub boot: BootPolicy,
    /// Block-device sources as the fstab writes them (`UUID=…`, `/dev/mapper/vg-home`)
    /// and what becomes of each. Sources are compared as mount compares them (see
    /// [`Spec::same_as`]).
    #[serde(default)]
    pub mounts: BTreeMap<String, MountFate>,
    /// The fate of block-device mounts not in `mounts` (except `noauto` ones, which
    /// never mount at boot and are kept).
    #[serde(default)]
    pub missing: MountFate,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewRoot {
    /// The new first field, e.g. `UUID=…` or `LABEL=emergency`.
    pub source: String,
    /// The new filesystem type when it differs from the old root's; its options are then
    /// reset to `defaults` (the old type's options may not apply).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fstype: Option<String>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SwapPolicy {
    /// Comment out every swap line (the swap areas are on the missing disk).
    #[default]
    Off,
    /// Treat swap lines like other mounts.
    Keep,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BootPolicy {
    /// `/boot`'s files were extracted into the root: comment out its line.
    #[default]
    MergeIntoRoot,
    /// Treat `/boot` like other mounts.
    Keep,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MountFate {
    /// The filesystem exists on the target under the same name.
    Keep,
    /// It exists under another name: the new first field.
    Map(String),
    /// Not on the target: comment the line out; the mount point stays an empty directory.
    #[default]
    Drop,
    /// Its files were extracted into the root: comment the line out.
    MergeIntoRoot,
}

/// What was done to one line, for logs and the console.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemapNote {
    /// 1-based line number in the input; 0 for a note about the whole file.
    pub line: usize,
    /// The mount point the line is about (`none` for swap).
    pub target: String,
    pub action: Action,
    pub detail: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    RootChanged,
    Mapped,
    Dropped,
    Merged,
    SwapOff,
    /// Kept, but worth a look.
    Warning,
}

impl fmt::Display for RemapNote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "fstab line {} ({}): {}",
            self.line, self.target, self.detail
        )
    }
}

/// Remap an fstab for the target. Pure: the result, and a note for every line changed.
///
/// * The entry for `/` gets the new source (and type, see [`NewRoot`]).
/// * Swap lines are commented out under [`SwapPolicy::Off`].
/// * `/boot` is commented out under [`BootPolicy::MergeIntoRoot`].
/// * Other block-device mounts (tags, `/dev/…` paths) take their fate from `mounts`,
///   else `missing`; `noauto` ones not in `mounts` are kept.
/// * Everything else (tmpfs, proc, network, bind mounts, comments) is kept as is; a
///   bind mount whose source lies under a dropped mount point gets a warning.
///
/// A commented-out line is preceded by `# understudy: WHY` and keeps its text after
/// `#`, so a person can see and undo it. Remapping a remapped fstab changes nothing.
pub fn fstab(input: &Fstab, plan: &FstabRemap) -> (Fstab, Vec<RemapNote>) {
    let mut notes = Vec::new();
    let mut lines = Vec::with_capacity(input.lines.len());
    let mut dropped_targets = Vec::new();
    let mut saw_root = false;
    for (i, line) in input.lines.iter().enumerate() {
        let n = i + 1;
        let Line::Entry(e) = line else {
            lines.push(line.clone());
            continue;
        };
        let target = e.target();
        let note = |action, detail: String| RemapNote {
            line: n,
            target: target.clone(),
            action,
            detail,
        };
        let comment = |lines: &mut Vec<Line>, why: &str| {
            lines.push(Line::Other(format!("# understudy: {why}")));
            lines.push(Line::Other(format!("#{}", e.raw())));
        };
        // What goes into a comment line uses the fields as written (escaped), so a
        // decoded newline cannot start a line of its own.
        let (spec_raw, target_raw) = (
            e.field_raw(fstab::SPEC).unwrap_or(""),
            e.field_raw(fstab::FILE).unwrap_or(""),
        );
        let is_swap = e.fstype() == "swap";
        let source = e.source();
        if !is_swap && fstab::clean_path(&target) == "/" {
            saw_root = true;
            let (new, detail) = remap_root(e, &plan.root);
            if let Some(detail) = detail {
                notes.push(note(Action::RootChanged, detail));
            }
            lines.push(Line::Entry(new));
        } else if is_swap && plan.swap == SwapPolicy::Off {
            let why = format!("swap on {spec_raw} turned off: it is not on this disk");
            comment(&mut lines, &why);
            notes.push(note(Action::SwapOff, why));
        } else if !is_swap
            && fstab::clean_path(&target) == "/boot"
            && plan.boot == BootPolicy::MergeIntoRoot
        {
            let why = "/boot merged into /: its files are in the root filesystem".to_string();
            comment(&mut lines, &why);
            dropped_targets.push((target.clone(), true));
            notes.push(note(Action::Merged, why));
        } else if source.is_block_device() && !is_bind(e) {
            let listed = plan
                .mounts
                .iter()
                .find(|(k, _)| Spec::parse(k).same_as(&source))
                .map(|(_, v)| v);
            // A source some mount was mapped to is on the target: remapping twice
            // must not drop what the first pass mapped.
            let mapped_here = plan
                .mounts
                .values()
                .any(|f| matches!(f, MountFate::Map(to) if Spec::parse(to).same_as(&source)));
            let fate = match listed {
                Some(f) => f,
                None if mapped_here => &MountFate::Keep,
                None if e.has_option("noauto") => &MountFate::Keep,
                None => &plan.missing,
            };
            match fate {
                MountFate::Keep => lines.push(line.clone()),
                MountFate::Map(to) => {
                    let mut new = e.clone();
                    if e.spec() != *to {
                        new.set_field(fstab::SPEC, to);
                        notes.push(note(Action::Mapped, format!("{} mapped to {to}", e.spec())));
                    }
                    lines.push(Line::Entry(new));
                }
                MountFate::Drop => {
                    let why = format!("{target_raw} dropped: {spec_raw} is not on this disk");
                    comment(&mut lines, &why);
                    dropped_targets.push((target.clone(), false));
                    notes.push(note(Action::Dropped, why));
                }
                MountFate::MergeIntoRoot => {
                    let why =
                        format!("{target_raw} merged into /: its files are in the root filesystem");
                    comment(&mut lines, &why);
                    dropped_targets.push((target.clone(), true));
                    notes.push(note(Action::Merged, why));
                }
            }
        } else {
            if is_bind(e) {
                let src = fstab::clean_path(&e.spec());
                let under = dropped_targets.iter().find(|(t, merged)| {
                    let t = fstab::clean_path(t);
                    !merged && (src == t || src.starts_with(&format!("{t}/")))
                });
                if let Some((t, _)) = under {
                    notes.push(note(
                        Action::Warning,
                        format!("bind mount of {src} kept, but {t} was dropped: it binds an empty directory"),
                    ));
                }
            }
            lines.push(line.clone());
        }
    }
    if !saw_root {
        notes.push(RemapNote {
            line: 0,
            target: "/".into(),
            action: Action::Warning,
            detail: "no entry for /: the kernel command line's root= decides".into(),
        });
    }
    (
        Fstab {
            lines,
            final_newline: input.final_newline,
        },
        notes,
    )
}

fn is_bind(e: &Entry) -> bool {
    e.has_option("bind") || e.has_option("rbind")
}

/// The root entry with its new source and type, and a note if anything changed.
fn remap_root(e: &Entry, root: &NewRoot) -> (Entry, Option<String>) {
    let mut new = e.clone();
    let mut changes = Vec::new();
    if !Spec::parse(&root.source).same_as(&e.source()) {
        new.set_field(fstab::SPEC, &root.source);
        changes.push(format!("source {} -> {}", e.spec(), root.source));
    }
    if let Some(t) = &root.fstype {
        if *t != e.fstype() {
            new.set_field(fstab::VFSTYPE, t);
            changes.push(format!("type {} -> {t}", e.fstype()));
            if e.options() != "defaults" {
                new.set_field(fstab::MNTOPS, "defaults");
                changes.push(format!("options {} -> defaults", e.options()));
            }
            // fsck order: 1 for a root that has an fsck (ext*), 0 for one that
            // does not (xfs, btrfs); findmnt --verify checks exactly this.
            let passno = if t.starts_with("ext") { 1 } else { 0 };
            if e.passno() != passno {
                new.set_field(fstab::PASSNO, &passno.to_string());
                changes.push(format!("fsck pass {} -> {passno}", e.passno()));
            }
        }
    }
    let detail = (!changes.is_empty()).then(|| format!("root {}", changes.join(", ")));
    (new, detail)
}

/// Everything [`apply`] changes in a target root.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemapPlan {
    pub fstab: FstabRemap,
    /// The new `root=` for kernel command lines (only replaced where one is present).
    pub kernel_root: Option<String>,
}

/// What [`apply`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemapReport {
    /// Files rewritten, relative to the root.
    pub changed: Vec<String>,
    pub notes: Vec<RemapNote>,
}

/// The files [`apply`] edits, relative to the target root.
pub const FSTAB: &str = "etc/fstab";
pub const GRUB_CFG: &str = "boot/grub/grub.cfg";
pub const DEFAULT_GRUB: &str = "etc/default/grub";
pub const INITRAMFS_TOOLS: &str = "etc/initramfs-tools";
pub const RESUME: &str = "etc/initramfs-tools/conf.d/resume";

/// Apply `plan` to the root behind `root`: `etc/fstab` (see [`fstab`]); every `linux`
/// line of `boot/grub/grub.cfg` and `GRUB_CMDLINE_LINUX*` in `etc/default/grub`
/// ([`cmdline::remap`]); and `RESUME=none` in initramfs-tools' `conf.d/resume` when
/// the root has initramfs-tools. Files that do not exist are skipped (except the
/// resume setting); files whose content would not change are not rewritten. Every
/// write is atomic and confined to the root.
pub fn apply(root: &RootDir, plan: &RemapPlan) -> Result<RemapReport> {
    let mut report = RemapReport::default();
    let text = |rel: &str, bytes: Vec<u8>| {
        String::from_utf8(bytes)
            .with_context(|| format!("{}/{rel} is not UTF-8 text", root.path().display()))
    };
    let write =
        |rel: &str, old: Option<&str>, new: String, report: &mut RemapReport| -> Result<()> {
            if old != Some(new.as_str()) {
                root.write_atomic(rel, new.as_bytes())?;
                report.changed.push(rel.to_string());
            }
            Ok(())
        };

    if let Some(bytes) = root.read_optional(FSTAB)? {
        let old = text(FSTAB, bytes)?;
        let (new, notes) = fstab(&Fstab::parse(&old), &plan.fstab);
        report.notes.extend(notes);
        write(FSTAB, Some(&old), new.render(), &mut report)?;
    }
    let kernel_root = plan.kernel_root.as_deref();
    if let Some(bytes) = root.read_optional(GRUB_CFG)? {
        let old = text(GRUB_CFG, bytes)?;
        let (new, _) = cmdline::edit_grub_cfg(&old, None, |c| cmdline::remap(c, kernel_root));
        write(GRUB_CFG, Some(&old), new, &mut report)?;
    }
    if let Some(bytes) = root.read_optional(DEFAULT_GRUB)? {
        let old = text(DEFAULT_GRUB, bytes)?;
        write(
            DEFAULT_GRUB,
            Some(&old),
            cmdline::remap_default_grub(&old, kernel_root),
            &mut report,
        )?;
    }
    if root.exists(INITRAMFS_TOOLS)? {
        let old = root
            .read_optional(RESUME)?
            .map(|b| text(RESUME, b))
            .transpose()?;
        let new = cmdline::resume_none(old.as_deref());
        if old.is_none() {
            root.create_dir_all("etc/initramfs-tools/conf.d", 0o755)?;
        }
        write(RESUME, old.as_deref(), new, &mut report)?;
    }
    Ok(report)
}

/// When a hook runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// After the newest image was expanded into the emergency partition.
    Expand,
    /// After an image was restored onto a primary disk.
    Restore,
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Phase::Expand => "expand",
            Phase::Restore => "restore",
        })
    }
}

/// What a hook is told, as environment variables (docs/layout.md, "Vendor hooks").
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HookEnv {
    /// `UNDERSTUDY_ROOT`: the mounted target root, also the hook's working directory.
    pub root: PathBuf,
    /// `UNDERSTUDY_PHASE`: `expand` or `restore`.
    pub phase: Phase,
    /// `UNDERSTUDY_IMAGE_ID`: the image the root was made from.
    pub image_id: String,
    /// `UNDERSTUDY_ROOT_UUID`: the UUID of the target root filesystem.
    pub root_uuid: String,
}

/// One hook that ran, with what it printed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HookRun {
    pub path: PathBuf,
    pub stdout: String,
    pub stderr: String,
}

/// Run every executable regular file in `dir` (symlinks followed; names starting with
/// `.` skipped), in byte order of their names, with the [`HookEnv`] variables. Stops at
/// the first hook that fails, naming it; a missing `dir` runs nothing.
pub fn run_hooks(dir: &Path, env: &HookEnv) -> Result<Vec<HookRun>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(e).with_context(|| format!("listing hook directory {}", dir.display()));
        }
    };
    let mut hooks = Vec::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("listing hook directory {}", dir.display()))?;
        let name = entry.file_name();
        if name.as_encoded_bytes().starts_with(b".") {
            continue;
        }
        let path = entry.path();
        let meta = std::fs::metadata(&path)
            .with_context(|| format!("inspecting hook {}", path.display()))?;
        if meta.is_file() && meta.permissions().mode() & 0o111 != 0 {
            hooks.push((name, path));
        }
    }
    hooks.sort_by(|a, b| a.0.as_encoded_bytes().cmp(b.0.as_encoded_bytes()));
    let mut runs = Vec::with_capacity(hooks.len());
    for (_, path) in hooks {
        let out = Cmd::new(&path)
            .env("UNDERSTUDY_ROOT", &env.root)
            .env("UNDERSTUDY_PHASE", env.phase.to_string())
            .env("UNDERSTUDY_IMAGE_ID", &env.image_id)
            .env("UNDERSTUDY_ROOT_UUID", &env.root_uuid)
            .dir(&env.root)
            .output()
            .with_context(|| format!("vendor hook {} failed", path.display()))?;
        runs.push(HookRun {
            path,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    Ok(runs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> FstabRemap {
        FstabRemap {
            root: NewRoot {
                source: "UUID=e0e0e0e0-0000-4000-8000-000000000004".into(),
                fstype: None,
            },
            swap: SwapPolicy::Off,
            boot: BootPolicy::MergeIntoRoot,
            mounts: BTreeMap::from([
                ("LABEL=images".into(), MountFate::Keep),
                ("/dev/mapper/vg-home".into(), MountFate::MergeIntoRoot),
                (
                    "UUID=AAAA-BBBB".into(),
                    MountFate::Map("UUID=CCCC-DDDD".into()),
                ),
            ]),
            missing: MountFate::Drop,
        }
    }

    const INPUT: &str = "\
# <file system> <mount point> <type> <options> <dump> <pass>
/dev/mapper/vg-root\t/\text4\terrors=remount-ro 0 1
UUID=1111 /boot ext2 defaults 0 2
UUID=aaaa-bbbb /boot/efi vfat umask=0077 0 1
/dev/mapper/vg-home /home ext4 defaults 0 2
/dev/sdb1 /srv/data xfs defaults 0 2
/srv/data/www /var/www none bind 0 0
LABEL=images /images ext4 defaults 0 2
/dev/mapper/vg-swap none swap sw 0 0
/dev/sr0 /media/cdrom0 udf,iso9660 user,noauto 0 0
tmpfs /tmp tmpfs size=512M 0 0
";

    #[test]
    fn every_rule_applies_once_and_notes_say_why() {
        let input = Fstab::parse(INPUT);
        let (out, notes) = fstab(&input, &plan());
        let expected = "\
# <file system> <mount point> <type> <options> <dump> <pass>
UUID=e0e0e0e0-0000-4000-8000-000000000004\t/\text4\terrors=remount-ro 0 1
# understudy: /boot merged into /: its files are in the root filesystem
#UUID=1111 /boot ext2 defaults 0 2
UUID=CCCC-DDDD /boot/efi vfat umask=0077 0 1
# understudy: /home merged into /: its files are in the root filesystem
#/dev/mapper/vg-home /home ext4 defaults 0 2
# understudy: /srv/data dropped: /dev/sdb1 is not on this disk
#/dev/sdb1 /srv/data xfs defaults 0 2
/srv/data/www /var/www none bind 0 0
LABEL=images /images ext4 defaults 0 2
# understudy: swap on /dev/mapper/vg-swap turned off: it is not on this disk
#/dev/mapper/vg-swap none swap sw 0 0
/dev/sr0 /media/cdrom0 udf,iso9660 user,noauto 0 0
tmpfs /tmp tmpfs size=512M 0 0
";
        assert_eq!(out.render(), expected);
        let actions: Vec<_> = notes.iter().map(|n| (n.line, n.action)).collect();
        assert_eq!(
            actions,
            vec![
                (2, Action::RootChanged),
                (3, Action::Merged),
                (4, Action::Mapped),
                (5, Action::Merged),
                (6, Action::Dropped),
                (7, Action::Warning),
                (9, Action::SwapOff),
            ]
        );
        // Remapping again changes nothing and says nothing but the same root.
        let (again, notes2) = fstab(&out, &plan());
        assert_eq!(again, out);
        assert!(notes2.is_empty(), "{notes2:?}");
    }

    #[test]
    fn mapped_sources_and_a_new_root_type() {
        let input = Fstab::parse(
            "UUID=r / xfs defaults,inode64 0 0\nUUID=aaaa-bbbb /boot/efi vfat umask=0077 0 1\n",
        );
        let mut p = plan();
        p.root.fstype = Some("ext4".into());
        let (out, notes) = fstab(&input, &p);
        assert_eq!(
            out.render(),
            "UUID=e0e0e0e0-0000-4000-8000-000000000004 / ext4 defaults 0 1\nUUID=CCCC-DDDD /boot/efi vfat umask=0077 0 1\n"
        );
        assert_eq!(
            notes[0].detail,
            "root source UUID=r -> UUID=e0e0e0e0-0000-4000-8000-000000000004, type xfs -> ext4, \
             options defaults,inode64 -> defaults, fsck pass 0 -> 1"
        );
        assert_eq!(notes[1].action, Action::Mapped);
    }

    #[test]
    fn a_dropped_line_with_an_escaped_newline_stays_one_comment() {
        let input = Fstab::parse("/dev/sdb1 /mnt/a\\012b ext4 defaults 0 0\n");
        let (out, _) = fstab(&input, &plan());
        assert_eq!(
            out.render(),
            "# understudy: /mnt/a\\012b dropped: /dev/sdb1 is not on this disk\n#/dev/sdb1 /mnt/a\\012b ext4 defaults 0 0\n"
        );
        assert_eq!(Fstab::parse(&out.render()).entries().count(), 0);
    }

    #[test]
    fn no_root_entry_is_a_warning_not_an_error() {
        let (out, notes) = fstab(&Fstab::parse("tmpfs /tmp tmpfs defaults 0 0"), &plan());
        assert_eq!(out.render(), "tmpfs /tmp tmpfs defaults 0 0");
        assert_eq!(notes[0].action, Action::Warning);
    }

    #[test]
    fn the_plan_reads_from_json() {
        let p: FstabRemap = serde_json::from_str(
            r#"{"root": {"source": "LABEL=emergency"}, "mounts": {"UUID=1": "keep", "UUID=2": {"map": "UUID=3"}}, "missing": "merge_into_root"}"#,
        )
        .unwrap();
        assert_eq!(p.swap, SwapPolicy::Off);
        assert_eq!(p.boot, BootPolicy::MergeIntoRoot);
        assert_eq!(p.mounts["UUID=2"], MountFate::Map("UUID=3".into()));
        assert_eq!(p.missing, MountFate::MergeIntoRoot);
    }

    struct Scratch(PathBuf);

    impl Scratch {
        fn new(name: &str) -> Scratch {
            let p = std::env::temp_dir()
                .join(format!("understudy-remap-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).unwrap();
            Scratch(p)
        }

        fn write(&self, rel: &str, text: &str, mode: u32) {
            let p = self.0.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, text).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        }

        fn read(&self, rel: &str) -> String {
            std::fs::read_to_string(self.0.join(rel)).unwrap()
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn apply_edits_a_debian_root_and_only_what_needs_it() {
        let s = Scratch::new("apply");
        s.write(FSTAB, INPUT, 0o644);
        s.write(
            GRUB_CFG,
            "menuentry 'Debian' {\n\tlinux\t/vmlinuz root=/dev/mapper/vg-root ro quiet resume=/dev/mapper/vg-swap\n}\n",
            0o444,
        );
        s.write(
            DEFAULT_GRUB,
            "GRUB_CMDLINE_LINUX_DEFAULT=\"quiet\"\nGRUB_CMDLINE_LINUX=\"\"\n",
            0o644,
        );
        s.write(RESUME, "RESUME=/dev/mapper/vg-swap\n", 0o644);
        let root = RootDir::open(&s.0).unwrap();
        let p = RemapPlan {
            fstab: plan(),
            kernel_root: Some("UUID=e0e0e0e0-0000-4000-8000-000000000004".into()),
        };
        let report = apply(&root, &p).unwrap();
        assert_eq!(report.changed, vec![FSTAB, GRUB_CFG, DEFAULT_GRUB, RESUME]);
        assert!(s.read(FSTAB).starts_with("# <file system>"));
        assert!(
            s.read(FSTAB)
                .contains("#/dev/mapper/vg-swap none swap sw 0 0\n")
        );
        assert_eq!(
            s.read(GRUB_CFG),
            "menuentry 'Debian' {\n\tlinux\t/vmlinuz root=UUID=e0e0e0e0-0000-4000-8000-000000000004 ro quiet noresume\n}\n"
        );
        assert_eq!(
            s.read(DEFAULT_GRUB),
            "GRUB_CMDLINE_LINUX_DEFAULT=\"quiet\"\nGRUB_CMDLINE_LINUX=\"noresume\"\n"
        );
        assert_eq!(s.read(RESUME), "RESUME=none\n");
        let mode = std::fs::metadata(s.0.join(GRUB_CFG))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o7777, 0o444);
        // A second run finds nothing to do.
        let again = apply(&root, &p).unwrap();
        assert!(again.changed.is_empty(), "{:?}", again.changed);
    }

    #[test]
    fn apply_on_a_root_without_grub_or_initramfs_tools_edits_only_fstab() {
        let s = Scratch::new("bare");
        s.write(FSTAB, "/dev/sda1 / ext4 defaults 0 1\n", 0o644);
        let root = RootDir::open(&s.0).unwrap();
        let p = RemapPlan {
            fstab: plan(),
            kernel_root: None,
        };
        let report = apply(&root, &p).unwrap();
        assert_eq!(report.changed, vec![FSTAB]);
        assert!(!s.0.join("etc/initramfs-tools").exists());
        // Debian without a resume file: one is created.
        std::fs::create_dir_all(s.0.join(INITRAMFS_TOOLS)).unwrap();
        let report = apply(&root, &p).unwrap();
        assert_eq!(report.changed, vec![RESUME]);
        assert_eq!(s.read(RESUME), "RESUME=none\n");
    }

    #[test]
    fn hooks_run_in_order_with_their_environment_and_a_failure_names_the_hook() {
        let s = Scratch::new("hooks");
        let target = s.0.join("target");
        std::fs::create_dir_all(&target).unwrap();
        let log = s.0.join("log");
        let script = format!(
            "#!/bin/sh\necho \"$(basename \"$0\") $UNDERSTUDY_PHASE $UNDERSTUDY_IMAGE_ID $UNDERSTUDY_ROOT_UUID $UNDERSTUDY_ROOT $(pwd)\" >> {}\necho out-$(basename \"$0\")\n",
            log.display()
        );
        s.write("hooks/20-licence", &script, 0o755);
        s.write("hooks/10-first", &script, 0o755);
        s.write("hooks/15-not-executable", &script, 0o644);
        s.write("hooks/.hidden", &script, 0o755);
        std::fs::create_dir_all(s.0.join("hooks/30-a-directory")).unwrap();
        let env = HookEnv {
            root: target.clone(),
            phase: Phase::Expand,
            image_id: "2024-05-01T0300Z".into(),
            root_uuid: "e0e0".into(),
        };
        let runs = run_hooks(&s.0.join("hooks"), &env).unwrap();
        assert_eq!(runs.len(), 2);
        assert_eq!(runs[0].stdout, "out-10-first\n");
        let t = target.display();
        assert_eq!(
            s.read("log"),
            format!(
                "10-first expand 2024-05-01T0300Z e0e0 {t} {t}\n20-licence expand 2024-05-01T0300Z e0e0 {t} {t}\n"
            )
        );

        s.write(
            "hooks/15-fails",
            "#!/bin/sh\necho licence server unreachable >&2\nexit 7\n",
            0o755,
        );
        let err = run_hooks(
            &s.0.join("hooks"),
            &HookEnv {
                phase: Phase::Restore,
                ..env.clone()
            },
        )
        .unwrap_err();
        let msg = format!("{err:#}");
        assert!(
            msg.contains("vendor hook") && msg.contains("15-fails"),
            "{msg}"
        );
        assert!(msg.contains("licence server unreachable"), "{msg}");
        // The hook after the failing one did not run.
        assert_eq!(
            s.read("log")
                .lines()
                .filter(|l| l.contains("restore"))
                .count(),
            1
        );
        assert!(
            run_hooks(&s.0.join("no-such-dir"), &env)
                .unwrap()
                .is_empty()
        );
    }
}
