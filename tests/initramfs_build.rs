//! The initramfs builder end to end on a fake module tree
//! (`tests/fixtures/initramfs/make-modules.sh`) and this machine's real tools: the
//! image is read back with GNU cpio and the zstd CLI, its tools run in a chroot of
//! the unpacked image (proving their libraries and loader came along), and two
//! builds are byte-identical.

use std::fs;
use std::path::{Path, PathBuf};

use understudy::cmd::Cmd;
use understudy::initramfs::modules::Index;
use understudy::initramfs::{self, BuildReport, Category, Compression, Init, Spec, deferred};

const VERSION: &str = "6.1.0-test-amd64";

fn fixture_modules() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/initramfs/modules")
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "understudy-initramfs-{name}-{}",
        std::process::id()
    ));
    let _ = fs::remove_dir_all(&d);
    fs::create_dir_all(&d).unwrap();
    d
}

fn spec(output: &Path) -> Spec {
    let mut spec = Spec::new(
        VERSION,
        &fixture_modules(),
        Init::Binary(PathBuf::from(env!("CARGO_BIN_EXE_understudy"))),
        output,
    )
    .unwrap();
    spec.modules = [
        "ext4",
        "virtio_blk",
        "dm-snapshot",
        "uas",
        "virtio_pci",
        "nvme",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    spec.mtime = 1_700_000_000;
    // Fast; the level does not change what is tested.
    spec.compression = Compression::Zstd { level: 3 };
    spec
}

fn unpack(image: &Path, into: &Path) {
    let cpio = Cmd::new("zstd")
        .args(["-dc"])
        .arg(image)
        .output()
        .unwrap()
        .stdout;
    // Device nodes are listed, not made (mknod is for the kernel's unpacker).
    Cmd::new("cpio")
        .args(["-idm", "--quiet", "--nonmatching", "dev/*"])
        .dir(into)
        .stdin(cpio)
        .run()
        .unwrap();
}

fn build(dir: &Path, name: &str) -> (PathBuf, BuildReport) {
    let out = dir.join(name);
    let report = initramfs::build(&spec(&out)).unwrap();
    (out, report)
}

#[test]
fn the_image_holds_init_tools_libraries_and_modules_that_work() {
    let dir = scratch("full");
    let (image, report) = build(&dir, "initrd.img");

    // The zstd CLI accepts the stream, and GNU cpio lists what we wrote.
    Cmd::new("zstd").arg("-tq").arg(&image).run().unwrap();
    let cpio = Cmd::new("zstd")
        .args(["-dc"])
        .arg(&image)
        .output()
        .unwrap()
        .stdout;
    assert_eq!(cpio.len() as u64, report.cpio_bytes);
    assert_eq!(fs::metadata(&image).unwrap().len(), report.compressed_bytes);
    let listing = Cmd::new("cpio")
        .args(["-tv", "--quiet"])
        .stdin(cpio.clone())
        .output()
        .unwrap()
        .text();
    let line = |name: &str| {
        listing
            .lines()
            .find(|l| l.ends_with(&format!(" {name}")) || l.contains(&format!(" {name} -> ")))
            .unwrap_or_else(|| panic!("{name} not listed:\n{listing}"))
            .to_string()
    };
    assert!(
        line("dev/console").starts_with("crw-------"),
        "{}",
        line("dev/console")
    );
    assert!(
        line("dev/console").contains("5,   1"),
        "{}",
        line("dev/console")
    );
    assert!(
        line("init").starts_with("-rwxr-xr-x   1 root     root"),
        "{}",
        line("init")
    );
    assert!(line("tmp").starts_with("drwxrwxrwt"), "{}", line("tmp"));
    assert!(line("bin").ends_with("bin -> usr/bin"), "{}", line("bin"));
    // Every member has the fixed mtime (2023-11-14, from SOURCE_DATE_EPOCH's stand-in).
    assert!(
        listing.lines().all(|l| l.contains("Nov 14  2023")),
        "{listing}"
    );
    let names: Vec<&str> = listing
        .lines()
        .map(|l| l.split(" -> ").next().unwrap().rsplit(' ').next().unwrap())
        .collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted, "members must be sorted");

    let root = dir.join("root");
    fs::create_dir_all(&root).unwrap();
    unpack(&image, &root);

    // What the kernel unpacks: /init and the modules the first screen may need; the
    // tools, libraries and device-mapper modules are in the deferred part.
    let archive = root.join(deferred::NAME);
    let moddir = root.join(format!("usr/lib/modules/{VERSION}/kernel"));
    assert!(archive.is_file());
    assert!(root.join("init").is_file());
    assert!(moddir.join("fs/ext4/ext4.ko").is_file());
    assert!(!root.join("usr/sbin/mke2fs").exists());
    assert!(!root.join("usr/bin/busybox").exists());
    assert!(!moddir.join("drivers/md/dm-snapshot.ko").exists());
    let d = report
        .deferred
        .as_ref()
        .expect("our binary's image has a deferred part");
    assert_eq!(d.compressed_bytes, fs::metadata(&archive).unwrap().len());
    assert!(d.cpio_bytes > 2 * d.compressed_bytes, "{d:?}");
    // PID 1's unpacking, on the real archive.
    let done = deferred::ensure_at(&archive, &root)
        .unwrap()
        .expect("unpacked");
    assert_eq!(done.entries, d.entries);
    assert!(!archive.exists());
    assert!(moddir.join("drivers/md/dm-snapshot.ko").is_file());

    // /init is our binary, byte for byte.
    assert_eq!(
        fs::read(root.join("init")).unwrap(),
        fs::read(env!("CARGO_BIN_EXE_understudy")).unwrap()
    );
    // The real tools, not busybox's applets of the same names.
    assert_eq!(
        fs::read(root.join("usr/sbin/mke2fs")).unwrap(),
        fs::read(fs::canonicalize("/usr/sbin/mke2fs").unwrap()).unwrap()
    );
    assert_eq!(
        fs::read_link(root.join("usr/sbin/mkfs.ext4")).unwrap(),
        Path::new("/usr/sbin/mke2fs")
    );
    assert_eq!(
        fs::read_link(root.join("usr/sbin/lvcreate")).unwrap(),
        Path::new("/usr/sbin/lvm")
    );
    assert_eq!(
        fs::read_link(root.join("usr/bin/sh")).unwrap(),
        Path::new("/usr/bin/busybox")
    );
    assert!(
        fs::symlink_metadata(root.join("usr/bin/mke2fs")).is_err(),
        "a busybox mke2fs would shadow nothing, but must not exist"
    );
    assert!(
        fs::symlink_metadata(root.join("usr/sbin/init")).is_err(),
        "no second init"
    );
    assert!(root.join("etc/mke2fs.conf").is_file());
    assert!(
        fs::read_to_string(root.join("etc/lvm/lvm.conf"))
            .unwrap()
            .contains("udev_sync = 0")
    );

    // The tools start inside the image: their loader and libraries are all there.
    let run_in = |args: &[&str]| Cmd::new("chroot").arg(&root).args(args).output();
    let v = run_in(&["/usr/sbin/mke2fs", "-V"]).unwrap();
    assert!(
        String::from_utf8_lossy(&v.stderr).contains("mke2fs 1."),
        "{v:?}"
    );
    assert!(
        run_in(&["/usr/sbin/lvm", "version"])
            .unwrap()
            .text()
            .contains("LVM version")
    );
    assert!(run_in(&["/usr/sbin/e2fsck", "-V"]).is_ok());
    assert_eq!(
        run_in(&["/bin/sh", "-c", "echo $((6*7))"]).unwrap().text(),
        "42\n"
    );
    // busybox's shell runs its own mke2fs applet before searching PATH (seen in the
    // smoke boot: `mke2fs -t ext4` failed); /etc/profile's aliases give the real one.
    // It does so only with /proc mounted (it re-executes /proc/self/exe), so the
    // shell runs in a private mount namespace with its own /proc.
    let shell = |script: &str| {
        Cmd::new("unshare")
            .args(["--mount", "--propagation", "private", "chroot"])
            .arg(&root)
            .args(["/bin/sh", "-c"])
            .arg(format!("mount -t proc proc /proc\n{script}"))
            .output()
            .unwrap()
            .text()
    };
    let bare = shell("mke2fs -V 2>&1; true");
    assert!(bare.contains("BusyBox"), "{bare}");
    let profiled = shell(". /etc/profile\nmke2fs -V 2>&1");
    assert!(
        profiled.contains("mke2fs 1.") && !profiled.contains("BusyBox"),
        "{profiled}"
    );
    let profile = fs::read_to_string(root.join("etc/profile")).unwrap();
    for alias in [
        "alias mke2fs=/usr/sbin/mke2fs",
        // dosfstools' mkfs.fat under its other name.
        "alias mkdosfs=/usr/sbin/mkdosfs",
    ] {
        assert!(profile.contains(alias), "{alias} missing from:\n{profile}");
    }
    assert!(!profile.contains("alias busybox"), "{profile}");

    // Modules: the wanted ones and their dependencies, decompressed, nothing else.
    let moddir = root.join(format!("usr/lib/modules/{VERSION}"));
    let storage = moddir.join("kernel/drivers/usb/storage");
    for ko in ["usb-storage.ko", "uas.ko"] {
        assert_eq!(
            &fs::read(storage.join(ko)).unwrap()[..4],
            b"\x7fELF",
            "{ko} must be stored decompressed"
        );
    }
    assert!(!moddir.join("kernel/drivers/net/dummy.ko").exists());
    let index = Index::load(&moddir).unwrap();
    assert_eq!(
        index.modules.keys().map(String::as_str).collect::<Vec<_>>(),
        [
            "crc16",
            "crc32c_generic",
            "dm_bufio",
            "dm_mod",
            "dm_snapshot",
            "ext4",
            "jbd2",
            "mbcache",
            "uas",
            "usb_common",
            "usb_storage",
            "usbcore",
            "virtio_blk"
        ]
    );
    assert_eq!(
        index.load_order(&["ext4"]),
        ["crc32c_generic", "mbcache", "crc16", "jbd2", "ext4"]
    );
    assert_eq!(
        index.modules["uas"].path,
        "kernel/drivers/usb/storage/uas.ko"
    );
    assert!(
        index
            .order
            .contains(&"kernel/drivers/usb/storage/uas.ko".to_string()),
        "{:?}",
        index.order
    );
    assert!(index.builtin.contains("virtio_pci"));
    assert_eq!(
        understudy::initramfs::modules::modules_for_modaliases(
            &["usb:v0781p5567d0100dc00dsc00dp00ic08isc06ip62in00"],
            &index
        ),
        ["usb_common", "usbcore", "usb_storage", "uas"]
    );

    // The report accounts for everything and says what was left out.
    assert_eq!(report.builtin, ["virtio_pci"]);
    assert!(
        report.missing.contains(&"module nvme".to_string()),
        "{:?}",
        report.missing
    );
    assert_eq!(report.modules.len(), 13);
    // Both parts' data, each member's header and padding aside.
    let total: u64 = report.categories.iter().map(|c| c.bytes).sum();
    let both = report.cpio_bytes - d.compressed_bytes + d.cpio_bytes;
    assert!(total < both && both - total < 200 * report.entries as u64);
    let init = report
        .categories
        .iter()
        .find(|c| c.category == Category::Init)
        .unwrap();
    assert_eq!(
        init.bytes,
        fs::metadata(env!("CARGO_BIN_EXE_understudy"))
            .unwrap()
            .len()
    );
    assert_eq!(report.largest[0].path, "/init");
    let text = report.to_string();
    assert!(
        text.contains("MiB compressed") && text.contains("kernel modules"),
        "{text}"
    );

    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn building_twice_gives_the_same_bytes() {
    let dir = scratch("repro");
    let (a, _) = build(&dir, "a.img");
    let (b, _) = build(&dir, "b.img");
    let (a, b) = (fs::read(a).unwrap(), fs::read(b).unwrap());
    assert!(
        a == b,
        "two builds differ ({} and {} bytes)",
        a.len(),
        b.len()
    );
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_busybox_script_can_be_init_and_a_missing_required_tool_fails_the_build() {
    let dir = scratch("script");
    let mut s = spec(&dir.join("script.img"));
    s.init = Init::BusyboxScript("#!/bin/sh\necho hi\n".into());
    initramfs::build(&s).unwrap();
    let root = dir.join("root");
    fs::create_dir_all(&root).unwrap();
    unpack(&dir.join("script.img"), &root);
    // Nothing in a busybox script's image could unpack a deferred part.
    assert!(!root.join(deferred::NAME).exists());
    assert!(root.join("usr/bin/busybox").is_file());
    assert_eq!(
        Cmd::new("chroot")
            .arg(&root)
            .arg("/init")
            .output()
            .unwrap()
            .text(),
        "hi\n"
    );

    let mut s = spec(&dir.join("bad.img"));
    s.tools.push(initramfs::Tool {
        name: "no-such-tool".into(),
        required: true,
    });
    let err = initramfs::build(&s).unwrap_err();
    assert!(
        format!("{err:#}").contains("required tool no-such-tool"),
        "{err:#}"
    );
    assert!(!dir.join("bad.img").exists() && !dir.join("bad.img.partial").exists());

    // A dynamically linked /init would not start before its libraries: refused.
    let mut s = spec(&dir.join("dyn.img"));
    s.init = Init::Binary("/usr/sbin/mke2fs".into());
    assert!(format!("{:#}", initramfs::build(&s).unwrap_err()).contains("dynamically linked"));
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_stripped_init_is_smaller_and_still_runs() {
    let dir = scratch("strip");
    let mut s = spec(&dir.join("stripped.img"));
    s.strip_init = true;
    let report = initramfs::build(&s).unwrap();
    let full = fs::metadata(env!("CARGO_BIN_EXE_understudy"))
        .unwrap()
        .len();
    let init = report
        .categories
        .iter()
        .find(|c| c.category == Category::Init)
        .unwrap();
    assert!(init.bytes * 2 < full, "{} of {full} bytes", init.bytes);
    assert!(!dir.join("stripped.img.init-stripped").exists());
    let root = dir.join("root");
    fs::create_dir_all(&root).unwrap();
    unpack(&dir.join("stripped.img"), &root);
    let out = Cmd::new("chroot")
        .arg(&root)
        .args(["/init", "--version"])
        .output()
        .unwrap();
    assert!(out.text().starts_with("understudy "), "{out:?}");
    fs::remove_dir_all(&dir).unwrap();
}
