//! LVM as its own tools report it: a pure parser of `pvs`, `vgs` and `lvs` JSON
//! reports (`--reportformat json --units b --nosuffix`), and the small executor that
//! runs them through [`crate::cmd::Cmd`] when lvm is installed.
//!
//! Does not own: creating or changing volumes (snapshot and provision do), or probing
//! LVs for filesystems (the inventory does, through `probe`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use serde::{Deserialize, Serialize};

use super::{Bytes, Signature, Usage};
use crate::cmd::Cmd;

/// The fields asked of each report. `lvs` rows are per segment (because of
/// `devices`); [`parse_lvs`] merges them per LV.
pub const PV_FIELDS: &str = "pv_name,pv_uuid,vg_name,pv_fmt,pv_size,pv_free,dev_size,pv_attr";
pub const VG_FIELDS: &str =
    "vg_name,vg_uuid,vg_size,vg_free,vg_extent_size,pv_count,lv_count,vg_attr";
pub const LV_FIELDS: &str =
    "lv_name,vg_name,lv_uuid,lv_size,lv_path,lv_dm_path,lv_attr,origin,segtype,devices";

/// A physical volume.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pv {
    pub path: PathBuf,
    pub uuid: String,
    /// `None` for an orphan PV.
    pub vg: Option<String>,
    pub size: Bytes,
    pub free: Bytes,
    pub dev_size: Bytes,
    pub attr: String,
}

/// A volume group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vg {
    pub name: String,
    pub uuid: String,
    pub size: Bytes,
    pub free: Bytes,
    pub extent_size: Bytes,
    pub pv_count: u32,
    pub lv_count: u32,
    pub attr: String,
}

/// A logical volume, with what the inventory found on its device when active.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lv {
    pub name: String,
    pub vg: String,
    pub uuid: String,
    pub size: Bytes,
    /// `/dev/VG/LV`.
    pub path: Option<PathBuf>,
    /// `/dev/mapper/VG-LV`.
    pub dm_path: Option<PathBuf>,
    pub attr: String,
    /// The LV this one is a snapshot of.
    pub origin: Option<String>,
    /// Segment types in order (`linear`, `striped`, ...).
    pub segtypes: Vec<String>,
    /// PVs holding the LV's extents, in segment order, without extent numbers.
    pub devices: Vec<PathBuf>,
    /// Kernel name of the dm device when active (`dm-0`).
    pub device: Option<String>,
    pub signature: Option<Signature>,
    pub error: Option<String>,
    pub usage: Usage,
}

impl Lv {
    /// Active, by the fifth `lv_attr` character.
    pub fn is_active(&self) -> bool {
        self.attr.chars().nth(4) == Some('a')
    }

    /// The device-mapper name (`vg0-root`), from the dm path.
    pub fn dm_name(&self) -> Option<String> {
        self.dm_path
            .as_ref()?
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
    }
}

/// LVM as found.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lvm {
    pub pvs: Vec<Pv>,
    pub vgs: Vec<Vg>,
    pub lvs: Vec<Lv>,
}

/// Whether LVM could be looked at.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", content = "detail", rename_all = "snake_case")]
pub enum LvmStatus {
    /// Not asked for.
    Skipped,
    /// No `lvm` program on this system.
    NotInstalled,
    /// A report failed or could not be parsed.
    Failed(String),
    Found(Lvm),
}

/// The rows of a report: `{"report":[{"pv":[{...},...]}]}`. Every value is a string.
fn rows(json: &str, key: &str) -> Result<Vec<BTreeMap<String, String>>> {
    #[derive(Deserialize)]
    struct Report {
        report: Vec<BTreeMap<String, Vec<BTreeMap<String, String>>>>,
    }
    let r: Report = serde_json::from_str(json).context("parsing an lvm JSON report")?;
    Ok(r.report
        .into_iter()
        .flat_map(|mut section| section.remove(key).unwrap_or_default())
        .collect())
}

struct Row<'a>(&'a BTreeMap<String, String>);

impl Row<'_> {
    fn text(&self, k: &str) -> Result<String> {
        self.0
            .get(k)
            .cloned()
            .ok_or_else(|| anyhow!("field {k} missing from an lvm report row"))
    }

    fn opt(&self, k: &str) -> Option<String> {
        self.0.get(k).filter(|v| !v.is_empty()).cloned()
    }

    /// Sizes come as bytes (`--units b --nosuffix`); a stray `B` suffix is accepted.
    fn bytes(&self, k: &str) -> Result<Bytes> {
        let v = self.text(k)?;
        let digits = v.trim().trim_end_matches('B');
        digits
            .parse::<u64>()
            .map(Bytes)
            .with_context(|| format!("field {k}: {v:?} is not a byte count"))
    }

    fn count(&self, k: &str) -> Result<u32> {
        let v = self.text(k)?;
        v.trim()
            .parse()
            .with_context(|| format!("field {k}: {v:?} is not a count"))
    }
}

pub fn parse_pvs(json: &str) -> Result<Vec<Pv>> {
    rows(json, "pv")?
        .iter()
        .map(|r| {
            let r = Row(r);
            Ok(Pv {
                path: r.text("pv_name")?.into(),
                uuid: r.text("pv_uuid")?,
                vg: r.opt("vg_name"),
                size: r.bytes("pv_size")?,
                free: r.bytes("pv_free")?,
                dev_size: r.bytes("dev_size")?,
                attr: r.text("pv_attr")?,
            })
        })
        .collect()
}

pub fn parse_vgs(json: &str) -> Result<Vec<Vg>> {
    rows(json, "vg")?
        .iter()
        .map(|r| {
            let r = Row(r);
            Ok(Vg {
                name: r.text("vg_name")?,
                uuid: r.text("vg_uuid")?,
                size: r.bytes("vg_size")?,
                free: r.bytes("vg_free")?,
                extent_size: r.bytes("vg_extent_size")?,
                pv_count: r.count("pv_count")?,
                lv_count: r.count("lv_count")?,
                attr: r.text("vg_attr")?,
            })
        })
        .collect()
}

/// LVs, one per UUID: `lvs` prints one row per segment when segment fields such as
/// `devices` are asked for.
pub fn parse_lvs(json: &str) -> Result<Vec<Lv>> {
    let mut out: Vec<Lv> = Vec::new();
    for r in rows(json, "lv")? {
        let r = Row(&r);
        let uuid = r.text("lv_uuid")?;
        let devices: Vec<PathBuf> = r
            .opt("devices")
            .unwrap_or_default()
            .split(',')
            .filter(|d| !d.is_empty())
            // "/dev/vda3(0)": the extent number is not part of the path.
            .map(|d| d.rsplit_once('(').map_or(d, |(p, _)| p).into())
            .collect();
        let segtype = r.opt("segtype");
        if let Some(lv) = out.iter_mut().find(|l| l.uuid == uuid) {
            lv.devices.extend(devices);
            lv.segtypes.extend(segtype);
            continue;
        }
        out.push(Lv {
            name: r.text("lv_name")?,
            vg: r.text("vg_name")?,
            uuid,
            size: r.bytes("lv_size")?,
            path: r.opt("lv_path").map(PathBuf::from),
            dm_path: r.opt("lv_dm_path").map(PathBuf::from),
            attr: r.text("lv_attr")?,
            origin: r.opt("origin"),
            segtypes: segtype.into_iter().collect(),
            devices,
            device: None,
            signature: None,
            error: None,
            usage: Usage::default(),
        });
    }
    for lv in &mut out {
        lv.devices.dedup();
    }
    Ok(out)
}

fn parse_all(pvs: &str, vgs: &str, lvs: &str) -> Result<Lvm> {
    Ok(Lvm {
        pvs: parse_pvs(pvs).context("in the pvs report")?,
        vgs: parse_vgs(vgs).context("in the vgs report")?,
        lvs: parse_lvs(lvs).context("in the lvs report")?,
    })
}

/// Read captured reports `pvs.json`, `vgs.json`, `lvs.json` from `dir`.
pub fn load(dir: &Path) -> LvmStatus {
    let read = |n: &str| {
        let p = dir.join(n);
        std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))
    };
    let all = || parse_all(&read("pvs.json")?, &read("vgs.json")?, &read("lvs.json")?);
    match all() {
        Ok(l) => LvmStatus::Found(l),
        Err(e) => LvmStatus::Failed(format!("{e:#}")),
    }
}

/// The `lvm` program, if installed: looked for in `PATH` and the sbin directories a
/// non-root `PATH` often lacks.
fn lvm_program() -> Option<PathBuf> {
    crate::cmd::find_program("lvm")
}

/// The command line of one report.
pub fn report_cmd(program: &Path, report: &str, fields: &str) -> Cmd {
    Cmd::new(program)
        .args([
            report,
            "--reportformat",
            "json",
            "--units",
            "b",
            "--nosuffix",
        ])
        .args(["-o", fields])
        // lvm complains on stderr about every inherited descriptor otherwise.
        .env("LVM_SUPPRESS_FD_WARNINGS", "1")
}

/// Run the three reports.
pub fn run() -> LvmStatus {
    let Some(lvm) = lvm_program() else {
        return LvmStatus::NotInstalled;
    };
    let report = |name: &str, fields: &str| -> Result<String> {
        let out = report_cmd(&lvm, name, fields).output()?;
        if out.stdout.is_empty() {
            bail!("`lvm {name}` printed nothing");
        }
        Ok(out.text())
    };
    let all = || {
        parse_all(
            &report("pvs", PV_FIELDS)?,
            &report("vgs", VG_FIELDS)?,
            &report("lvs", LV_FIELDS)?,
        )
    };
    match all() {
        Ok(l) => LvmStatus::Found(l),
        Err(e) => LvmStatus::Failed(format!("{e:#}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lvs_segments_merge_into_one_lv() {
        let json = r#"{"report":[{"lv":[
            {"lv_name":"data","vg_name":"vg0","lv_uuid":"U1","lv_size":"25165824","lv_path":"/dev/vg0/data","lv_dm_path":"/dev/mapper/vg0-data","lv_attr":"-wi-a-----","origin":"","segtype":"linear","devices":"/dev/vda3(0)"},
            {"lv_name":"data","vg_name":"vg0","lv_uuid":"U1","lv_size":"25165824","lv_path":"/dev/vg0/data","lv_dm_path":"/dev/mapper/vg0-data","lv_attr":"-wi-a-----","origin":"","segtype":"linear","devices":"/dev/vdb1(0)"},
            {"lv_name":"snap","vg_name":"vg0","lv_uuid":"U2","lv_size":"8388608","lv_path":"/dev/vg0/snap","lv_dm_path":"/dev/mapper/vg0-snap","lv_attr":"swi-XX-s--","origin":"data","segtype":"linear","devices":"/dev/vdb1(10)"}
        ]}]}"#;
        let lvs = parse_lvs(json).unwrap();
        assert_eq!(lvs.len(), 2);
        assert_eq!(
            lvs[0].devices,
            vec![PathBuf::from("/dev/vda3"), PathBuf::from("/dev/vdb1")]
        );
        assert_eq!(lvs[0].segtypes, ["linear", "linear"]);
        assert!(lvs[0].is_active());
        assert_eq!(lvs[0].dm_name().as_deref(), Some("vg0-data"));
        assert_eq!(lvs[1].origin.as_deref(), Some("data"));
        assert!(!lvs[1].is_active());
    }

    #[test]
    fn orphan_pv_and_suffix() {
        let json = r#"{"report":[{"pv":[{"pv_name":"/dev/sdb","pv_uuid":"P","vg_name":"","pv_fmt":"lvm2","pv_size":"1073741824B","pv_free":"1073741824","dev_size":"1073741824","pv_attr":"---"}]}]}"#;
        let pvs = parse_pvs(json).unwrap();
        assert_eq!(pvs[0].vg, None);
        assert_eq!(pvs[0].size, Bytes(1 << 30));
    }

    #[test]
    fn broken_reports_say_what_is_wrong() {
        let e = parse_vgs(r#"{"report":[{"vg":[{"vg_name":"vg0"}]}]}"#).unwrap_err();
        assert!(format!("{e:#}").contains("vg_uuid"), "{e:#}");
        let e = parse_pvs(r#"{"report":[{"pv":[{"pv_name":"/dev/a","pv_uuid":"P","vg_name":"","pv_fmt":"lvm2","pv_size":"1.5g","pv_free":"0","dev_size":"0","pv_attr":""}]}]}"#).unwrap_err();
        assert!(format!("{e:#}").contains("pv_size"), "{e:#}");
        assert!(parse_lvs("not json").is_err());
        // An empty report is no LVs, not an error.
        assert!(parse_lvs(r#"{"report":[{"lv":[]}]}"#).unwrap().is_empty());
    }

    #[test]
    fn report_command_line() {
        let c = report_cmd(Path::new("/usr/sbin/lvm"), "pvs", PV_FIELDS);
        assert_eq!(
            c.display(),
            format!("/usr/sbin/lvm pvs --reportformat json --units b --nosuffix -o {PV_FIELDS}")
        );
    }
}
