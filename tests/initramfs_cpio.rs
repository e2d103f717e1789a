//! Our newc writer read by GNU cpio: every member type, data lengths around the
//! 4-byte padding, long names, and the trailer, listed with `cpio -tv` and
//! extracted with `cpio -idm`.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use understudy::cmd::Cmd;
use understudy::initramfs::cpio::{Header, Node, Writer};

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("understudy-cpio-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&d);
    fs::create_dir_all(&d).unwrap();
    d
}

fn header(name: &str, node: Node, perm: u32, size: usize) -> Header {
    Header {
        name: name.to_string(),
        node,
        perm,
        mtime: 1_000_000_000,
        size_bytes: u32::try_from(size).unwrap(),
    }
}

#[test]
fn gnu_cpio_lists_and_extracts_what_we_write() {
    let long = format!("d/{}", "n".repeat(200));
    let mut files: Vec<(String, Vec<u8>)> = (0..9)
        .map(|n| {
            (
                format!("d/len{n}"),
                vec![b'a' + u8::try_from(n).unwrap(); n],
            )
        })
        .collect();
    files.push((long.clone(), b"long name".to_vec()));
    files.push((
        "d/big".into(),
        (0..100_003u32)
            .map(|i| u8::try_from(i % 251).unwrap())
            .collect(),
    ));

    let mut w = Writer::new(Vec::new());
    w.append(&header("d", Node::Dir, 0o750, 0), b"").unwrap();
    for (name, data) in &files {
        w.append(&header(name, Node::File, 0o640, data.len()), data)
            .unwrap();
    }
    w.append(&header("d/link", Node::Symlink, 0o777, 4), b"len3")
        .unwrap();
    w.append(
        &header("d/console", Node::CharDev { major: 5, minor: 1 }, 0o600, 0),
        b"",
    )
    .unwrap();
    let (archive, len) = w.finish().unwrap();
    assert_eq!(len, archive.len() as u64);

    let listing = Cmd::new("cpio")
        .args(["-tv", "--quiet"])
        .stdin(archive.clone())
        .output()
        .unwrap()
        .text();
    let lines: Vec<&str> = listing.lines().collect();
    assert_eq!(lines.len(), files.len() + 3, "{listing}");
    assert!(lines[0].starts_with("drwxr-x---"), "{}", lines[0]);
    assert!(
        listing.contains("crw-------   1 root     root       5,   1"),
        "{listing}"
    );
    assert!(listing.contains("d/link -> len3"), "{listing}");
    assert!(listing.contains(&long), "{listing}");
    // 2001-09-09, the mtime given.
    assert!(
        lines.iter().all(|l| l.contains("Sep  9  2001")),
        "{listing}"
    );

    // Extract everything but the device node (making it needs CAP_MKNOD, and that
    // is the kernel's unpacker's business).
    let dir = scratch("extract");
    Cmd::new("cpio")
        .args(["-idm", "--quiet", "--nonmatching", "d/console"])
        .dir(&dir)
        .stdin(archive)
        .run()
        .unwrap();
    for (name, data) in &files {
        assert_eq!(&fs::read(dir.join(name)).unwrap(), data, "{name}");
        let meta = fs::metadata(dir.join(name)).unwrap();
        assert_eq!(meta.mode() & 0o7777, 0o640, "{name}");
        assert_eq!(meta.mtime(), 1_000_000_000, "{name}");
    }
    assert_eq!(
        fs::read_link(dir.join("d/link")).unwrap(),
        PathBuf::from("len3")
    );
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn each_member_gets_its_own_inode_so_nothing_reads_as_a_hardlink() {
    let mut w = Writer::new(Vec::new());
    for name in ["a", "b", "c"] {
        w.append(&header(name, Node::File, 0o644, 3), b"xyz")
            .unwrap();
    }
    let (archive, _) = w.finish().unwrap();
    // GNU cpio would link members sharing an inode (with nlink > 1) on extraction.
    let dir = scratch("inodes");
    Cmd::new("cpio")
        .args(["-idm", "--quiet"])
        .dir(&dir)
        .stdin(archive.clone())
        .run()
        .unwrap();
    let inodes: Vec<u64> = ["a", "b", "c"]
        .iter()
        .map(|n| fs::metadata(dir.join(n)).unwrap().ino())
        .collect();
    assert!(
        inodes[0] != inodes[1] && inodes[1] != inodes[2],
        "{inodes:?}"
    );
    fs::remove_dir_all(&dir).unwrap();
    // The header's ino fields are 1, 2, 3 in write order.
    let ino_at = |offset: usize| {
        std::str::from_utf8(&archive[offset + 6..offset + 14])
            .unwrap()
            .to_string()
    };
    assert_eq!(ino_at(0), "00000001");
    // 110 + "a\0" padded to 112, + 3 data + 1 padding = 116.
    assert_eq!(ino_at(116), "00000002");
    assert_eq!(ino_at(232), "00000003");
}
