//! Swap areas made by hand: the version-1 swap header the kernel and `mkswap` agree on
//! (`union swap_header` in `include/linux/swap.h`), with a chosen UUID and label.
//! Written here so the recovery image needs no util-linux `mkswap` (busybox's cannot
//! set a UUID, and the restored fstab may name the swap area by it).
//!
//! Owns: the header's bytes ([`header`]) and writing it ([`make`]). Does not own:
//! deciding which swap areas to make (`plan`).

use std::fs::OpenOptions;
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;

use anyhow::{Context, Result, bail, ensure};
use uuid::Uuid;

/// The signature at the end of the first page.
const MAGIC: &[u8; 10] = b"SWAPSPACE2";
/// `swap_header.info` starts after 1024 bytes of boot bits.
const INFO: usize = 1024;

/// The first page of a swap area of `size` bytes with `page`-byte pages: version 1,
/// `last_page`, no bad pages, `uuid`, `label` (at most 16 bytes), magic at its end.
pub fn header(size: u64, page: usize, uuid: Uuid, label: Option<&str>) -> Result<Vec<u8>> {
    ensure!(
        page >= 4096 && page.is_power_of_two(),
        "page size {page} is not supported"
    );
    let pages = size / page as u64;
    ensure!(
        pages >= 10,
        "a swap area of {size} bytes is too small (fewer than 10 pages)"
    );
    let last_page = u32::try_from(pages - 1).context("the swap area is too large")?;
    let label = label.unwrap_or("").as_bytes();
    if label.len() > 16 {
        bail!(
            "swap label {:?} is longer than 16 bytes",
            String::from_utf8_lossy(label)
        );
    }
    let mut h = vec![0u8; page];
    h[INFO..INFO + 4].copy_from_slice(&1u32.to_ne_bytes());
    h[INFO + 4..INFO + 8].copy_from_slice(&last_page.to_ne_bytes());
    // nr_badpages stays 0.
    h[INFO + 12..INFO + 28].copy_from_slice(uuid.as_bytes());
    h[INFO + 28..INFO + 28 + label.len()].copy_from_slice(label);
    h[page - MAGIC.len()..].copy_from_slice(MAGIC);
    Ok(h)
}

/// Write a swap header on `device` (a partition or LV), synced.
pub fn make(device: &Path, uuid: Uuid, label: Option<&str>) -> Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .open(device)
        .with_context(|| format!("opening {} to make swap", device.display()))?;
    let size = f
        .seek(SeekFrom::End(0))
        .with_context(|| format!("measuring {}", device.display()))?;
    let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .and_then(|p| usize::try_from(p).ok())
        .unwrap_or(4096);
    let h = header(size, page, uuid, label)
        .with_context(|| format!("making swap on {}", device.display()))?;
    f.seek(SeekFrom::Start(0))
        .and_then(|_| f.write_all(&h))
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing the swap header on {}", device.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blkid_reads_our_uuid_and_label() {
        let dir = std::env::temp_dir().join(format!("understudy-swap-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("swap.img");
        std::fs::write(&path, vec![0xA5u8; 4 << 20]).unwrap();
        let uuid = Uuid::parse_str("5e0c1d2e-3f40-4a5b-8c6d-7e8f90a1b2c3").unwrap();
        make(&path, uuid, Some("swappy")).unwrap();
        let sig = crate::disk::probe::volume(&path).unwrap().unwrap();
        assert_eq!(sig.kind, "swap");
        assert_eq!(
            sig.uuid.as_deref(),
            Some("5e0c1d2e-3f40-4a5b-8c6d-7e8f90a1b2c3")
        );
        assert_eq!(sig.label.as_deref(), Some("swappy"));
        // libblkid reads version 1 and the page count (1024 pages of 4 KiB).
        assert_eq!(sig.version.as_deref(), Some("1"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn refuses_what_the_kernel_would() {
        let u = Uuid::nil();
        assert!(header(4096 * 9, 4096, u, None).is_err());
        assert!(header(1 << 20, 4096, u, Some("seventeen-bytes!!")).is_err());
        let h = header(1 << 20, 4096, u, None).unwrap();
        assert_eq!(&h[4096 - 10..], b"SWAPSPACE2");
        assert_eq!(u32::from_ne_bytes(h[1028..1032].try_into().unwrap()), 255);
    }
}
