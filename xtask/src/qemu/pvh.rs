//! A faster direct kernel boot: the uncompressed `vmlinux` inside a bzImage,
//! which QEMU boots through the kernel's PVH entry point (`CONFIG_PVH`),
//! skipping the seconds the bzImage spends decompressing itself under TCG.
//! Only for `-kernel` boots; firmware and GRUB boots load the bzImage as a
//! real machine would. It does not choose which boot a scenario uses.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::run::Cmd;

/// The start of an XZ stream (the compression Debian's kernels use).
const XZ_MAGIC: &[u8] = b"\xfd7zXZ\x00";

/// `XEN_ELFNOTE_PHYS32_ENTRY`: the note QEMU looks for to boot an ELF kernel
/// through PVH.
const PHYS32_ENTRY: u32 = 18;

/// The `vmlinux` for `bzimage`, kept in `cache_dir` under the bzImage's name,
/// or `None` when it cannot be PVH-booted (not XZ-compressed, or built
/// without `CONFIG_PVH`): then boot the bzImage itself.
pub fn vmlinux_for(bzimage: &Path, cache_dir: &Path) -> Result<Option<PathBuf>> {
    let name = bzimage
        .file_name()
        .with_context(|| format!("kernel path {} has no file name", bzimage.display()))?
        .to_string_lossy()
        .replacen("vmlinuz", "vmlinux", 1);
    let out = cache_dir.join(format!("{name}.pvh"));
    let newer = |a: &Path, b: &Path| -> bool {
        let m = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        matches!((m(a), m(b)), (Some(a), Some(b)) if a >= b)
    };
    if out.is_file() && newer(&out, bzimage) {
        return Ok(Some(out));
    }
    let image = std::fs::read(bzimage).with_context(|| format!("reading {}", bzimage.display()))?;
    let Some(start) = image.windows(XZ_MAGIC.len()).position(|w| w == XZ_MAGIC) else {
        return Ok(None);
    };
    std::fs::create_dir_all(cache_dir)
        .with_context(|| format!("creating {}", cache_dir.display()))?;
    let tmp = cache_dir.join(format!("{name}.pvh.tmp"));
    let packed = cache_dir.join(format!("{name}.pvh.tmp.xz"));
    std::fs::write(&packed, &image[start..])
        .with_context(|| format!("writing {}", packed.display()))?;
    // `xz -d` turns X.xz into X; `--single-stream` ignores the bzImage's
    // trailer after the stream.
    Cmd::new("xz")
        .args(["-d", "-f", "-q", "--single-stream"])
        .arg(&packed)
        .output()
        .with_context(|| format!("decompressing the XZ payload of {}", bzimage.display()))?;
    let elf = std::fs::read(&tmp).with_context(|| format!("reading {}", tmp.display()))?;
    if !has_pvh_entry(&elf) {
        let _ = std::fs::remove_file(&tmp);
        return Ok(None);
    }
    std::fs::rename(&tmp, &out).with_context(|| format!("renaming {}", tmp.display()))?;
    Ok(Some(out))
}

fn has_pvh_entry(elf: &[u8]) -> bool {
    let Ok(parsed) = goblin::elf::Elf::parse(elf) else {
        return false;
    };
    parsed.iter_note_headers(elf).is_some_and(|notes| {
        notes
            .flatten()
            .any(|n| n.n_type == PHYS32_ENTRY && n.name.trim_end_matches('\0') == "Xen")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_elf_files_with_the_pvh_note_qualify() {
        assert!(!has_pvh_entry(b"\x7fELF truncated"));
        assert!(!has_pvh_entry(b"MZ not a kernel"));
    }
}
