//! The command line: argument definitions, dispatch to one library call per
//! subcommand, human and `--json` output, and exit codes.
//!
//! Exit codes: 0 success; 1 error (nothing or not everything done, see the message);
//! 2 done, but some entries were skipped or lost metadata (listed on stderr);
//! 3 an archive failed verification (damaged, or not matching its summary).

use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};

use crate::archive::{self, CaptureOptions, ExtractOptions, Summary};
use crate::initramfs;
use crate::progress::Progress;

#[derive(Debug, Parser)]
#[command(
    name = "understudy",
    version,
    about = "Point-in-time images, emergency boot and restore for two-disk appliances",
    long_about = "understudy keeps a two-disk appliance running when its primary disk dies: it \
                  images the primary onto the secondary disk, keeps a bootable emergency copy \
                  there, and restores a replacement primary from a recovery console."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create, check, list and extract image archives (tar inside lzop)
    #[command(subcommand)]
    Archive(ArchiveCommand),
    /// Build the recovery initramfs (our binary as /init, modules, tools)
    #[command(subcommand)]
    Initramfs(InitramfsCommand),
    /// Make images from directory trees, list and verify images
    #[command(subcommand)]
    Image(ImageCommand),
    /// Capture a disk's layout, or plan how a captured layout fits onto a target disk
    #[command(subcommand)]
    Layout(LayoutCommand),
    /// Lay out the secondary disk: GRUB, recovery OS, emergency, images, COW PV (docs/provision.md)
    Provision(ProvisionArgs),
    /// Restore an image onto a replacement primary disk (erases it)
    #[command(after_help = "\
Verifies every archive first, refuses the secondary and busy or too small disks, then
partitions, makes LVM and filesystems with the recorded names and UUIDs, extracts,
reinstalls GRUB from the restored system, copies back emergency-mode changes, and makes
the disk bootable last. Without --yes it shows what is erased and asks for the disk's
serial number. See docs/restore.md.

Example:
  understudy restore /images/20261125T031500Z-appliance --target /dev/sda")]
    Restore {
        /// The image directory (holding manifest.json)
        image: PathBuf,
        /// The disk to restore onto
        #[arg(long, value_name = "DISK")]
        target: PathBuf,
        /// Do not ask for the disk's serial number
        #[arg(long)]
        yes: bool,
        /// Do not copy back what changed on the emergency copy
        #[arg(long)]
        no_copy_back: bool,
        /// `human` (stderr) or `json` (one event per line on stdout; needs --yes)
        #[arg(long, value_name = "FORMAT", default_value = "human", value_parser = ["human", "json"])]
        progress: String,
        #[command(flatten)]
        threads: Threads,
    },
    /// Copy what changed on the emergency copy since its expansion onto the primary disk,
    /// or onto a mounted root
    #[command(
        override_usage = "understudy copy-back --disk DISK --image IMAGE [--yes] [--progress FORMAT]\n       \
                          understudy copy-back --emergency DIR --target DIR [--index FILE] [--dry-run] [--json]",
        after_help = "\
Two forms.

--disk DISK --image IMAGE: onto a primary disk that came back healthy after the
appliance ran from the emergency copy. Refuses the secondary and a disk in use, and
an emergency copy without copy-back index; activates the LVs of IMAGE's layout if they
are not active, finds the layout's filesystems (/, /boot, ...) on DISK by their UUIDs
(refusing if one is missing), mounts them and the emergency filesystem (US-EMERGENCY,
read-only), copies back, syncs, unmounts and deactivates what it activated. IMAGE is
only read for its layout (the newest image is right). Without --yes it shows what
changes on which disk (model, serial, size) and asks for the disk's serial number.
--progress json prints one event per line on stdout, as restore does.

--emergency DIR --target DIR: both trees already mounted. Compares the emergency
tree with its copy-back index (written at expansion; default
EMERGENCY/var/lib/understudy/copy-back-index.jsonl).

Either way, copy-back removes what was deleted and writes what is new or changed,
never following a symlink out of the target. Paths expansion remapped (fstab, GRUB
files) are left alone; where the target differs from the indexed state, the emergency
copy wins. See docs/copy-back.md.

Examples:
  understudy copy-back --disk /dev/sda --image /images/20261125T031500Z-appliance
  understudy copy-back --emergency /mnt/emergency --target /mnt/root --dry-run"
    )]
    CopyBack {
        /// The primary disk to copy back onto (a whole disk)
        #[arg(
            long,
            value_name = "DISK",
            requires = "image",
            conflicts_with_all = ["emergency", "target", "index", "dry_run", "json"]
        )]
        disk: Option<PathBuf>,
        /// With --disk: the image directory whose layout names the disk's filesystems
        #[arg(long, value_name = "IMAGE", requires = "disk")]
        image: Option<PathBuf>,
        /// With --disk: do not ask for the disk's serial number
        #[arg(long, requires = "disk")]
        yes: bool,
        /// With --disk: `human` (stderr) or `json` (one event per line on stdout; needs
        /// --yes) [default: human]
        #[arg(long, value_name = "FORMAT", value_parser = ["human", "json"], requires = "disk")]
        progress: Option<String>,
        /// The mounted emergency filesystem
        #[arg(
            long,
            value_name = "DIR",
            required_unless_present = "disk",
            requires = "target"
        )]
        emergency: Option<PathBuf>,
        /// The mounted restored root filesystem
        #[arg(
            long,
            value_name = "DIR",
            required_unless_present = "disk",
            requires = "emergency"
        )]
        target: Option<PathBuf>,
        /// The copy-back index [default: inside the emergency tree]
        #[arg(long, value_name = "FILE")]
        index: Option<PathBuf>,
        /// Show the plan, change nothing
        #[arg(long)]
        dry_run: bool,
        /// Print the plan and report as JSON
        #[arg(long)]
        json: bool,
    },
    /// List disks, partitions, filesystems, LVM, mounts and swap, and why a disk cannot be read
    Disks {
        /// Print the inventory as JSON
        #[arg(long)]
        json: bool,
    },
    /// The recovery console on this terminal (what PID 1 runs; docs/console.md)
    Console {
        /// No colours (also TERM=dumb, or understudy.color=0 on the kernel command line)
        #[arg(long)]
        no_color: bool,
        /// Automatic mode (also understudy.mode=auto on the kernel command line)
        #[arg(long)]
        auto: bool,
        /// Read images from this directory instead of the images partition
        #[arg(long, value_name = "DIR")]
        images: Option<PathBuf>,
        /// Start-up notes to show, one a line (PID 1 passes its own)
        #[arg(long, value_name = "FILE")]
        notes: Option<PathBuf>,
        /// The disk inventory PID 1 has just taken (JSON that PID 1 writes), used for
        /// the first screen when /sys/block still lists the devices it was taken with
        #[arg(long, value_name = "FILE")]
        inventory: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum ImageCommand {
    /// Make an image from directory trees and a layout description
    #[command(after_help = "\
LAYOUT.json describes the disk: partitions with sizes and which grows, LVM VGs and LVs,
filesystems with mount points, swap (docs/image-format.md). Each --tree fills the
filesystem mounted at MOUNTPOINT; a filesystem without one takes the matching directory
of the tree it is mounted in, or is empty. The image is written as OUT_DIR/ID.partial,
then renamed to OUT_DIR/ID.

Example:
  understudy image create --layout layout.json --tree /=rootfs --tree /boot=rootfs/boot images/")]
    Create {
        /// The layout description
        #[arg(long, value_name = "LAYOUT.json")]
        layout: PathBuf,
        /// MOUNTPOINT=DIR: the tree that fills a filesystem (repeatable)
        #[arg(long, value_name = "MOUNTPOINT=DIR", value_parser = crate::image::create::parse_tree)]
        tree: Vec<(String, PathBuf)>,
        /// The image's name [default: UTC time and host, 20261125T031500Z-appliance]
        #[arg(long)]
        id: Option<String>,
        /// The directory to make the image directory in
        out_dir: PathBuf,
        #[command(flatten)]
        threads: Threads,
        /// Show a progress bar on a terminal
        #[arg(long)]
        progress: bool,
    },
    /// List the images in a directory, newest first, with unreadable ones and why
    List {
        dir: PathBuf,
        /// Print the list as JSON
        #[arg(long)]
        json: bool,
    },
    /// Check every archive of an image against its manifest (length and SHA-256)
    Verify {
        /// The image's directory
        image: PathBuf,
        #[command(flatten)]
        threads: Threads,
        /// Show a progress bar on a terminal
        #[arg(long)]
        progress: bool,
    },
}

#[derive(Debug, Args)]
#[command(after_help = "\
Refuses the disk the system booted from, a disk with mounted, swap or held partitions,
and one too small, saying why. Without --yes it shows what will be erased and wants the
secondary's serial number typed. Run again on a provisioned disk, it reinstalls GRUB,
the recovery system and the configuration and keeps the images.

Example:
  understudy provision --secondary /dev/sdb --cow-size 8G --dry-run")]
struct ProvisionArgs {
    /// The disk to lay out (`/dev/sdb`, or a kernel name)
    #[arg(long, value_name = "DISK")]
    secondary: String,
    /// The primary disk [default: the disk holding the running root]
    #[arg(long, value_name = "DISK")]
    primary: Option<String>,
    /// The volume group the COW PV joins [default: the root LV's]
    #[arg(long, value_name = "VG")]
    root_vg: Option<String>,
    /// Size of the snapshot COW PV; K, M, G, T suffixes [default: 10% of the disk]
    #[arg(long, value_name = "BYTES", value_parser = crate::layout::parse_size)]
    cow_size: Option<crate::layout::Bytes>,
    /// Do not ask for the serial number
    #[arg(long)]
    yes: bool,
    /// Print the plan and change nothing
    #[arg(long)]
    dry_run: bool,
    /// Print the plan (or the refusal) as JSON
    #[arg(long)]
    json: bool,
    /// Recovery kernel [default: /boot/vmlinuz-$(uname -r)]
    #[arg(long, value_name = "FILE")]
    kernel: Option<PathBuf>,
    /// Kernel release of the recovery initramfs [default: uname -r]
    #[arg(long, value_name = "VERSION")]
    kernel_version: Option<String>,
    /// Module directory for the initramfs [default: /lib/modules/VERSION]
    #[arg(long, value_name = "DIR")]
    modules: Option<PathBuf>,
    /// Install this recovery initramfs instead of building one
    #[arg(long, value_name = "FILE")]
    initrd: Option<PathBuf>,
}

impl ProvisionArgs {
    fn options(self) -> crate::provision::Options {
        crate::provision::Options {
            request: crate::provision::Request {
                secondary: self.secondary,
                primary: self.primary,
                root_vg: self.root_vg,
                cow: self.cow_size,
            },
            yes: self.yes,
            dry_run: self.dry_run,
            json: self.json,
            kernel: self.kernel,
            kernel_version: self.kernel_version,
            modules: self.modules,
            initrd: self.initrd,
            system: None,
        }
    }
}

#[derive(Debug, Subcommand)]
enum LayoutCommand {
    /// Capture a disk's layout: table, partitions, filesystems, LVM, swap, used bytes
    #[command(after_help = "\
Reads the disk inventory, /etc/fstab and statvfs of the mounted filesystems. The JSON form
is the layout document of docs/layout.md (schema 1), as `layout plan` reads it.

Example:
  understudy layout capture /dev/vda --json > layout.json")]
    Capture {
        /// The disk (`/dev/vda`, or a /dev/disk/by-id link)
        disk: PathBuf,
        /// Print the layout document as JSON
        #[arg(long)]
        json: bool,
    },
    /// Fit a layout onto a disk of another size: print the partition plan, or why not
    #[command(after_help = "\
LAYOUT is a layout document (JSON, schema 1, as in an image manifest; see docs/layout.md).
Same size and sector size: the same table. Larger: the growable partition and LV take the
new space. Smaller: filesystems shrink down to their used bytes plus 10% and 64 MiB; if
that does not fit, the command fails and says how large the disk must be.

Example:
  understudy layout plan layout.json --size 500G --sector 4096")]
    Plan {
        /// Layout document to plan from
        layout: PathBuf,
        /// Target disk size in bytes; K, M, G and T suffixes are powers of 1024
        #[arg(long, value_name = "BYTES", value_parser = crate::layout::parse_size)]
        size: crate::layout::Bytes,
        /// Target logical sector size, 512 or 4096 [default: the layout's]
        #[arg(long, value_name = "BYTES")]
        sector: Option<u32>,
        /// Print the plan (or the refusal) as JSON
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum InitramfsCommand {
    /// Build a compressed initramfs for a kernel from this system's tools
    #[command(after_help = "\
Carries the storage, filesystem and device-mapper modules with their dependencies, the
real mke2fs/e2fsck/tune2fs/lvm with their libraries, busybox, and prints what took the
space. SOURCE_DATE_EPOCH sets every member's mtime (default 0): the same inputs give
the same bytes.

Example:
  understudy initramfs build --kernel-version $(uname -r) --modules /lib/modules \\
      --init /usr/sbin/understudy --output /boot/recovery/initrd.img")]
    Build {
        /// Kernel release the image is for (`uname -r`)
        #[arg(long, value_name = "VERSION")]
        kernel_version: String,
        /// The kernel's module directory: /lib/modules or /lib/modules/VERSION
        #[arg(long, value_name = "DIR")]
        modules: PathBuf,
        /// The static program to install as /init
        #[arg(long, value_name = "BIN")]
        init: PathBuf,
        /// Image to write
        #[arg(long, value_name = "FILE")]
        output: PathBuf,
        /// Drop /init's debug sections (needs objcopy); function names stay
        #[arg(long)]
        strip_init: bool,
        /// Print the report as JSON
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
struct Threads {
    /// Worker threads for compression or decompression [default: all cores]
    #[arg(long, value_name = "N")]
    threads: Option<usize>,
}

impl Threads {
    fn get(&self) -> usize {
        self.threads.unwrap_or_else(archive::default_threads).max(1)
    }
}

#[derive(Debug, Subcommand)]
enum ArchiveCommand {
    /// Capture a directory tree into an archive
    #[command(after_help = "\
The archive is a tar stream inside an lzop container: `lzop -dc A | tar -xpf -` reads it.
Its summary (length, SHA-256, uncompressed size, entry count) is written beside it as
ARCHIVE.json; `verify` and `extract` check it. With ARCHIVE `-` the archive goes to
standard output and the summary to --summary, or to standard error.

Examples:
  understudy archive create /mnt/snap/root root.tar.lzo --exclude 'var/log/*' --progress
  understudy archive create /srv - --summary srv.json | ssh backup 'cat > srv.tar.lzo'")]
    Create {
        /// Directory to capture
        source: PathBuf,
        /// Archive to write, or `-` for standard output
        archive: PathBuf,
        /// Leave out matching paths (repeatable). A pattern with `/` matches the path
        /// below SOURCE (`var/log/*`); one without matches any name (`*.core`)
        #[arg(long, value_name = "PATTERN")]
        exclude: Vec<String>,
        /// Stay on SOURCE's filesystem: mount points are kept as empty directories
        #[arg(long)]
        one_file_system: bool,
        /// Where to write the summary [default: ARCHIVE.json]
        #[arg(long, value_name = "PATH")]
        summary: Option<PathBuf>,
        #[command(flatten)]
        threads: Threads,
        /// Show a progress bar on a terminal
        #[arg(long)]
        progress: bool,
        /// Print the result as JSON
        #[arg(long)]
        json: bool,
    },
    /// Recreate the tree from an archive; nothing outside TARGET is ever touched
    #[command(after_help = "\
Member names with `..` are refused; absolute names, symlinks and hardlinks are resolved
inside TARGET as if it were `/`. Owners are restored when running as root. If a summary
is found (ARCHIVE.json or --summary), the archive must match it or the command fails.")]
    Extract {
        /// Archive to read, or `-` for standard input
        archive: PathBuf,
        /// Directory to extract into (created if missing)
        target: PathBuf,
        /// Summary to check against [default: ARCHIVE.json if it exists]
        #[arg(long, value_name = "PATH")]
        summary: Option<PathBuf>,
        #[command(flatten)]
        threads: Threads,
        /// Show a progress bar on a terminal
        #[arg(long)]
        progress: bool,
        /// Print the result as JSON
        #[arg(long)]
        json: bool,
    },
    /// Check an archive completely: container, checksums, tar structure, summary
    Verify {
        /// Archive to read, or `-` for standard input
        archive: PathBuf,
        /// Summary to check against [default: ARCHIVE.json if it exists]
        #[arg(long, value_name = "PATH")]
        summary: Option<PathBuf>,
        #[command(flatten)]
        threads: Threads,
        /// Show a progress bar on a terminal
        #[arg(long)]
        progress: bool,
        /// Print the result as JSON
        #[arg(long)]
        json: bool,
    },
    /// List the members of an archive
    List {
        /// Archive to read, or `-` for standard input
        archive: PathBuf,
        #[command(flatten)]
        threads: Threads,
        /// One JSON object per line
        #[arg(long)]
        json: bool,
    },
}

/// Outcomes that have their own exit code.
#[derive(Debug, thiserror::Error)]
enum Outcome {
    #[error("{0} problem(s); see above")]
    Problems(usize),
    #[error("verification failed: {0:#}")]
    Damaged(anyhow::Error),
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("understudy: {e:#}");
            match e.downcast_ref::<Outcome>() {
                Some(Outcome::Problems(_)) => ExitCode::from(2),
                Some(Outcome::Damaged(_)) => ExitCode::from(3),
                None => ExitCode::FAILURE,
            }
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Archive(cmd) => archive_cmd(cmd),
        Command::Image(cmd) => crate::image::command(image_args(cmd)),
        Command::Initramfs(InitramfsCommand::Build {
            kernel_version,
            modules,
            init,
            output,
            strip_init,
            json,
        }) => {
            let mut spec = initramfs::Spec::new(
                &kernel_version,
                &modules,
                initramfs::Init::Binary(init),
                &output,
            )?;
            spec.strip_init = strip_init;
            let report = initramfs::build(&spec)?;
            if json {
                print_json(&report)
            } else {
                print!("{report}");
                Ok(())
            }
        }
        Command::Layout(LayoutCommand::Capture { disk, json }) => {
            let layout = crate::layout::capture_live(&disk)?;
            if json {
                print_json(&layout)
            } else {
                print!("{layout}");
                Ok(())
            }
        }
        Command::Layout(LayoutCommand::Plan {
            layout,
            size,
            sector,
            json,
        }) => {
            let report = crate::layout::plan_file(&layout, size, sector)?;
            if json {
                print_json(&report)?
            } else {
                print!("{report}")
            }
            report.into_result()
        }
        Command::Provision(args) => crate::provision::provision(&args.options()),
        Command::Restore {
            image,
            target,
            yes,
            no_copy_back,
            progress,
            threads,
        } => {
            let format = match progress.as_str() {
                "json" => crate::restore::Format::Json,
                _ => crate::restore::Format::Human,
            };
            let opts = crate::restore::Options {
                image,
                target,
                yes,
                copy_back: !no_copy_back,
                format,
                threads: threads.get(),
            };
            let report = crate::restore::run(&opts).map_err(|e| {
                if e.downcast_ref::<crate::restore::Damaged>().is_some() {
                    Outcome::Damaged(e).into()
                } else {
                    e
                }
            })?;
            match report.problems {
                0 => Ok(()),
                n => Err(Outcome::Problems(n).into()),
            }
        }
        Command::Console {
            no_color,
            auto,
            images,
            notes,
            inventory,
        } => crate::console::main(crate::console::Config {
            no_color,
            auto,
            images,
            notes,
            inventory,
        }),
        Command::CopyBack {
            disk: Some(disk),
            image: Some(image),
            yes,
            progress,
            ..
        } => crate::restore::copyback_disk::run(&crate::restore::copyback_disk::Options {
            disk,
            image,
            yes,
            format: match progress.as_deref() {
                Some("json") => crate::restore::Format::Json,
                _ => crate::restore::Format::Human,
            },
        }),
        Command::CopyBack {
            emergency: Some(emergency),
            target: Some(target),
            index,
            dry_run,
            json,
            ..
        } => {
            let bar = Progress::new(!json, "copy-back", None);
            let outcome = crate::restore::copyback::copy_back(
                &emergency,
                &target,
                index.as_deref(),
                dry_run,
                &mut |n| bar.add(n),
            );
            bar.done();
            let outcome = outcome?;
            if json {
                print_json(&outcome)
            } else {
                print!("{outcome}");
                Ok(())
            }
        }
        Command::CopyBack { .. } => {
            anyhow::bail!(
                "copy-back needs --disk DISK --image IMAGE, or --emergency DIR --target DIR"
            )
        }
        Command::Disks { json } => {
            let inv = crate::disk::inventory(&crate::disk::Sources::system());
            if json {
                print_json(&inv)
            } else {
                print!("{inv}");
                Ok(())
            }
        }
    }
}

fn image_args(cmd: ImageCommand) -> crate::image::Command {
    use crate::image::Command as C;
    match cmd {
        ImageCommand::Create {
            layout,
            tree,
            id,
            out_dir,
            threads,
            progress,
        } => C::Create {
            opts: crate::image::create::CreateOptions {
                description: layout,
                trees: tree,
                id,
                out_dir,
                threads: threads.get(),
            },
            progress,
        },
        ImageCommand::List { dir, json } => C::List { dir, json },
        ImageCommand::Verify {
            image,
            threads,
            progress,
        } => C::Verify {
            image,
            threads: threads.get(),
            progress,
        },
    }
}

fn is_stdio(p: &Path) -> bool {
    p.as_os_str() == "-"
}

fn open_input(p: &Path) -> Result<Box<dyn Read + Send>> {
    if is_stdio(p) {
        Ok(Box::new(io::stdin()))
    } else {
        let f = File::open(p).with_context(|| format!("opening {}", p.display()))?;
        // Small enough that block payloads (up to 256 KiB) mostly bypass the
        // buffer instead of being copied through it.
        Ok(Box::new(io::BufReader::with_capacity(64 << 10, f)))
    }
}

/// The summary to check against: the one named, else the sidecar if it exists.
fn find_summary(archive: &Path, named: Option<&Path>) -> Result<Option<Summary>> {
    match named {
        Some(p) => Summary::load(p).map(Some),
        None if is_stdio(archive) => Ok(None),
        None => {
            let side = Summary::sidecar(archive);
            if side.exists() {
                Summary::load(&side).map(Some)
            } else {
                Ok(None)
            }
        }
    }
}

fn print_json(v: &impl serde::Serialize) -> Result<()> {
    let mut out = io::stdout().lock();
    serde_json::to_writer(&mut out, v)?;
    writeln!(out)?;
    Ok(())
}

fn report_notes(notes: &[archive::Note]) {
    for n in notes {
        eprintln!("understudy: {n}");
    }
}

fn archive_cmd(cmd: ArchiveCommand) -> Result<()> {
    match cmd {
        ArchiveCommand::Create {
            source,
            archive: dest,
            exclude,
            one_file_system,
            summary,
            threads,
            progress,
            json,
        } => {
            if json && is_stdio(&dest) {
                anyhow::bail!(
                    "--json needs ARCHIVE to be a file: standard output carries the archive \
                     (use --summary PATH to keep the summary)"
                );
            }
            let opts = CaptureOptions {
                excludes: exclude,
                threads: threads.get(),
                one_file_system,
                mtime: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs()),
            };
            // The total is only known by walking the tree once more; do it only
            // when someone is watching.
            let total = progress.then(|| tree_bytes(&source));
            let bar = Progress::new(progress, "capture", total);
            let mut tick = |n| bar.add(n);
            let report = if is_stdio(&dest) {
                let out = BufWriter::with_capacity(1 << 20, io::stdout().lock());
                let (_, report) = archive::create(&source, out, &opts, &mut tick)?;
                report
            } else {
                let partial = partial_path(&dest);
                let f = File::create(&partial)
                    .with_context(|| format!("creating {}", partial.display()))?;
                let out = BufWriter::with_capacity(1 << 20, f);
                let result =
                    archive::create(&source, out, &opts, &mut tick).and_then(|(out, report)| {
                        let f = out.into_inner().map_err(|e| e.into_error())?;
                        f.sync_all().context("syncing the archive")?;
                        std::fs::rename(&partial, &dest).with_context(|| {
                            format!("renaming {} to {}", partial.display(), dest.display())
                        })?;
                        Ok(report)
                    });
                if result.is_err() {
                    let _ = std::fs::remove_file(&partial);
                }
                result?
            };
            bar.done();
            let side = summary.or_else(|| (!is_stdio(&dest)).then(|| Summary::sidecar(&dest)));
            match side {
                Some(p) => report.summary.save(&p)?,
                None if !json => eprintln!("{}", serde_json::to_string(&report.summary)?),
                None => {}
            }
            report_notes(&report.notes);
            if json {
                print_json(&report)?;
            } else if !is_stdio(&dest) {
                let s = &report.summary;
                println!(
                    "{}: {} entries, {} bytes of tar in {} bytes ({:.1}%), sha256 {}",
                    dest.display(),
                    s.entries,
                    s.uncompressed,
                    s.length,
                    100.0 * s.length as f64 / s.uncompressed.max(1) as f64,
                    s.sha256
                );
            }
            Ok(())
        }
        ArchiveCommand::Extract {
            archive: src,
            target,
            summary,
            threads,
            progress,
            json,
        } => {
            let expect = find_summary(&src, summary.as_deref())?;
            let bar = Progress::new(progress, "extract", expect.as_ref().map(|s| s.uncompressed));
            let opts = ExtractOptions {
                threads: threads.get(),
                expect,
                ..ExtractOptions::default()
            };
            let report = archive::extract(open_input(&src)?, &target, &opts, &mut |n| bar.add(n));
            bar.done();
            // A system error (the target cannot be written, the archive cannot be
            // read) is not damage. The tar reader and the lzop decoder report damage
            // as io::Errors too, but made up, without an OS error number.
            let report = report.map_err(|e| match e.downcast_ref::<io::Error>() {
                Some(io) if io.raw_os_error().is_some() => e,
                _ => Outcome::Damaged(e).into(),
            })?;
            report_notes(&report.problems);
            if json {
                print_json(&report)?;
            } else {
                println!(
                    "{}: {} entries, {} bytes of tar extracted",
                    target.display(),
                    report.summary.entries,
                    report.summary.uncompressed
                );
            }
            if !report.problems.is_empty() {
                return Err(Outcome::Problems(report.problems.len()).into());
            }
            Ok(())
        }
        ArchiveCommand::Verify {
            archive: src,
            summary,
            threads,
            progress,
            json,
        } => {
            let expect = find_summary(&src, summary.as_deref())?;
            let bar = Progress::new(progress, "verify", expect.as_ref().map(|s| s.uncompressed));
            let got = archive::verify(
                open_input(&src)?,
                expect.as_ref(),
                threads.get(),
                &mut |n| bar.add(n),
            );
            bar.done();
            let got = got.map_err(Outcome::Damaged)?;
            if json {
                print_json(&serde_json::json!({
                    "ok": true,
                    "summary_checked": expect.is_some(),
                    "summary": got,
                }))?;
            } else {
                println!(
                    "{}: ok, {} entries, {} bytes, sha256 {}",
                    src.display(),
                    got.entries,
                    got.length,
                    got.sha256
                );
                if expect.is_none() {
                    eprintln!(
                        "understudy: no summary found: length and SHA-256 were not checked, so a \
                         dropped or duplicated block could pass"
                    );
                }
            }
            Ok(())
        }
        ArchiveCommand::List {
            archive: src,
            threads,
            json,
        } => {
            let mut out = BufWriter::new(io::stdout().lock());
            let result = archive::walk(open_input(&src)?, threads.get(), &mut |_| {}, |item| {
                let r = if json {
                    serde_json::to_writer(&mut out, &item)
                        .map_err(io::Error::from)
                        .and_then(|()| writeln!(out))
                } else {
                    writeln!(out, "{item}")
                };
                match r {
                    // `list | head` closes the pipe: stop quietly.
                    Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Err(StopListing.into()),
                    r => r.context("writing the listing"),
                }
            });
            match result {
                Err(e) if e.downcast_ref::<StopListing>().is_some() => Ok(()),
                Err(e) => Err(Outcome::Damaged(e).into()),
                Ok(_) => out
                    .flush()
                    .or_else(|e| {
                        if e.kind() == io::ErrorKind::BrokenPipe {
                            Ok(())
                        } else {
                            Err(e)
                        }
                    })
                    .context("writing the listing"),
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("listing stopped")]
struct StopListing;

fn partial_path(dest: &Path) -> PathBuf {
    let mut s = dest.as_os_str().to_owned();
    s.push(".partial");
    PathBuf::from(s)
}

/// Bytes of regular-file data under `root`, for a progress total.
fn tree_bytes(root: &Path) -> u64 {
    fn walk(p: &Path) -> u64 {
        let Ok(rd) = std::fs::read_dir(p) else {
            return 0;
        };
        rd.filter_map(|e| e.ok())
            .map(|e| match e.file_type() {
                Ok(t) if t.is_dir() => walk(&e.path()),
                Ok(t) if t.is_file() => e.metadata().map_or(0, |m| m.len()),
                _ => 0,
            })
            .sum()
    }
    walk(root)
}
