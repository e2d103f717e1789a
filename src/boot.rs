//! The secondary disk's boot chain as pure values: the GRUB configuration of the
//! recovery partition ([`render_grub_cfg`] from a [`SecondaryBoot`]), GRUB's early
//! configuration that finds it ([`render_early_cfg`]), and the GRUB environment block
//! that holds the emergency copy's state ([`Env`], [`encode`], [`decode`]), kept in two
//! copies ([`write_copies`] writes B then A, [`read_copies`] takes A, else B).
//!
//! Owns: the text of the configurations, the environment block format and the
//! two-copy order. Does not own: installing GRUB or building disks (xtask `images`,
//! later `provision`), the files' I/O (callers pass closures), deciding when the
//! emergency copy is ready (expand). The layout of the recovery partition and the
//! menu's behaviour are described in `docs/boot.md`.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use anyhow::{Result, bail};

/// Size of a GRUB environment block, as `grub-editenv` writes it and `load_env` reads it.
pub const ENV_BLOCK_BYTES: usize = 1024;

/// The first line of every environment block (GRUB's `GRUB_ENVBLK_SIGNATURE`).
pub const ENV_HEADER: &str = "# GRUB Environment Block\n";

/// The last key of every block we write: CRC-32 (IEEE) of the bytes before its line,
/// in 8 lowercase hex digits. GRUB ignores it; [`decode`] uses it to tell a torn write
/// from a block that merely parses.
pub const CHECK_KEY: &str = "understudy_check";

/// The key GRUB's menu reads: `1` when the emergency copy is complete and bootable.
pub const EMERGENCY_READY_KEY: &str = "emergency_ready";

/// The image the emergency copy was expanded from (informational).
pub const EMERGENCY_IMAGE_KEY: &str = "emergency_image";

/// Where the two copies live on the recovery partition (its root is GRUB's `$root`).
pub const ENV_PATH_A: &str = "/grub/grubenv";
pub const ENV_PATH_B: &str = "/grub/grubenv.b";

/// Where the recovery partition's GRUB configuration lives (GRUB's `$prefix` is `/grub`).
pub const GRUB_CFG_PATH: &str = "/grub/grub.cfg";

/// A one-shot choice for the next boot, in an environment block of its own (so GRUB's
/// `save_env`, which clears it, never touches the checked state blocks): the recovery
/// console leaves `next_entry=emergency` there when it cannot kexec the emergency copy.
pub const NEXT_ENTRY_PATH: &str = "/grub/next-entry";
/// The variable in [`NEXT_ENTRY_PATH`].
pub const NEXT_ENTRY_KEY: &str = "next_entry";

/// The recovery kernel and initramfs on the recovery partition.
pub const RECOVERY_KERNEL_PATH: &str = "/boot/vmlinuz";
pub const RECOVERY_INITRD_PATH: &str = "/boot/initrd.img";

/// The variables of an environment block, in key order (what GRUB's `load_env` sets).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Env {
    pub vars: BTreeMap<String, String>,
}

impl Env {
    /// Whether the block says the emergency copy may be booted.
    pub fn emergency_ready(&self) -> bool {
        self.vars.get(EMERGENCY_READY_KEY).map(String::as_str) == Some("1")
    }

    /// The state expand records: ready with the image it came from, or not ready.
    pub fn with_emergency(ready: Option<&str>) -> Env {
        let mut vars = BTreeMap::new();
        match ready {
            Some(image) => {
                vars.insert(EMERGENCY_READY_KEY.to_string(), "1".to_string());
                vars.insert(EMERGENCY_IMAGE_KEY.to_string(), image.to_string());
            }
            None => {
                vars.insert(EMERGENCY_READY_KEY.to_string(), "0".to_string());
            }
        }
        Env { vars }
    }
}

/// The block that makes GRUB boot the emergency copy once (if it is ready), whatever
/// the automatic choice would have been; GRUB clears it as it uses it.
pub fn next_entry_emergency() -> Result<[u8; ENV_BLOCK_BYTES], EnvError> {
    let mut vars = BTreeMap::new();
    vars.insert(NEXT_ENTRY_KEY.to_string(), "emergency".to_string());
    encode(&Env { vars })
}

/// Why a block was refused. Callers branch only on "usable or not"; the text is for logs.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EnvError {
    #[error("the block is {0} bytes, not {ENV_BLOCK_BYTES}")]
    Size(usize),
    #[error("the block does not start with the GRUB environment block header")]
    Header,
    #[error("line {line}: {why}")]
    Line { line: usize, why: String },
    #[error("the padding after the variables is not all `#`")]
    Padding,
    #[error("no {CHECK_KEY} line: not written by understudy, or torn")]
    NoCheck,
    #[error("{CHECK_KEY} does not match the block's contents: torn or corrupted")]
    CheckMismatch,
    #[error("the variables take {0} bytes, more than a block holds")]
    TooLarge(usize),
    #[error("bad variable name {0:?} (letters, digits and `_` only)")]
    BadKey(String),
}

fn valid_key(k: &str) -> bool {
    !k.is_empty() && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// GRUB escapes `\` and newline in values with a backslash (grub-core/lib/envblk.c).
fn escape(value: &str, out: &mut String) {
    for c in value.chars() {
        if c == '\\' || c == '\n' {
            out.push('\\');
        }
        out.push(c);
    }
}

/// The block for `env`: header, `key=value` lines in key order, the check line, `#` to
/// 1024 bytes.
pub fn encode(env: &Env) -> Result<[u8; ENV_BLOCK_BYTES], EnvError> {
    let mut text = String::from(ENV_HEADER);
    for (k, v) in &env.vars {
        if !valid_key(k) || k == CHECK_KEY {
            return Err(EnvError::BadKey(k.clone()));
        }
        text.push_str(k);
        text.push('=');
        escape(v, &mut text);
        text.push('\n');
    }
    let crc = crc32fast::hash(text.as_bytes());
    let _ = writeln!(text, "{CHECK_KEY}={crc:08x}");
    if text.len() > ENV_BLOCK_BYTES {
        return Err(EnvError::TooLarge(text.len()));
    }
    let mut block = [b'#'; ENV_BLOCK_BYTES];
    block[..text.len()].copy_from_slice(text.as_bytes());
    Ok(block)
}

/// The variables of a block we wrote, refusing anything else: wrong size, no header,
/// a line that is not `key=value`, a NUL or other junk in the padding, a missing or
/// wrong check line (a write torn between its sectors).
pub fn decode(block: &[u8]) -> Result<Env, EnvError> {
    if block.len() != ENV_BLOCK_BYTES {
        return Err(EnvError::Size(block.len()));
    }
    let Some(body) = block.strip_prefix(ENV_HEADER.as_bytes()) else {
        return Err(EnvError::Header);
    };
    let mut pos = ENV_HEADER.len();
    let mut rest = body;
    let mut vars = BTreeMap::new();
    let mut line_no = 1;
    let mut checked = false;
    while let Some(&first) = rest.first() {
        if first == b'#' {
            break;
        }
        line_no += 1;
        let bad = |why: &str| EnvError::Line {
            line: line_no,
            why: why.to_string(),
        };
        if checked {
            return Err(bad("a variable after the check line"));
        }
        // A value's escaped newline does not end its line.
        let mut end = None;
        let mut i = 0;
        while i < rest.len() {
            match rest[i] {
                b'\\' => i += 2,
                b'\n' => {
                    end = Some(i);
                    break;
                }
                _ => i += 1,
            }
        }
        let end = end.ok_or_else(|| bad("no newline at its end"))?;
        let line = std::str::from_utf8(&rest[..end]).map_err(|_| bad("not UTF-8"))?;
        if line.contains('\0') {
            return Err(bad("a NUL byte"));
        }
        let (key, raw) = line.split_once('=').ok_or_else(|| bad("no `=`"))?;
        if !valid_key(key) {
            return Err(bad(&format!("bad variable name {key:?}")));
        }
        let mut value = String::new();
        let mut chars = raw.chars();
        while let Some(c) = chars.next() {
            if c == '\\' {
                value.push(chars.next().ok_or_else(|| bad("a trailing backslash"))?);
            } else {
                value.push(c);
            }
        }
        if key == CHECK_KEY {
            let want = format!("{:08x}", crc32fast::hash(&block[..pos]));
            if value != want {
                return Err(EnvError::CheckMismatch);
            }
            checked = true;
        } else if vars.insert(key.to_string(), value).is_some() {
            return Err(bad(&format!("{key} given twice")));
        }
        pos += end + 1;
        rest = &rest[end + 1..];
    }
    if rest.iter().any(|&b| b != b'#') {
        return Err(EnvError::Padding);
    }
    if !checked {
        return Err(EnvError::NoCheck);
    }
    Ok(Env { vars })
}

/// One of the two copies of the environment block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EnvCopy {
    A,
    B,
}

impl EnvCopy {
    /// Its path on the recovery partition.
    pub fn path(self) -> &'static str {
        match self {
            EnvCopy::A => ENV_PATH_A,
            EnvCopy::B => ENV_PATH_B,
        }
    }
}

/// What the two copies say, read as GRUB's menu reads them (A first).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EnvRead {
    /// From copy A; `b_problem` says what is wrong with B, if anything.
    A { env: Env, b_problem: Option<String> },
    /// A was missing, torn or malformed (`a_problem`); B was good.
    B { env: Env, a_problem: String },
    /// Neither copy is usable: the emergency copy counts as not ready.
    Neither {
        a_problem: String,
        b_problem: String,
    },
}

impl EnvRead {
    /// The environment in force, if any.
    pub fn env(&self) -> Option<&Env> {
        match self {
            EnvRead::A { env, .. } | EnvRead::B { env, .. } => Some(env),
            EnvRead::Neither { .. } => None,
        }
    }

    /// Whether GRUB will boot the emergency copy on its own.
    pub fn emergency_ready(&self) -> bool {
        self.env().is_some_and(Env::emergency_ready)
    }
}

/// Chooses between the copies' bytes (`None`: the file is missing): A when it decodes,
/// else B.
pub fn read_copies(a: Option<&[u8]>, b: Option<&[u8]>) -> EnvRead {
    let load = |bytes: Option<&[u8]>| match bytes {
        None => Err("missing".to_string()),
        Some(bytes) => decode(bytes).map_err(|e| e.to_string()),
    };
    match (load(a), load(b)) {
        (Ok(env), b) => EnvRead::A {
            env,
            b_problem: b.err(),
        },
        (Err(a_problem), Ok(env)) => EnvRead::B { env, a_problem },
        (Err(a_problem), Err(b_problem)) => EnvRead::Neither {
            a_problem,
            b_problem,
        },
    }
}

/// Writes `env` to both copies through `write`, B first, then A, each of which must be
/// durable (synced) when `write` returns: a power cut leaves A whole (old or new) or
/// torn with B new, so a reader taking A, else B, sees the old state or the new one.
/// Stops at the first failure.
pub fn write_copies(
    env: &Env,
    mut write: impl FnMut(EnvCopy, &[u8; ENV_BLOCK_BYTES]) -> Result<()>,
) -> Result<()> {
    let block = encode(env)?;
    write(EnvCopy::B, &block)?;
    write(EnvCopy::A, &block)
}

/// The primary disk as recorded at provision time, for the menu's "Primary disk"
/// entry and the presence test.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrimaryDisk {
    /// The primary's root filesystem: found means the primary is present. On LVM, GRUB
    /// finds it through its `lvm` module.
    pub root_fs_uuid: String,
    /// A filesystem on a partition of the primary disk itself (its `/boot`, or the root
    /// when not on LVM): BIOS chainloads the MBR of the disk that holds it.
    pub boot_fs_uuid: String,
    /// The primary's ESP: UEFI chainloads its `EFI/BOOT/BOOTX64.EFI`.
    pub esp_fs_uuid: Option<String>,
}

/// The emergency copy's boot entry (written by expand).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EmergencyEntry {
    pub fs_uuid: String,
    /// On the emergency filesystem (Debian keeps `/vmlinuz` and `/initrd.img` links).
    pub kernel: String,
    pub initrd: String,
    /// Added after `root=UUID=… ro` and the consoles (the remapped command line).
    pub cmdline: Vec<String>,
}

/// Everything the secondary's `grub.cfg` is rendered from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecondaryBoot {
    pub recovery_fs_uuid: String,
    pub emergency: EmergencyEntry,
    pub primary: Option<PrimaryDisk>,
    /// Before the automatic choice when the primary is missing (emergency copy or
    /// recovery console), in seconds.
    pub fallback_timeout_secs: u32,
    /// Before booting the primary when it is present, in seconds.
    pub menu_timeout_secs: u32,
}

/// Menu entry titles (the tests look for them on the serial console).
pub const TITLE_EMERGENCY: &str = "Emergency copy";
pub const TITLE_EMERGENCY_NOT_READY: &str = "Emergency copy (NOT READY)";
pub const TITLE_RECOVERY: &str = "Recovery console";
pub const TITLE_RECOVERY_AUTO: &str = "Recovery console (automatic fallback)";
pub const TITLE_PRIMARY: &str = "Primary disk";

/// The kernel console arguments of every entry: VGA and serial, serial last so that
/// `/dev/console` (where a shell or a message with no other home goes) is the serial
/// line a remote technician sees.
pub const CONSOLES: &str = "console=tty0 console=ttyS0,115200";

/// GRUB modules every image embeds (both platforms); the menu loads none from disk,
/// so a secondary never depends on module files matching its core image.
pub const GRUB_MODULES: &[&str] = &[
    "part_gpt",
    "part_msdos",
    "ext2",
    "fat",
    "lvm",
    "search",
    "search_fs_uuid",
    "search_fs_file",
    "search_label",
    "configfile",
    "normal",
    "linux",
    "chain",
    "echo",
    "test",
    "true",
    "loadenv",
    "serial",
    "terminal",
    "sleep",
    "halt",
    "reboot",
    "regexp",
    "minicmd",
    "gzio",
    "ls",
    "cat",
];

/// Modules only BIOS images take.
pub const GRUB_MODULES_PC: &[&str] = &["biosdisk"];
/// Modules only UEFI images take.
pub const GRUB_MODULES_EFI: &[&str] = &["efi_gop", "efi_uga"];

/// A filesystem UUID as blkid prints it (`1234-ABCD` for FAT): hex digits and dashes.
fn check_uuid(what: &str, uuid: &str) -> Result<()> {
    if uuid.is_empty() || !uuid.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-') {
        bail!("the {what} filesystem UUID {uuid:?} is not hex digits and dashes");
    }
    Ok(())
}

/// A word put into GRUB's script unquoted: nothing GRUB would expand or split.
fn check_word(what: &str, word: &str) -> Result<()> {
    let ok = |b: u8| b.is_ascii_alphanumeric() || b"_.,:/=+-@".contains(&b);
    if word.is_empty() || !word.bytes().all(ok) {
        bail!("{what} {word:?} has characters GRUB's script would interpret");
    }
    Ok(())
}

/// The configuration embedded in the core images: find the recovery filesystem by
/// UUID and make its `/grub` the prefix, so normal mode reads `/grub/grub.cfg` there.
pub fn render_early_cfg(recovery_fs_uuid: &str) -> Result<String> {
    check_uuid("recovery", recovery_fs_uuid)?;
    Ok(format!(
        "search --no-floppy --fs-uuid --set=root {recovery_fs_uuid}\nset prefix=($root)/grub\n"
    ))
}

/// The recovery partition's `/grub/grub.cfg`.
pub fn render_grub_cfg(b: &SecondaryBoot) -> Result<String> {
    let e = &b.emergency;
    check_uuid("recovery", &b.recovery_fs_uuid)?;
    check_uuid("emergency", &e.fs_uuid)?;
    check_word("the emergency kernel path", &e.kernel)?;
    check_word("the emergency initrd path", &e.initrd)?;
    for w in &e.cmdline {
        check_word("the emergency command-line word", w)?;
    }
    if let Some(p) = &b.primary {
        check_uuid("primary root", &p.root_fs_uuid)?;
        check_uuid("primary boot", &p.boot_fs_uuid)?;
        if let Some(esp) = &p.esp_fs_uuid {
            check_uuid("primary ESP", esp)?;
        }
    }
    let recovery = &b.recovery_fs_uuid;
    let mut emergency_cmdline = format!("root=UUID={} ro {CONSOLES}", e.fs_uuid);
    for w in &e.cmdline {
        emergency_cmdline.push(' ');
        emergency_cmdline.push_str(w);
    }
    let mut c = String::new();
    let _ = write!(
        c,
        r#"# The secondary disk's boot menu, written by understudy (boot::render_grub_cfg) at
# provision and expand time: do not edit, it is rewritten. See docs/boot.md.

serial --unit=0 --speed=115200
terminal_input serial console
terminal_output serial console
set timeout_style=menu

search --no-floppy --fs-uuid --set=understudy_recovery {recovery}

# The emergency copy's state, in two copies of the environment block: A, or B when A
# does not load or holds no usable emergency_ready (a torn write). Neither: not ready.
set understudy_env=none
unset emergency_ready
if load_env --file ($understudy_recovery){ENV_PATH_A} emergency_ready; then
  if [ "$emergency_ready" = 1 -o "$emergency_ready" = 0 ]; then set understudy_env=a; fi
fi
if [ "$understudy_env" = none ]; then
  unset emergency_ready
  if load_env --file ($understudy_recovery){ENV_PATH_B} emergency_ready; then
    if [ "$emergency_ready" = 1 -o "$emergency_ready" = 0 ]; then set understudy_env=b; fi
  fi
fi
if [ "$understudy_env" = none ]; then set emergency_ready=0; fi

"#
    );
    match &b.primary {
        Some(p) => {
            let _ = write!(
                c,
                r#"# The primary is present when its root filesystem is found. GRUB 2.06's
# --no-floppy ends the device walk at the first floppy drive, before the LVM volumes
# are scanned: with a floppy drive in the BIOS (a BMC's virtual one) a root on LVM is
# only found by a second search that walks the floppies too.
set understudy_primary=absent
if search --no-floppy --fs-uuid --set=understudy_primary_root {root}; then
  set understudy_primary=present
elif search --fs-uuid --set=understudy_primary_root {root}; then
  set understudy_primary=present
fi

"#,
                root = p.root_fs_uuid
            );
        }
        None => c.push_str("# No primary disk recorded.\nset understudy_primary=absent\n\n"),
    }
    let _ = write!(
        c,
        r#"# Automatic choice, with no keypress: the primary when it is there; else the
# emergency copy when it is ready; else the recovery console in automatic mode.
if [ "$understudy_primary" = present ]; then
  set default=primary
  set timeout={menu}
elif [ "$emergency_ready" = 1 ]; then
  set default=emergency
  set timeout={fallback}
else
  set default=recovery-auto
  set timeout={fallback}
fi

# A one-shot choice left by the recovery console when it could not kexec the
# emergency copy: honoured once if the copy is ready, then cleared in place.
unset next_entry
if load_env --file ($understudy_recovery){NEXT_ENTRY_PATH} next_entry; then
  if [ "$next_entry" = emergency -a "$emergency_ready" = 1 ]; then
    set default=emergency
    set timeout={fallback}
  fi
  if [ -n "$next_entry" ]; then
    set next_entry=
    save_env --file ($understudy_recovery){NEXT_ENTRY_PATH} next_entry
  fi
fi
echo "understudy: emergency_ready=$emergency_ready (env copy $understudy_env), primary $understudy_primary"

function understudy_emergency {{
  search --no-floppy --fs-uuid --set=root {efs}
  echo "Loading the emergency copy..."
  linux {kernel} {emergency_cmdline}
  initrd {initrd}
}}

function understudy_recovery {{
  search --no-floppy --fs-uuid --set=root {recovery}
  echo "Loading the recovery console..."
  linux {RECOVERY_KERNEL_PATH} understudy.mode=$1 {CONSOLES}
  initrd {RECOVERY_INITRD_PATH}
}}

if [ "$emergency_ready" = 1 ]; then
  menuentry "{TITLE_EMERGENCY}" --id emergency {{
    understudy_emergency
  }}
else
  menuentry "{TITLE_EMERGENCY_NOT_READY}" --id emergency {{
    understudy_emergency
  }}
fi

menuentry "{TITLE_RECOVERY}" --id recovery {{
  understudy_recovery recovery
}}

if [ "$understudy_primary" = absent ]; then
  menuentry "{TITLE_RECOVERY_AUTO}" --id recovery-auto {{
    understudy_recovery auto
  }}
fi
"#,
        menu = b.menu_timeout_secs,
        fallback = b.fallback_timeout_secs,
        efs = e.fs_uuid,
        kernel = e.kernel,
        initrd = e.initrd,
    );
    if let Some(p) = &b.primary {
        let efi = match &p.esp_fs_uuid {
            Some(esp) => format!(
                "    search --no-floppy --fs-uuid --set=root {esp}\n    chainloader /EFI/BOOT/BOOTX64.EFI\n"
            ),
            None => "    echo \"No ESP recorded for the primary disk.\"\n    sleep 5\n".to_string(),
        };
        let _ = write!(
            c,
            r#"
if [ "$understudy_primary" = present ]; then
  menuentry "{TITLE_PRIMARY}" --id primary {{
    if [ "$grub_platform" = efi ]; then
{efi}    else
      # The MBR of the disk holding the primary's boot filesystem.
      search --no-floppy --fs-uuid --set=understudy_boot {boot}
      regexp --set=1:understudy_disk '^(hd[0-9]+)' "$understudy_boot"
      set root=$understudy_disk
      chainloader +1
    fi
  }}
fi
"#,
            boot = p.boot_fs_uuid
        );
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example() -> SecondaryBoot {
        SecondaryBoot {
            recovery_fs_uuid: "5ec0a3d1-0003-4e5c-9a11-000000000003".into(),
            emergency: EmergencyEntry {
                fs_uuid: "5ec0a3d1-0004-4e5c-9a11-000000000004".into(),
                kernel: "/vmlinuz".into(),
                initrd: "/initrd.img".into(),
                cmdline: vec!["quiet".into()],
            },
            primary: Some(PrimaryDisk {
                root_fs_uuid: "9f1e0000-0002-4a6b-8c3d-000000000002".into(),
                boot_fs_uuid: "9f1e0000-0001-4a6b-8c3d-000000000001".into(),
                esp_fs_uuid: Some("ABCD-1234".into()),
            }),
            fallback_timeout_secs: 3,
            menu_timeout_secs: 5,
        }
    }

    const GOLDEN: &str = include_str!("../grub/examples/secondary-grub.cfg");

    #[test]
    fn grub_cfg_matches_the_golden_file() {
        let got = render_grub_cfg(&example()).unwrap();
        if std::env::var_os("UNDERSTUDY_UPDATE_GOLDEN").is_some() {
            let path = concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/grub/examples/secondary-grub.cfg"
            );
            std::fs::write(path, &got).unwrap();
            return;
        }
        assert_eq!(
            got, GOLDEN,
            "the rendered grub.cfg changed; if on purpose, rerun with UNDERSTUDY_UPDATE_GOLDEN=1"
        );
    }

    #[test]
    fn next_entry_block_is_a_grub_env_block_naming_the_emergency_entry() {
        let block = next_entry_emergency().unwrap();
        assert_eq!(block.len(), ENV_BLOCK_BYTES);
        let env = decode(&block).unwrap();
        assert_eq!(
            env.vars.get(NEXT_ENTRY_KEY).map(String::as_str),
            Some("emergency")
        );
        let cfg = render_grub_cfg(&example()).unwrap();
        assert!(cfg.contains(&format!(
            "load_env --file ($understudy_recovery){NEXT_ENTRY_PATH} next_entry"
        )));
        assert!(cfg.contains(&format!(
            "save_env --file ($understudy_recovery){NEXT_ENTRY_PATH} next_entry"
        )));
        // The one-shot choice comes after the automatic one, so it overrides it.
        assert!(cfg.find("set default=primary").unwrap() < cfg.find("unset next_entry").unwrap());
    }

    #[test]
    fn grub_cfg_without_a_primary_has_no_primary_entry() {
        let mut b = example();
        b.primary = None;
        let c = render_grub_cfg(&b).unwrap();
        assert!(!c.contains(TITLE_PRIMARY));
        assert!(!c.contains("chainloader"));
        assert!(c.contains("set understudy_primary=absent"));
        assert!(c.contains(TITLE_RECOVERY_AUTO));
    }

    /// GRUB's own parser (`grub-script-check`, grub-common) accepts what we render.
    #[test]
    fn grub_script_check_accepts_the_configs() {
        let dir = std::env::temp_dir().join(format!("understudy-boot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut no_primary = example();
        no_primary.primary = None;
        let configs = [
            ("full.cfg", render_grub_cfg(&example()).unwrap()),
            ("no-primary.cfg", render_grub_cfg(&no_primary).unwrap()),
            ("early.cfg", render_early_cfg("ABCD-1234").unwrap()),
        ];
        for (name, text) in configs {
            let path = dir.join(name);
            std::fs::write(&path, text).unwrap();
            crate::cmd::Cmd::new("grub-script-check")
                .arg(&path)
                .output()
                .unwrap_or_else(|e| panic!("grub-script-check refused {name}: {e:#}"));
        }
        // And it does refuse a broken script, so the check above means something.
        let broken = dir.join("broken.cfg");
        std::fs::write(&broken, "if [ x = x ]; then\n  echo unclosed\n").unwrap();
        assert!(
            crate::cmd::Cmd::new("grub-script-check")
                .arg(&broken)
                .output()
                .is_err()
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn hostile_values_are_refused() {
        let mut b = example();
        b.emergency.fs_uuid = "x; reboot".into();
        assert!(render_grub_cfg(&b).is_err());
        let mut b = example();
        b.emergency.cmdline = vec!["init=$(evil)".into()];
        assert!(render_grub_cfg(&b).is_err());
        let mut b = example();
        b.emergency.kernel = "/boot/vm linuz".into();
        assert!(render_grub_cfg(&b).is_err());
        assert!(render_early_cfg("}").is_err());
    }

    #[test]
    fn early_cfg_finds_the_recovery_filesystem() {
        assert_eq!(
            render_early_cfg("5ec0a3d1-0003-4e5c-9a11-000000000003").unwrap(),
            "search --no-floppy --fs-uuid --set=root 5ec0a3d1-0003-4e5c-9a11-000000000003\nset prefix=($root)/grub\n"
        );
    }

    #[test]
    fn env_block_is_1024_bytes_with_header_lines_and_padding() {
        let env = Env::with_emergency(Some("20240101-0000"));
        let block = encode(&env).unwrap();
        assert_eq!(block.len(), ENV_BLOCK_BYTES);
        let text = std::str::from_utf8(&block).unwrap();
        let body = "emergency_image=20240101-0000\nemergency_ready=1\n";
        let crc = crc32fast::hash(format!("{ENV_HEADER}{body}").as_bytes());
        let lines = format!("{ENV_HEADER}{body}{CHECK_KEY}={crc:08x}\n");
        assert!(text.starts_with(&lines), "{text}");
        assert!(text[lines.len()..].bytes().all(|b| b == b'#'));
        assert!(env.emergency_ready());
        assert!(!Env::with_emergency(None).emergency_ready());
        assert!(!Env::default().emergency_ready());
    }

    #[test]
    fn env_round_trips_with_escapes() {
        let mut env = Env::default();
        env.vars.insert("a".into(), "back\\slash".into());
        env.vars.insert("b".into(), "two\nlines".into());
        env.vars.insert("c".into(), String::new());
        env.vars.insert("d_9".into(), "=equals= and spaces".into());
        let block = encode(&env).unwrap();
        assert!(
            std::str::from_utf8(&block)
                .unwrap()
                .contains("a=back\\\\slash\nb=two\\\nlines\n")
        );
        assert_eq!(decode(&block).unwrap(), env);
    }

    #[test]
    fn env_refuses_bad_keys_and_overflow() {
        let mut env = Env::default();
        env.vars.insert("bad key".into(), "1".into());
        assert_eq!(encode(&env), Err(EnvError::BadKey("bad key".into())));
        let mut env = Env::default();
        env.vars.insert(CHECK_KEY.into(), "0".into());
        assert!(encode(&env).is_err());
        let mut env = Env::default();
        env.vars.insert("big".into(), "x".repeat(1000));
        assert!(matches!(encode(&env), Err(EnvError::TooLarge(_))));
    }

    /// A block with its check line recomputed after `edit`, so only `edit` is wrong.
    fn block_with(lines: &str) -> Vec<u8> {
        let text = format!("{ENV_HEADER}{lines}");
        let crc = crc32fast::hash(text.as_bytes());
        let mut b = format!("{text}{CHECK_KEY}={crc:08x}\n").into_bytes();
        b.resize(ENV_BLOCK_BYTES, b'#');
        b
    }

    #[test]
    fn malformed_blocks_are_refused() {
        let good = encode(&Env::with_emergency(None)).unwrap();
        assert!(decode(&good).is_ok());
        assert_eq!(decode(&good[..1023]), Err(EnvError::Size(1023)));
        assert_eq!(decode(&[b'#'; 1024]), Err(EnvError::Header));
        assert_eq!(decode(&[0u8; 1024]), Err(EnvError::Header));
        assert!(matches!(
            decode(&block_with("no_equals\n")),
            Err(EnvError::Line { .. })
        ));
        assert!(matches!(
            decode(&block_with("bad-key=1\n")),
            Err(EnvError::Line { .. })
        ));
        assert!(matches!(
            decode(&block_with("a=1\na=2\n")),
            Err(EnvError::Line { .. })
        ));
        // grub-editenv's own output (no check line) is not ours.
        let mut plain = format!("{ENV_HEADER}emergency_ready=1\n").into_bytes();
        plain.resize(ENV_BLOCK_BYTES, b'#');
        assert_eq!(decode(&plain), Err(EnvError::NoCheck));
        // Junk in the padding.
        let mut junk = good;
        junk[1000] = 0;
        assert_eq!(decode(&junk), Err(EnvError::Padding));
        // A variable with no newline before the padding ends.
        let mut open = format!("{ENV_HEADER}a=1").into_bytes();
        open.resize(ENV_BLOCK_BYTES, b'x');
        assert!(matches!(decode(&open), Err(EnvError::Line { .. })));
    }

    /// A write torn between sectors: the new block's first sector over the old
    /// block's second, with the old block's lines long enough to reach it.
    #[test]
    fn a_torn_block_fails_its_check() {
        let mut old = Env::with_emergency(Some("old"));
        old.vars.insert("note".into(), "x".repeat(600));
        let old = encode(&old).unwrap();
        let mut new = Env::with_emergency(None);
        new.vars.insert("note".into(), "y".repeat(600));
        let new = encode(&new).unwrap();
        let mut torn = new;
        torn[512..].copy_from_slice(&old[512..]);
        assert_eq!(decode(&torn), Err(EnvError::CheckMismatch));
        // One flipped bit anywhere in the lines is caught too.
        let mut flipped = encode(&Env::with_emergency(Some("img"))).unwrap();
        flipped[ENV_HEADER.len() + 2] ^= 0x01;
        assert!(decode(&flipped).is_err());
    }

    #[test]
    fn read_takes_a_and_falls_back_to_b() {
        let ready = encode(&Env::with_emergency(Some("img"))).unwrap();
        let not_ready = encode(&Env::with_emergency(None)).unwrap();
        let torn = {
            let mut t = ready;
            t[..512].fill(0);
            t
        };
        let r = read_copies(Some(&ready), Some(&not_ready));
        assert!(matches!(
            r,
            EnvRead::A {
                b_problem: None,
                ..
            }
        ));
        assert!(r.emergency_ready());
        let r = read_copies(Some(&torn), Some(&not_ready));
        assert!(matches!(r, EnvRead::B { .. }), "{r:?}");
        assert!(!r.emergency_ready());
        let r = read_copies(None, Some(&ready));
        assert!(matches!(&r, EnvRead::B { a_problem, .. } if a_problem == "missing"));
        assert!(r.emergency_ready());
        let r = read_copies(Some(&torn), None);
        assert!(matches!(r, EnvRead::Neither { .. }));
        assert!(!r.emergency_ready());
        let r = read_copies(Some(&not_ready), Some(&torn));
        assert!(matches!(
            r,
            EnvRead::A {
                b_problem: Some(_),
                ..
            }
        ));
    }

    /// B is written before A; a crash between the two (or during A) leaves a pair
    /// that reads as the old state or the new one, never a mix.
    #[test]
    fn write_order_is_b_then_a_and_every_crash_point_is_consistent() {
        let old = Env::with_emergency(Some("old"));
        let new = Env::with_emergency(None);
        let mut order = Vec::new();
        write_copies(&new, |copy, _| {
            order.push(copy);
            Ok(())
        })
        .unwrap();
        assert_eq!(order, [EnvCopy::B, EnvCopy::A]);

        let old_block = encode(&old).unwrap();
        let new_block = encode(&new).unwrap();
        // Crash after B: A old, B new.
        let after_b = read_copies(Some(&old_block), Some(&new_block));
        assert_eq!(after_b.env(), Some(&old));
        // Crash during A: A torn (half new, half zeros), B new.
        let mut torn = new_block;
        torn[512..].fill(0);
        let during_a = read_copies(Some(&torn), Some(&new_block));
        assert_eq!(during_a.env(), Some(&new));
        // Done.
        assert_eq!(
            read_copies(Some(&new_block), Some(&new_block)).env(),
            Some(&new)
        );
        // A failed write of B stops before A is touched.
        let mut touched = Vec::new();
        let r = write_copies(&new, |copy, _| {
            touched.push(copy);
            anyhow::bail!("disk full")
        });
        assert!(r.is_err());
        assert_eq!(touched, [EnvCopy::B]);
    }
}
