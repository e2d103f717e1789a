//! `cargo xtask demo [--no-primary|--blank-primary] [--uefi]`: the bootable demo.
//! Builds the static binary, the recovery image and Debian's kernel (through
//! `cargo xtask initramfs`), makes a demo appliance pair under `target/demo/` (a
//! primary with GRUB and a busybox "appliance" on an ext4 root; a secondary from
//! `images.rs` with the recovery OS, an emergency copy marked ready and both disks'
//! identities recorded) and boots QEMU with its serial console on this terminal:
//! GRUB's menu, then the recovery console (or, with the primary removed, the
//! automatic fallback). When stdin is not a terminal it builds everything, prints
//! the QEMU command line and exits.
//!
//! `cargo xtask demo --archive`: a real archive round trip on the real corpus tree,
//! checked file by file, with a short summary. Also `cargo xtask compare A B`: the
//! tree comparison on its own.
//!
//! Does not own: the images (`images.rs`), the recovery image (`initramfs.rs`), the
//! QEMU harness (`qemu/`, for tests: the demo runs QEMU on the terminal directly).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::IsTerminal;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use understudy::boot::{self, Env, PrimaryDisk};
use understudy::initramfs::{self, Init, Spec};
use understudy::layout::{Bytes, MIB};

use crate::appliance;
use crate::corpus::{self, human_bytes};
use crate::images::{self, PrimarySpec, SecondarySpec};
use crate::kernel::{self, Kernel};
use crate::qemu::{self, DiskSpec, ImageFormat};
use crate::run::{Cmd, require};
use crate::{release_bin, repo_root, target_dir};

/// The disks' serial numbers (what the recorded identities name).
const PRIMARY_SERIAL: &str = "US-PRIMARY-0001";
const SECONDARY_SERIAL: &str = "US-SECONDARY-0002";
const REPLACEMENT_SERIAL: &str = "US-REPLACEMENT-0003";

/// The demo's GRUB waits: long enough to read the menu and pick an entry.
const MENU_SECS: u32 = 15;
const FALLBACK_SECS: u32 = 10;

const OVMF_FILES: [(&str, &str); 2] = [
    (
        "/usr/share/OVMF/OVMF_CODE_4M.fd",
        "/usr/share/OVMF/OVMF_VARS_4M.fd",
    ),
    (
        "/usr/share/OVMF/OVMF_CODE.fd",
        "/usr/share/OVMF/OVMF_VARS.fd",
    ),
];

/// Which disk stands in the primary's slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PrimarySlot {
    /// The appliance's disk.
    Appliance,
    /// Nothing: the primary died and was pulled.
    Removed,
    /// A new, blank disk with another serial number.
    Blank,
}

#[derive(Clone, Copy, Debug)]
struct Options {
    primary: PrimarySlot,
    uefi: bool,
}

const USAGE: &str = "usage: cargo xtask demo [--no-primary | --blank-primary] [--uefi]
       cargo xtask demo --archive   (the archive round trip on the corpus)";

fn parse(args: &[String]) -> Result<Options> {
    let mut o = Options {
        primary: PrimarySlot::Appliance,
        uefi: false,
    };
    for a in args {
        match a.as_str() {
            "--no-primary" if o.primary == PrimarySlot::Appliance => {
                o.primary = PrimarySlot::Removed
            }
            "--blank-primary" if o.primary == PrimarySlot::Appliance => {
                o.primary = PrimarySlot::Blank
            }
            "--uefi" => o.uefi = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("demo: `{other}` not understood\n{USAGE}"),
        }
    }
    Ok(o)
}

pub fn main(args: &[String]) -> Result<()> {
    if args.iter().any(|a| a == "--archive") {
        if let Some(a) = args.iter().find(|a| *a != "--archive") {
            bail!("demo --archive takes no other arguments (got `{a}`)");
        }
        return archive_demo();
    }
    let opts = parse(args)?;
    require(&["qemu-system-x86_64"])?;
    eprintln!("demo: building the static binary, the recovery image and the kernel");
    crate::initramfs::main(&[]).context("building the recovery image")?;
    let k = kernel::ensure()?;
    let dir = target_dir().join("demo");
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let pair = build_pair(&k, &dir, opts.primary)?;
    let qemu_args = qemu_args(&dir, &pair, opts)?;
    let cmd = Cmd::new("qemu-system-x86_64").args(&qemu_args);
    let primary_note = match opts.primary {
        PrimarySlot::Appliance => format!("primary {} ({PRIMARY_SERIAL})", pair.primary.display()),
        PrimarySlot::Removed => "no primary (removed)".to_string(),
        PrimarySlot::Blank => format!("a blank replacement disk ({REPLACEMENT_SERIAL})"),
    };
    println!(
        "demo: secondary {} ({SECONDARY_SERIAL}, emergency copy ready), {primary_note}, {}",
        pair.secondary.display(),
        if opts.uefi {
            "UEFI (OVMF)"
        } else {
            "BIOS (SeaBIOS)"
        }
    );
    if !std::io::stdin().is_terminal() {
        println!("demo: stdin is not a terminal; not booting. The command would be:\n{cmd}");
        return Ok(());
    }
    println!(
        "demo: booting. GRUB's menu comes first: \"{}\" reaches the recovery console.\n\
         {}\n\
         demo: in the recovery console, `p` powers off; Ctrl-A X quits QEMU at any time.\n",
        boot::TITLE_RECOVERY,
        match opts.primary {
            PrimarySlot::Appliance => format!(
                "demo: with the primary present GRUB boots \"{}\" (the demo appliance) after {MENU_SECS} s.",
                boot::TITLE_PRIMARY
            ),
            PrimarySlot::Removed | PrimarySlot::Blank => format!(
                "demo: the primary is missing: with no keypress GRUB boots the emergency copy after {FALLBACK_SECS} s."
            ),
        }
    );
    cmd.run_interactive()
}

/// The demo's disks.
struct Pair {
    primary: PathBuf,
    /// The blank replacement's size: the image's disk when there is an image to
    /// restore onto it, else the demo primary's.
    replacement_mib: u64,
    secondary: PathBuf,
}

/// A busybox-only initrd whose `/init` shows `banner` and runs a shell.
fn busybox_initrd(k: &Kernel, out: &Path, banner: &str) -> Result<()> {
    let script = format!(
        "#!/bin/sh\n\
         mount -t proc proc /proc\nmount -t sysfs sys /sys\nmount -t devtmpfs dev /dev 2>/dev/null\n\
         echo\necho '=== {banner} ==='\necho \"kernel command line: $(cat /proc/cmdline)\"\n\
         echo 'A stand-in system: a busybox shell. `poweroff -f` ends the demo.'\n\
         while true; do setsid cttyhack sh || sh; done\n"
    );
    let mut spec = Spec::new(&k.version, &k.modules_dir, Init::BusyboxScript(script), out)?;
    spec.modules.clear();
    spec.tools.clear();
    spec.files.clear();
    spec.compression = initramfs::Compression::Zstd { level: 3 };
    initramfs::build(&spec)
        .map(drop)
        .with_context(|| format!("building {}", out.display()))
}

/// Builds `target/demo/{primary,secondary}.raw` and the initrds they hold.
/// The Debian appliance's image (`appliance.rs`) as a tree for the secondary's images
/// filesystem (hard links, under `dir/images-tree/`), that filesystem's size, and the
/// image's filesystem UUIDs; `None` (with the reason printed) when it cannot be made,
/// so the demo still boots.
fn appliance_image(dir: &Path) -> Option<(PathBuf, Bytes, PrimaryDisk)> {
    let made = (|| -> Result<(PathBuf, Bytes, PrimaryDisk)> {
        let img = appliance::image_disk()?;
        let tree = dir.join("images-tree");
        if tree.exists() {
            fs::remove_dir_all(&tree).with_context(|| format!("removing {}", tree.display()))?;
        }
        let size = appliance::images_partition(appliance::images_tree(&img, &tree, false)?)?;
        Ok((tree, size, appliance::primary_fs_uuids(&img)?))
    })();
    match made {
        Ok(m) => Some(m),
        Err(e) => {
            eprintln!("demo: no image on the secondary's images partition: {e:#}");
            None
        }
    }
}

fn build_pair(k: &Kernel, dir: &Path, slot: PrimarySlot) -> Result<Pair> {
    let appliance_initrd = dir.join("appliance-initrd.img");
    busybox_initrd(
        k,
        &appliance_initrd,
        "understudy demo appliance, booted from the PRIMARY disk",
    )?;
    let emergency_initrd = dir.join("emergency-initrd.img");
    busybox_initrd(
        k,
        &emergency_initrd,
        "understudy demo appliance, EMERGENCY COPY on the secondary disk",
    )?;

    let tree = dir.join("appliance-root");
    if tree.exists() {
        fs::remove_dir_all(&tree).with_context(|| format!("removing {}", tree.display()))?;
    }
    for d in ["boot", "etc", "srv/appliance"] {
        fs::create_dir_all(tree.join(d)).with_context(|| format!("creating {}", tree.display()))?;
    }
    let put = |rel: &str, text: &str| {
        fs::write(tree.join(rel), text).with_context(|| format!("writing {rel} in the demo tree"))
    };
    put("etc/hostname", "demo-appliance\n")?;
    put(
        "etc/os-release",
        "PRETTY_NAME=\"understudy demo appliance\"\nID=understudy-demo\n",
    )?;
    put(
        "srv/appliance/README",
        "The demo appliance's data. The real Debian appliance comes later.\n",
    )?;
    fs::copy(&k.vmlinuz, tree.join("boot/vmlinuz"))
        .with_context(|| format!("copying {}", k.vmlinuz.display()))?;
    fs::copy(&appliance_initrd, tree.join("boot/initrd.img"))
        .with_context(|| format!("copying {}", appliance_initrd.display()))?;

    let primary = dir.join("primary.raw");
    let primary_bytes = images::build_primary(&PrimarySpec {
        work: dir.join("work-primary"),
        output: primary.clone(),
        tree,
        root: Bytes(64 * MIB),
        title: "Demo appliance".into(),
        cmdline: format!("ro {}", boot::CONSOLES),
        recovery_entry: Some(images::RECOVERY_UUID.to_string()),
    })?;

    // The Debian appliance's image goes on the images partition. With a blank
    // replacement, the story is that the primary which died ran that appliance: the
    // secondary's GRUB looks for the image's filesystems, so once the console has
    // restored it onto the blank disk, GRUB finds and chainloads it.
    let image = appliance_image(dir);
    let mut menu = images::test_boot();
    menu.primary = Some(match (&image, slot) {
        (Some((_, _, uuids)), PrimarySlot::Blank) => uuids.clone(),
        _ => PrimaryDisk {
            root_fs_uuid: images::PRIMARY_ROOT_UUID.to_string(),
            boot_fs_uuid: images::PRIMARY_ROOT_UUID.to_string(),
            esp_fs_uuid: Some(images::PRIMARY_ESP_VOLUME_ID.to_string()),
        },
    });
    let replacement_mib = match image {
        Some(_) => appliance::DISK_MIB,
        None => primary_bytes.0.div_ceil(MIB),
    };
    let images_fs = image.map(|(tree, size, _)| (tree, size));
    let secondary_bytes = match &images_fs {
        Some((_, size)) => images::secondary_bytes_with(*size),
        None => images::secondary_bytes(),
    };
    menu.menu_timeout_secs = MENU_SECS;
    menu.fallback_timeout_secs = FALLBACK_SECS;
    let ready = boot::encode(&Env::with_emergency(Some("demo-appliance")))?.to_vec();
    let secondary = dir.join("secondary.raw");
    let recovery = target_dir().join("recovery");
    images::build_secondary(&SecondarySpec {
        work: dir.join("work-secondary"),
        output: secondary.clone(),
        boot: menu,
        recovery_kernel: recovery.join("vmlinuz"),
        recovery_initrd: recovery.join("initrd.img"),
        emergency_kernel: k.vmlinuz.clone(),
        emergency_initrd,
        env_a: Some(ready.clone()),
        env_b: Some(ready),
        next_entry: None,
        recorded: Some(images::recorded_virtio(
            (PRIMARY_SERIAL, primary_bytes),
            (SECONDARY_SERIAL, secondary_bytes),
        )),
        images: images_fs,
        emergency_root: None,
    })?;
    Ok(Pair {
        primary,
        replacement_mib,
        secondary,
    })
}

/// QEMU on this terminal: serial console and monitor on stdio, the secondary first
/// in the boot order, the primary slot as asked.
fn qemu_args(dir: &Path, pair: &Pair, o: Options) -> Result<Vec<String>> {
    let accel = qemu::accel::choose(&pair_kernel()?, &target_dir().join("vm"));
    let mut a: Vec<String> = [
        "-name",
        "understudy-demo",
        "-machine",
        "pc",
        "-m",
        "1024",
        "-smp",
        "2",
        // The serial console and QEMU's monitor on this terminal (Ctrl-A X quits,
        // Ctrl-A C toggles), Ctrl-C passed to the guest. Not `-nographic`: with it
        // SeaBIOS also copies the VGA text console to the serial line, so GRUB's
        // menu (which writes to both terminals) came out twice, interleaved.
        "-display",
        "none",
        "-vga",
        "std",
        "-chardev",
        "stdio,id=console,mux=on,signal=off",
        "-serial",
        "chardev:console",
        "-mon",
        "chardev=console,mode=readline",
        "-nic",
        "none",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    a.extend(accel.args().iter().map(|s| s.to_string()));
    if o.uefi {
        let (code, template) = OVMF_FILES
            .iter()
            .find(|(c, v)| Path::new(c).is_file() && Path::new(v).is_file())
            .context("finding OVMF in /usr/share/OVMF (install the `ovmf` package)")?;
        let vars = dir.join("ovmf-vars.fd");
        fs::copy(template, &vars).with_context(|| format!("copying {template}"))?;
        a.push("-drive".into());
        a.push(format!(
            "if=pflash,format=raw,unit=0,readonly=on,file={code}"
        ));
        a.push("-drive".into());
        a.push(format!(
            "if=pflash,format=raw,unit=1,file={}",
            vars.display()
        ));
    }
    let mut disks = Vec::new();
    match o.primary {
        PrimarySlot::Appliance => {
            let mut d =
                DiskSpec::virtio("primary", &pair.primary, ImageFormat::Raw, PRIMARY_SERIAL);
            // OVMF connects only the disks in the boot order.
            d.bootindex = Some(2);
            disks.push(d);
        }
        PrimarySlot::Removed => {}
        PrimarySlot::Blank => {
            let blank = dir.join("replacement.raw");
            let _ = fs::remove_file(&blank);
            qemu::create_blank(&blank, pair.replacement_mib)?;
            let mut d =
                DiskSpec::virtio("replacement", blank, ImageFormat::Raw, REPLACEMENT_SERIAL);
            d.bootindex = Some(2);
            disks.push(d);
        }
    }
    let mut sec = DiskSpec::virtio(
        "secondary",
        &pair.secondary,
        ImageFormat::Raw,
        SECONDARY_SERIAL,
    );
    sec.bootindex = Some(1);
    disks.push(sec);
    for d in &disks {
        a.push("-blockdev".into());
        a.push(d.blockdev().to_string());
        a.push("-device".into());
        a.push(d.device()?);
    }
    Ok(a)
}

/// The kernel the accelerator probe boots.
fn pair_kernel() -> Result<PathBuf> {
    let k = target_dir().join("recovery/vmlinuz");
    if !k.is_file() {
        bail!("{} is missing", k.display());
    }
    Ok(k)
}

/// `cargo xtask demo --archive`: what `./x demo` did before the bootable demo.
fn archive_demo() -> Result<()> {
    let corpus = corpus::ensure()?;
    let (entries, bytes) = corpus::stats(&corpus)?;

    let bin = match std::env::var_os("UNDERSTUDY_BIN").filter(|b| !b.is_empty()) {
        Some(bin) => PathBuf::from(bin),
        None => {
            eprintln!("demo: cargo build --release -p understudy");
            Cmd::new("cargo")
                .args(["build", "--release", "-p", "understudy"])
                .dir(repo_root())
                .run()
                .context("building understudy for the demo")?;
            release_bin("understudy")
        }
    };

    let dir = target_dir().join("demo");
    fs::create_dir_all(&dir)?;
    let dir = dir.canonicalize()?;
    let archive = dir.join("corpus.tar.lzo");
    let out = dir.join("extract");
    let _ = fs::remove_file(&archive);
    let _ = fs::remove_file(dir.join("corpus.tar.lzo.json"));
    corpus::unmount_below(&out)?;
    if out.exists() {
        Cmd::new("rm")
            .args(["-rf", "--one-file-system"])
            .arg(&out)
            .output()?;
    }
    fs::create_dir_all(&out)?;

    let us = |args: &[&str]| Cmd::new(&bin).args(args);
    let timed = |cmd: Cmd| -> Result<Duration> {
        println!("\n$ {cmd}");
        let start = Instant::now();
        cmd.run_interactive()?;
        Ok(start.elapsed())
    };

    println!(
        "demo: corpus {} ({entries} entries, {} in regular files)",
        corpus.display(),
        human_bytes(bytes)
    );
    let t_create = timed(
        us(&["archive", "create"])
            .arg(&corpus)
            .arg(&archive)
            .arg("--progress"),
    )?;
    let t_verify = timed(us(&["archive", "verify"]).arg(&archive))?;

    let list = us(&["archive", "list"]).arg(&archive);
    println!("\n$ {list} | head");
    let listing = list.output()?;
    for line in listing.lines().take(10) {
        println!("{line}");
    }
    let listed = listing.lines().count();
    println!("... ({listed} lines in all)");

    let t_extract = timed(
        us(&["archive", "extract"])
            .arg(&archive)
            .arg(&out)
            .arg("--progress"),
    )?;

    println!(
        "\ndemo: comparing {} with {}",
        corpus.display(),
        out.display()
    );
    let problems = compare(&corpus, &out, &dir)?;

    let size = fs::metadata(&archive)?.len();
    let mibs = |d: Duration| bytes as f64 / 1048576.0 / d.as_secs_f64().max(1e-9);
    println!("\n== demo summary ==");
    println!(
        "tree:     {entries} entries, {} in regular files",
        human_bytes(bytes)
    );
    println!(
        "archive:  {} ({:.1}% of the file bytes), {}",
        human_bytes(size),
        100.0 * size as f64 / bytes.max(1) as f64,
        archive.display()
    );
    println!(
        "create:   {:.2} s ({:.0} MiB/s)",
        t_create.as_secs_f64(),
        mibs(t_create)
    );
    println!("verify:   {:.2} s", t_verify.as_secs_f64());
    println!(
        "extract:  {:.2} s ({:.0} MiB/s)",
        t_extract.as_secs_f64(),
        mibs(t_extract)
    );
    if problems.is_empty() {
        println!("round trip: identical (contents, types, modes, owners, symlinks, devices)");
        Ok(())
    } else {
        println!("round trip: {} difference(s):", problems.len());
        for p in problems.iter().take(30) {
            println!("  {p}");
        }
        bail!("the extracted tree differs from the corpus")
    }
}

/// `cargo xtask compare A B`.
pub fn compare_main(args: &[String]) -> Result<()> {
    let [a, b] = args else {
        bail!("usage: compare DIR_A DIR_B");
    };
    let work = target_dir().join("compare");
    fs::create_dir_all(&work)?;
    let problems = compare(Path::new(a), Path::new(b), &work)?;
    if problems.is_empty() {
        println!("identical (contents, types, modes, owners, symlinks, devices)");
        return Ok(());
    }
    for p in &problems {
        println!("{p}");
    }
    bail!("{} difference(s)", problems.len())
}

/// Differences between trees `a` and `b`, as human-readable lines (empty if
/// the same). `work` receives the full diff and listings.
///
/// Contents: `diff -r --no-dereference`, except that device nodes, fifos and
/// sockets are left out of it (diff would read them: `/dev/zero` forever);
/// they are compared by type and device number instead. Metadata:
/// `find -printf '%p %m %U %G %y %l'` on both sides, sorted and compared.
pub fn compare(a: &Path, b: &Path, work: &Path) -> Result<Vec<String>> {
    require(&["diff", "cmp", "find"])?;
    let mut problems = Vec::new();

    // Special files, by relative path, with their device numbers.
    let specials = special_files(a)?;
    let mut excluded: BTreeSet<String> = BTreeSet::new();
    for rel in specials.keys() {
        if let Some(name) = rel.file_name() {
            excluded.insert(name.to_string_lossy().into_owned());
        }
    }
    for (rel, (kind, rdev)) in &specials {
        match fs::symlink_metadata(b.join(rel)) {
            Ok(md) => {
                let kind_b = special_kind(&md);
                if kind_b != Some(*kind) || md.rdev() != *rdev {
                    problems.push(format!(
                        "{}: {kind} {rdev:#x} became {} {:#x}",
                        rel.display(),
                        kind_b.unwrap_or("not special"),
                        md.rdev()
                    ));
                }
            }
            Err(_) => problems.push(format!("{}: {kind} missing", rel.display())),
        }
    }

    let mut diff = Cmd::new("diff").args(["-r", "--no-dereference"]);
    for name in &excluded {
        diff = diff.arg("--exclude").arg(name);
    }
    let diff = diff.arg(a).arg(b);
    let (code, stdout, stderr) = diff.capture()?;
    fs::write(work.join("diff.txt"), &stdout)?;
    match code {
        Some(0) => {}
        Some(1) => problems.extend(stdout.lines().map(|l| format!("diff: {l}"))),
        _ => bail!("`{diff}` failed ({code:?}): {}", stderr.trim_end()),
    }

    // Regular files that share a name with an excluded special file were
    // skipped by diff too: compare them one by one.
    for rel in regular_files_named(a, &excluded)? {
        let (code, stdout, _) = Cmd::new("cmp")
            .arg(a.join(&rel))
            .arg(b.join(&rel))
            .capture()?;
        if code != Some(0) {
            problems.push(format!("cmp: {}: {}", rel.display(), stdout.trim()));
        }
    }

    // Types, modes, owners and symlink targets.
    let la = listing(a)?;
    let lb = listing(b)?;
    fs::write(work.join("listing-a.txt"), la.join("\n") + "\n")?;
    fs::write(work.join("listing-b.txt"), lb.join("\n") + "\n")?;
    let sa: BTreeSet<&String> = la.iter().collect();
    let sb: BTreeSet<&String> = lb.iter().collect();
    for l in sa.difference(&sb) {
        problems.push(format!("only in {}: {l}", a.display()));
    }
    for l in sb.difference(&sa) {
        problems.push(format!("only in {}: {l}", b.display()));
    }
    Ok(problems)
}

/// `find . -printf '%p %m %U %G %y %l\n' | sort`, run inside `root` so both
/// sides list the same relative paths.
fn listing(root: &Path) -> Result<Vec<String>> {
    let text = Cmd::new("find")
        .args([".", "-printf", "%p %m %U %G %y %l\\n"])
        .dir(root)
        .output()?;
    let mut lines: Vec<String> = text.lines().map(String::from).collect();
    lines.sort();
    Ok(lines)
}

fn special_kind(md: &fs::Metadata) -> Option<&'static str> {
    let t = md.file_type();
    if t.is_char_device() {
        Some("char device")
    } else if t.is_block_device() {
        Some("block device")
    } else if t.is_fifo() {
        Some("fifo")
    } else if t.is_socket() {
        Some("socket")
    } else {
        None
    }
}

fn walk(root: &Path, f: &mut dyn FnMut(&Path, &fs::Metadata)) -> Result<()> {
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let dir = root.join(&rel);
        for e in fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
            let e = e?;
            let rel = rel.join(e.file_name());
            let md = e.path().symlink_metadata()?;
            if md.is_dir() {
                stack.push(rel.clone());
            }
            f(&rel, &md);
        }
    }
    Ok(())
}

fn special_files(root: &Path) -> Result<BTreeMap<PathBuf, (&'static str, u64)>> {
    let mut out = BTreeMap::new();
    walk(root, &mut |rel, md| {
        if let Some(kind) = special_kind(md) {
            out.insert(rel.to_path_buf(), (kind, md.rdev()));
        }
    })?;
    Ok(out)
}

fn regular_files_named(root: &Path, names: &BTreeSet<String>) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    if names.is_empty() {
        return Ok(out);
    }
    walk(root, &mut |rel, md| {
        if md.is_file()
            && rel
                .file_name()
                .is_some_and(|n| names.contains(n.to_string_lossy().as_ref()))
        {
            out.push(rel.to_path_buf());
        }
    })?;
    Ok(out)
}
