//! The inventory as text for a person (`understudy disks`): one block per disk, its
//! partitions and what is on them, then LVM, swaps and problems.
//!
//! Does not own: JSON output (serde on the types), or the recovery console's screens.

use std::fmt::{self, Write};

use super::{Disk, Inventory, LvmStatus, Partition, Signature, Usage};

fn opt(v: &Option<String>) -> &str {
    v.as_deref().unwrap_or("-")
}

fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

fn signature(s: &Signature) -> String {
    let mut out = s.kind.clone();
    if let Some(v) = &s.version {
        let _ = write!(out, " {v}");
    }
    if let Some(u) = &s.uuid {
        let _ = write!(out, " UUID={u}");
    }
    if let Some(l) = &s.label {
        let _ = write!(out, " LABEL={l:?}");
    }
    if s.bad_checksum {
        out.push_str(" (BAD CHECKSUM)");
    }
    out
}

fn usage(u: &Usage) -> String {
    let mut parts: Vec<String> = u
        .mounts
        .iter()
        .map(|m| format!("mounted at {}", m.display()))
        .collect();
    if u.swap {
        parts.push("swap".into());
    }
    parts.extend(u.holders.iter().map(|h| format!("held by {h}")));
    parts.join(", ")
}

fn partition(f: &mut fmt::Formatter<'_>, p: &Partition) -> fmt::Result {
    let dev = p.device.clone().unwrap_or_else(|| format!("#{}", p.number));
    write!(
        f,
        "  {dev:<10} #{:<3} start {:>10}  size {:>10}  type {}",
        p.number,
        p.start.human(),
        p.size.human(),
        opt(&p.type_guid),
    )?;
    if let Some(n) = &p.name {
        write!(f, "  name {n:?}")?;
    }
    if let Some(u) = &p.uuid {
        write!(f, "  partuuid {u}")?;
    }
    writeln!(f)?;
    let mut what = Vec::new();
    if p.extended {
        what.push("extended partition".to_string());
    }
    if let Some(s) = &p.signature {
        what.push(signature(s));
    }
    if let Some(e) = &p.error {
        what.push(format!("unreadable: {e}"));
    }
    let u = usage(&p.usage);
    if !u.is_empty() {
        what.push(u);
    }
    if what.is_empty() {
        what.push("no signature".into());
    }
    writeln!(f, "  {:<10}      {}", "", what.join("; "))
}

fn disk(f: &mut fmt::Formatter<'_>, d: &Disk) -> fmt::Result {
    writeln!(
        f,
        "{}: {} disk, {} ({} bytes), sectors {}/{} B",
        d.path.display(),
        d.transport,
        d.size.human(),
        d.size,
        d.logical_sector,
        d.physical_sector
    )?;
    writeln!(
        f,
        "  model {}, vendor {}, serial {}, wwn {}, removable {}, read-only {}",
        opt(&d.model),
        opt(&d.vendor),
        opt(&d.serial),
        opt(&d.wwn),
        yes_no(d.removable),
        yes_no(d.read_only)
    )?;
    writeln!(f, "  state: {}", d.state)?;
    match &d.table {
        Some(t) => writeln!(f, "  partition table: {} {}", t.kind, opt(&t.id))?,
        None => writeln!(f, "  partition table: none")?,
    }
    if let Some(s) = &d.signature {
        writeln!(f, "  whole disk: {}", signature(s))?;
    }
    let u = usage(&d.usage);
    if !u.is_empty() {
        writeln!(f, "  whole disk: {u}")?;
    }
    for p in &d.partitions {
        partition(f, p)?;
    }
    Ok(())
}

pub(super) fn inventory(inv: &Inventory, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    if inv.disks.is_empty() {
        writeln!(f, "no disks found")?;
    }
    for d in &inv.disks {
        disk(f, d)?;
        writeln!(f)?;
    }
    match &inv.lvm {
        LvmStatus::Skipped => writeln!(f, "LVM: not looked at")?,
        LvmStatus::NotInstalled => writeln!(f, "LVM: lvm is not installed")?,
        LvmStatus::Failed(e) => writeln!(f, "LVM: reports failed: {e}")?,
        LvmStatus::Found(l) if l.pvs.is_empty() => writeln!(f, "LVM: no physical volumes")?,
        LvmStatus::Found(l) => {
            writeln!(f, "LVM:")?;
            for vg in &l.vgs {
                writeln!(
                    f,
                    "  VG {} {} (free {}), extents {}, uuid {}",
                    vg.name,
                    vg.size.human(),
                    vg.free.human(),
                    vg.extent_size.human(),
                    vg.uuid
                )?;
            }
            for pv in &l.pvs {
                writeln!(
                    f,
                    "  PV {} in {} {} (free {}), uuid {}",
                    pv.path.display(),
                    pv.vg.as_deref().unwrap_or("(no VG)"),
                    pv.size.human(),
                    pv.free.human(),
                    pv.uuid
                )?;
            }
            for lv in &l.lvs {
                let mut what = vec![if lv.is_active() { "active" } else { "inactive" }.to_string()];
                if let Some(o) = &lv.origin {
                    what.push(format!("snapshot of {o}"));
                }
                if let Some(s) = &lv.signature {
                    what.push(signature(s));
                }
                if let Some(e) = &lv.error {
                    what.push(format!("unreadable: {e}"));
                }
                let u = usage(&lv.usage);
                if !u.is_empty() {
                    what.push(u);
                }
                writeln!(
                    f,
                    "  LV {}/{} {} on {}, uuid {}: {}",
                    lv.vg,
                    lv.name,
                    lv.size.human(),
                    lv.devices
                        .iter()
                        .map(|d| d.display().to_string())
                        .collect::<Vec<_>>()
                        .join(","),
                    lv.uuid,
                    what.join("; ")
                )?;
            }
        }
    }
    if inv.swaps.is_empty() {
        writeln!(f, "swap: none active")?;
    }
    for s in &inv.swaps {
        writeln!(
            f,
            "swap: {} ({}) {} used {}",
            s.path.display(),
            s.kind,
            s.size.human(),
            s.used.human()
        )?;
    }
    for p in &inv.problems {
        writeln!(f, "problem: {p}")?;
    }
    Ok(())
}
