//! Kernel module metadata: the depmod files (`modules.dep`, `modules.alias`,
//! `modules.softdep`, `modules.builtin`) parsed and rendered, the same index built from
//! the modules' own `.modinfo` when depmod never ran (an extracted kernel package), the
//! dependency closure with load order, and the modalias matcher that PID 1 uses to
//! load drivers for the devices present.
//!
//! Does not own: reading `/sys` or calling `finit_module` (PID 1 does that with the
//! list this module returns), nor choosing which modules an initramfs wants (`mod.rs`).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// One loadable module of the index.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Module {
    /// Path below the modules directory, as depmod writes it (`kernel/fs/ext4/ext4.ko`).
    pub path: String,
    /// Modules that must be loaded first (names, in an order they can be loaded in).
    pub depends: Vec<String>,
    /// Soft dependencies: names or aliases loaded before / after, when present.
    pub softdep_pre: Vec<String>,
    pub softdep_post: Vec<String>,
}

/// An `alias PATTERN MODULE` line: `PATTERN` is an fnmatch glob.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Alias {
    pub pattern: String,
    pub module: String,
}

/// What the kernel's module directory says: loadable modules by name, aliases in file
/// order, and the names built into the kernel.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Index {
    pub modules: BTreeMap<String, Module>,
    pub aliases: Vec<Alias>,
    pub builtin: BTreeSet<String>,
    /// `modules.order`: module paths in the order the kernel build listed them.
    pub order: Vec<String>,
}

/// The kernel's spelling of a module name: `-` and `_` are the same, `_` is canonical.
pub fn normalize(name: &str) -> String {
    name.replace('-', "_")
}

/// The module name a path stands for: `kernel/drivers/usb/storage/usb-storage.ko.xz`
/// is `usb_storage`.
pub fn name_of_path(path: &str) -> String {
    let base = path.rsplit('/').next().unwrap_or(path);
    let stem = [".ko.xz", ".ko.zst", ".ko.gz", ".ko"]
        .iter()
        .find_map(|ext| base.strip_suffix(ext))
        .unwrap_or(base);
    normalize(stem)
}

/// The fields of a module's `.modinfo` section that the index needs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ModInfo {
    pub name: Option<String>,
    pub depends: Vec<String>,
    pub aliases: Vec<String>,
    pub softdep_pre: Vec<String>,
    pub softdep_post: Vec<String>,
}

/// Parses a `.modinfo` section: NUL-separated `key=value` strings.
pub fn parse_modinfo(section: &[u8]) -> ModInfo {
    let mut info = ModInfo::default();
    for entry in section.split(|&b| b == 0) {
        let entry = String::from_utf8_lossy(entry);
        let Some((key, value)) = entry.split_once('=') else {
            continue;
        };
        match key {
            "name" => info.name = Some(normalize(value)),
            "depends" => info
                .depends
                .extend(value.split(',').filter(|d| !d.is_empty()).map(normalize)),
            "alias" => info.aliases.push(value.to_string()),
            "softdep" => {
                let (pre, post) = parse_softdep_value(value);
                info.softdep_pre.extend(pre);
                info.softdep_post.extend(post);
            }
            _ => {}
        }
    }
    info
}

/// `pre: a b post: c` (either part optional) into (pre, post).
fn parse_softdep_value(value: &str) -> (Vec<String>, Vec<String>) {
    let (mut pre, mut post) = (Vec::new(), Vec::new());
    let mut into_pre = None;
    for word in value.split_whitespace() {
        match word {
            "pre:" => into_pre = Some(true),
            "post:" => into_pre = Some(false),
            w => match into_pre {
                Some(true) => pre.push(w.to_string()),
                Some(false) => post.push(w.to_string()),
                None => {}
            },
        }
    }
    (pre, post)
}

fn meaningful_lines(text: &str) -> impl Iterator<Item = &str> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
}

/// Parses `modules.dep`: `PATH: DEP_PATH DEP_PATH…` per line. depmod lists the
/// dependencies so that the last one is loaded first; [`Module::depends`] holds them in
/// load order, so the list is reversed.
pub fn parse_dep(text: &str) -> Result<BTreeMap<String, Module>> {
    let mut modules = BTreeMap::new();
    for (i, line) in meaningful_lines(text).enumerate() {
        let Some((path, deps)) = line.split_once(':') else {
            bail!("modules.dep line {}: no `:` in {line:?}", i + 1);
        };
        let module = Module {
            path: path.trim().to_string(),
            depends: deps.split_whitespace().rev().map(name_of_path).collect(),
            ..Module::default()
        };
        modules.insert(name_of_path(path.trim()), module);
    }
    Ok(modules)
}

/// Parses `modules.alias`: `alias PATTERN MODULE` per line.
pub fn parse_alias(text: &str) -> Result<Vec<Alias>> {
    meaningful_lines(text)
        .enumerate()
        .map(
            |(i, line)| match line.split_whitespace().collect::<Vec<_>>()[..] {
                ["alias", pattern, module] => Ok(Alias {
                    pattern: pattern.to_string(),
                    module: normalize(module),
                }),
                _ => bail!(
                    "modules.alias line {}: expected `alias PATTERN MODULE`, got {line:?}",
                    i + 1
                ),
            },
        )
        .collect()
}

/// A `softdep MODULE pre: … post: …` line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SoftDep {
    pub module: String,
    pub pre: Vec<String>,
    pub post: Vec<String>,
}

/// Parses `modules.softdep`: `softdep MODULE pre: … post: …` per line.
pub fn parse_softdep(text: &str) -> Result<Vec<SoftDep>> {
    meaningful_lines(text)
        .enumerate()
        .map(|(i, line)| {
            let mut words = line.splitn(3, char::is_whitespace);
            match (words.next(), words.next(), words.next()) {
                (Some("softdep"), Some(module), rest) => {
                    let (pre, post) = parse_softdep_value(rest.unwrap_or(""));
                    Ok(SoftDep {
                        module: normalize(module),
                        pre,
                        post,
                    })
                }
                _ => bail!(
                    "modules.softdep line {}: expected `softdep MODULE …`, got {line:?}",
                    i + 1
                ),
            }
        })
        .collect()
}

/// Parses `modules.builtin`: one module path per line, into names.
pub fn parse_builtin(text: &str) -> BTreeSet<String> {
    meaningful_lines(text).map(name_of_path).collect()
}

/// Whether `text` matches the fnmatch glob `pattern` (`*`, `?`, `[a-z]`, `[!…]`, and
/// `\` quoting), as modprobe matches modaliases against `modules.alias`.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0usize, 0usize);
    // Where to resume after the last `*`: (pattern index after it, text index).
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        let step = match p.get(pi) {
            Some(b'*') => {
                star = Some((pi + 1, ti));
                pi += 1;
                continue;
            }
            Some(b'?') => Some(1),
            Some(b'[') => match match_class(&p[pi..], t[ti]) {
                Some((true, len)) => Some(len),
                Some((false, _)) => None,
                // An unterminated `[` is a literal.
                None => (t[ti] == b'[').then_some(1),
            },
            Some(b'\\') if pi + 1 < p.len() => (p[pi + 1] == t[ti]).then_some(2),
            Some(&c) => (c == t[ti]).then_some(1),
            None => None,
        };
        match (step, star) {
            (Some(n), _) => {
                pi += n;
                ti += 1;
            }
            (None, Some((sp, st))) => {
                // Let the last `*` swallow one more character and retry.
                pi = sp;
                ti = st + 1;
                star = Some((sp, st + 1));
            }
            (None, None) => return false,
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// Matches `c` against the bracket expression at the start of `p`: whether it
/// matched and the expression's length, or `None` when the `[` is never closed.
fn match_class(p: &[u8], c: u8) -> Option<(bool, usize)> {
    let mut i = 1;
    let negate = matches!(p.get(i), Some(b'!' | b'^'));
    if negate {
        i += 1;
    }
    let mut matched = false;
    let mut first = true;
    loop {
        let lo = *p.get(i)?;
        if lo == b']' && !first {
            break;
        }
        first = false;
        if p.get(i + 1) == Some(&b'-') && p.get(i + 2).is_some_and(|&hi| hi != b']') {
            matched |= (lo..=p[i + 2]).contains(&c);
            i += 3;
        } else {
            matched |= lo == c;
            i += 1;
        }
    }
    Some((matched != negate, i + 1))
}

impl Index {
    /// Reads the depmod files of `dir` (a `/lib/modules/VERSION` directory). When
    /// depmod never ran there (`modules.dep` missing, as in an extracted Debian
    /// package), builds the same index from every module's `.modinfo` instead.
    pub fn load(dir: &Path) -> Result<Index> {
        let read = |name: &str| -> Result<Option<String>> {
            let p = dir.join(name);
            match fs::read_to_string(&p) {
                Ok(s) => Ok(Some(s)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(e).with_context(|| format!("reading {}", p.display())),
            }
        };
        let mut index = match read("modules.dep")? {
            Some(dep) => {
                let mut index = Index {
                    modules: parse_dep(&dep)
                        .with_context(|| format!("parsing {}/modules.dep", dir.display()))?,
                    ..Index::default()
                };
                if let Some(alias) = read("modules.alias")? {
                    index.aliases = parse_alias(&alias)
                        .with_context(|| format!("parsing {}/modules.alias", dir.display()))?;
                }
                if let Some(soft) = read("modules.softdep")? {
                    let soft = parse_softdep(&soft)
                        .with_context(|| format!("parsing {}/modules.softdep", dir.display()))?;
                    for sd in soft {
                        if let Some(m) = index.modules.get_mut(&sd.module) {
                            m.softdep_pre.extend(sd.pre);
                            m.softdep_post.extend(sd.post);
                        }
                    }
                }
                index
            }
            None => Index::scan(dir)?,
        };
        index.builtin = read("modules.builtin")?
            .map(|t| parse_builtin(&t))
            .unwrap_or_default();
        index.order = read("modules.order")?
            .map(|t| meaningful_lines(&t).map(str::to_string).collect())
            .unwrap_or_default();
        Ok(index)
    }

    /// Builds the loadable-module part of the index from the `.modinfo` of every
    /// module file below `dir` (what depmod itself reads).
    pub fn scan(dir: &Path) -> Result<Index> {
        let mut paths = Vec::new();
        collect_module_files(dir, dir, &mut paths)?;
        paths.sort();
        let mut index = Index::default();
        for rel in paths {
            let file = dir.join(&rel);
            let bytes = read_module(&file)?;
            let info = parse_modinfo(
                &modinfo_section(&bytes)
                    .with_context(|| format!("reading the ELF sections of {}", file.display()))?,
            );
            let name = info.name.clone().unwrap_or_else(|| name_of_path(&rel));
            index
                .aliases
                .extend(info.aliases.iter().map(|pattern| Alias {
                    pattern: pattern.clone(),
                    module: name.clone(),
                }));
            index.modules.insert(
                name,
                Module {
                    path: rel,
                    depends: info.depends,
                    softdep_pre: info.softdep_pre,
                    softdep_post: info.softdep_post,
                },
            );
        }
        Ok(index)
    }

    /// The loadable modules that `name` stands for: the module of that name, else
    /// every module with an alias matching it. A built-in or unknown name gives none.
    pub fn resolve(&self, name: &str) -> Vec<String> {
        let norm = normalize(name);
        if self.modules.contains_key(&norm) {
            return vec![norm];
        }
        if self.builtin.contains(&norm) {
            return Vec::new();
        }
        let mut out: Vec<String> = Vec::new();
        for a in &self.aliases {
            if glob_match(&a.pattern, name)
                && self.modules.contains_key(&a.module)
                && !out.contains(&a.module)
            {
                out.push(a.module.clone());
            }
        }
        out
    }

    /// The modules to load for `wanted` (names or aliases), dependencies first, each
    /// once: for every module its soft `pre:` dependencies, its hard dependencies,
    /// itself, then its soft `post:` dependencies. Names that resolve to nothing
    /// (built in, or absent) are left out; [`Index::resolve`] tells which.
    pub fn load_order<S: AsRef<str>>(&self, wanted: &[S]) -> Vec<String> {
        let mut order = Vec::new();
        let mut seen = BTreeSet::new();
        for w in wanted {
            for m in self.resolve(w.as_ref()) {
                self.visit(&m, &mut seen, &mut order);
            }
        }
        order
    }

    fn visit(&self, name: &str, seen: &mut BTreeSet<String>, order: &mut Vec<String>) {
        // Marked before recursing, so a (soft) dependency cycle ends.
        if !seen.insert(name.to_string()) {
            return;
        }
        let Some(m) = self.modules.get(name) else {
            return;
        };
        for pre in &m.softdep_pre {
            for r in self.resolve(pre) {
                self.visit(&r, seen, order);
            }
        }
        for dep in &m.depends {
            self.visit(dep, seen, order);
        }
        order.push(name.to_string());
        for post in &m.softdep_post {
            for r in self.resolve(post) {
                self.visit(&r, seen, order);
            }
        }
    }

    /// The same index narrowed to `names`: their modules, their aliases, the lines of
    /// `modules.order` that name them; built-ins are kept whole.
    pub fn subset(&self, names: &[String]) -> Index {
        let keep: BTreeSet<&String> = names.iter().collect();
        Index {
            modules: self
                .modules
                .iter()
                .filter(|(n, _)| keep.contains(n))
                .map(|(n, m)| (n.clone(), m.clone()))
                .collect(),
            aliases: self
                .aliases
                .iter()
                .filter(|a| keep.contains(&a.module))
                .cloned()
                .collect(),
            builtin: self.builtin.clone(),
            order: self
                .order
                .iter()
                .filter(|p| keep.contains(&name_of_path(p)))
                .cloned()
                .collect(),
        }
    }

    /// `modules.dep` text: every module with all its hard dependencies, listed as
    /// depmod does (the last one listed is loaded first).
    pub fn render_dep(&self) -> String {
        let mut out = String::new();
        for (name, m) in &self.modules {
            let mut closure = Vec::new();
            let mut seen = BTreeSet::new();
            seen.insert(name.clone());
            for d in &m.depends {
                self.visit_hard(d, &mut seen, &mut closure);
            }
            out.push_str(&m.path);
            out.push(':');
            for d in closure.iter().rev() {
                if let Some(dm) = self.modules.get(d) {
                    out.push(' ');
                    out.push_str(&dm.path);
                }
            }
            out.push('\n');
        }
        out
    }

    fn visit_hard(&self, name: &str, seen: &mut BTreeSet<String>, order: &mut Vec<String>) {
        if !seen.insert(name.to_string()) {
            return;
        }
        if let Some(m) = self.modules.get(name) {
            for d in &m.depends {
                self.visit_hard(d, seen, order);
            }
        }
        order.push(name.to_string());
    }

    /// `modules.alias` text.
    pub fn render_alias(&self) -> String {
        let mut out = String::from("# Aliases extracted from modules themselves.\n");
        for a in &self.aliases {
            out.push_str(&format!("alias {} {}\n", a.pattern, a.module));
        }
        out
    }

    /// `modules.softdep` text.
    pub fn render_softdep(&self) -> String {
        let mut out = String::from("# Soft dependencies extracted from modules themselves.\n");
        for (name, m) in &self.modules {
            if m.softdep_pre.is_empty() && m.softdep_post.is_empty() {
                continue;
            }
            out.push_str(&format!("softdep {name}"));
            if !m.softdep_pre.is_empty() {
                out.push_str(&format!(" pre: {}", m.softdep_pre.join(" ")));
            }
            if !m.softdep_post.is_empty() {
                out.push_str(&format!(" post: {}", m.softdep_post.join(" ")));
            }
            out.push('\n');
        }
        out
    }

    /// `modules.order` text.
    pub fn render_order(&self) -> String {
        self.order.iter().map(|p| format!("{p}\n")).collect()
    }
}

/// The modules PID 1 should load for the devices whose `modalias` strings (from
/// `modalias` files under `/sys`) are given, in load order: every module with an alias
/// pattern matching any of them, with dependencies first.
pub fn modules_for_modaliases<S: AsRef<str>>(modaliases: &[S], index: &Index) -> Vec<String> {
    let mut matched: Vec<String> = Vec::new();
    for m in modaliases {
        for a in &index.aliases {
            if glob_match(&a.pattern, m.as_ref()) && !matched.contains(&a.module) {
                matched.push(a.module.clone());
            }
        }
    }
    index.load_order(&matched)
}

fn collect_module_files(root: &Path, dir: &Path, out: &mut Vec<String>) -> Result<()> {
    for entry in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let entry = entry.with_context(|| format!("listing {}", dir.display()))?;
        let path = entry.path();
        let ty = entry
            .file_type()
            .with_context(|| format!("reading the type of {}", path.display()))?;
        if ty.is_dir() {
            collect_module_files(root, &path, out)?;
        } else if ty.is_file() {
            let rel = path
                .strip_prefix(root)
                .unwrap_or(&path)
                .to_string_lossy()
                .into_owned();
            if [".ko", ".ko.xz", ".ko.zst"]
                .iter()
                .any(|e| rel.ends_with(e))
            {
                out.push(rel);
            }
        }
    }
    Ok(())
}

/// A module's ELF bytes, decompressed when the file is `.ko.xz` or `.ko.zst` (newer
/// distributions compress modules; PID 1 hands plain ELF to `finit_module`, so the
/// initramfs carries them decompressed).
pub fn read_module(path: &Path) -> Result<Vec<u8>> {
    let raw = fs::read(path).with_context(|| format!("reading module {}", path.display()))?;
    let name = path.to_string_lossy();
    let mut out = Vec::new();
    if name.ends_with(".ko.xz") {
        xz2::read::XzDecoder::new_multi_decoder(&raw[..])
            .read_to_end(&mut out)
            .with_context(|| format!("decompressing module {}", path.display()))?;
        Ok(out)
    } else if name.ends_with(".ko.zst") {
        zstd::stream::read::Decoder::new(&raw[..])
            .and_then(|mut d| d.read_to_end(&mut out))
            .with_context(|| format!("decompressing module {}", path.display()))?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

/// Where a module file lands in the initramfs: its path with any compression suffix
/// dropped, since it is stored decompressed.
pub fn installed_path(path: &str) -> String {
    path.strip_suffix(".xz")
        .or_else(|| path.strip_suffix(".zst"))
        .unwrap_or(path)
        .to_string()
}

/// The bytes of the `.modinfo` section of an ELF module (empty if it has none).
pub fn modinfo_section(elf: &[u8]) -> Result<Vec<u8>> {
    let parsed = goblin::elf::Elf::parse(elf).context("parsing the ELF file")?;
    for sh in &parsed.section_headers {
        if parsed.shdr_strtab.get_at(sh.sh_name) == Some(".modinfo") {
            let range = sh
                .file_range()
                .context("the .modinfo section has no file range")?;
            return elf
                .get(range)
                .map(<[u8]>::to_vec)
                .context("the .modinfo section lies outside the file");
        }
    }
    Ok(Vec::new())
}

/// The directory holding `version`'s modules: `dir` itself when it already is one
/// (has `modules.order`, `modules.dep` or `kernel/`), else `dir/version`.
pub fn version_dir(dir: &Path, version: &str) -> PathBuf {
    let looks_like = |d: &Path| {
        ["modules.order", "modules.dep", "kernel"]
            .iter()
            .any(|f| d.join(f).exists())
    };
    if looks_like(dir) {
        dir.to_path_buf()
    } else {
        dir.join(version)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // depmod's real output for Debian's 6.1 kernel, trimmed to the recovery image's
    // modules by tests/fixtures/initramfs/capture-depmod.sh.
    const FIXTURE: &str = "tests/fixtures/initramfs/depmod-6.1.0-56-amd64";
    const DEP: &str =
        include_str!("../../tests/fixtures/initramfs/depmod-6.1.0-56-amd64/modules.dep");

    fn index() -> Index {
        Index::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join(FIXTURE)).unwrap()
    }

    #[test]
    fn names_fold_dashes_and_drop_compression_suffixes() {
        assert_eq!(
            name_of_path("kernel/drivers/md/dm-snapshot.ko"),
            "dm_snapshot"
        );
        assert_eq!(
            name_of_path("kernel/drivers/usb/storage/usb-storage.ko.zst"),
            "usb_storage"
        );
        assert_eq!(name_of_path("crc32c-intel.ko.xz"), "crc32c_intel");
        assert_eq!(installed_path("kernel/a/b.ko.xz"), "kernel/a/b.ko");
        assert_eq!(installed_path("kernel/a/b.ko"), "kernel/a/b.ko");
    }

    #[test]
    fn closure_puts_dependencies_and_soft_pre_dependencies_first() {
        let order = index().load_order(&["ext4", "dm-snapshot", "usb-storage"]);
        assert_eq!(
            order,
            [
                // ext4's `softdep pre: crypto-crc32c`, an alias of both.
                "crc32c_intel",
                "crc32c_generic",
                "jbd2",
                "mbcache",
                "crc16",
                "ext4",
                "dm_mod",
                "dm_bufio",
                "dm_snapshot",
                "usb_common",
                "usbcore",
                "scsi_common",
                "scsi_mod",
                "usb_storage",
            ]
        );
    }

    #[test]
    fn every_module_comes_after_all_its_dependencies() {
        let index = index();
        assert_eq!(index.modules.len(), 44);
        let all: Vec<String> = index.modules.keys().cloned().collect();
        let order = index.load_order(&all);
        assert_eq!(order.len(), index.modules.len());
        for (i, name) in order.iter().enumerate() {
            for d in &index.modules[name].depends {
                let j = order.iter().position(|x| x == d).unwrap();
                assert!(j < i, "{d} must load before {name}");
            }
        }
    }

    #[test]
    fn builtin_and_unknown_names_resolve_to_nothing_and_aliases_to_their_modules() {
        let index = index();
        assert!(index.builtin.contains("8250") && index.builtin.contains("unix"));
        assert!(index.resolve("8250").is_empty());
        assert!(index.resolve("unix").is_empty());
        assert!(index.resolve("no_such_module").is_empty());
        assert_eq!(index.resolve("crc32c"), ["crc32c_intel", "crc32c_generic"]);
        assert_eq!(index.resolve("fs-ext4"), ["ext4"]);
        assert_eq!(index.resolve("usb-storage"), ["usb_storage"]);
        assert_eq!(
            index.load_order(&["8250", "virtio_blk"]),
            ["virtio_ring", "virtio", "virtio_blk"]
        );
    }

    #[test]
    fn modaliases_of_present_devices_pick_drivers_in_dependency_order() {
        let index = index();
        let present = [
            // virtio-blk on PCI, as /sys shows it under QEMU: virtio_pci drives the
            // PCI function, virtio_blk the virtio device it exposes.
            "pci:v00001AF4d00001001sv00001AF4sd00000002bc01sc00i00",
            "virtio:d00000002v00001AF4",
            // QEMU's i440FX host bridge: nothing in the image drives it.
            "pci:v00008086d00001237sv00001AF4sd00001100bc06sc00i00",
            // A USB mass-storage (bulk-only, SCSI) stick.
            "usb:v0781p5567d0100dc00dsc00dp00ic08isc06ip50in00",
        ];
        assert_eq!(
            modules_for_modaliases(&present, &index),
            [
                "virtio_ring",
                "virtio",
                "virtio_pci_modern_dev",
                "virtio_pci_legacy_dev",
                "virtio_pci",
                "virtio_blk",
                "usb_common",
                "usbcore",
                "scsi_common",
                "scsi_mod",
                "usb_storage",
                // uas also claims bulk-only devices (it declines them when probed).
                "uas",
            ]
        );
        // An AHCI controller matches by class; an NVMe drive too.
        assert_eq!(
            modules_for_modaliases(
                &["pci:v00008086d00002922sv00001AF4sd00001100bc01sc06i01"],
                &index
            ),
            ["scsi_common", "scsi_mod", "libata", "libahci", "ahci"]
        );
        let none: [&str; 0] = [];
        assert!(modules_for_modaliases(&none, &index).is_empty());
    }

    #[test]
    fn glob_handles_stars_classes_and_literals() {
        let pat = "pci:v00001AF4d00001001sv*sd*bc*sc*i*";
        assert!(glob_match(
            pat,
            "pci:v00001AF4d00001001sv00001AF4sd00000002bc01sc00i00"
        ));
        assert!(!glob_match(
            pat,
            "pci:v00001AF4d00001000sv00001AF4sd00000001bc02sc00i00"
        ));
        assert!(glob_match("usb:v0BC2p2300d[0-1]*", "usb:v0BC2p2300d0100"));
        assert!(!glob_match("usb:v0BC2p2300d[0-1]*", "usb:v0BC2p2300d2100"));
        assert!(glob_match("x[!a-c]y", "xdy"));
        assert!(!glob_match("x[!a-c]y", "xby"));
        assert!(glob_match("a?c", "abc"));
        assert!(!glob_match("a?c", "ac"));
        assert!(glob_match("*", ""));
        assert!(glob_match("a*b*c", "a__b__b__c"));
        assert!(!glob_match("a*b*c", "a__b__b__"));
        assert!(glob_match("crc32c", "crc32c"));
        assert!(!glob_match("crc32c", "crc32c_generic"));
        assert!(glob_match("a\\*", "a*"));
        assert!(!glob_match("a\\*", "ab"));
        assert!(glob_match("[]]x", "]x"));
        assert!(glob_match("a[b", "a[b"));
    }

    #[test]
    fn rendering_gives_back_depmods_own_lines() {
        let index = index();
        let rendered = index.render_dep();
        for line in DEP.lines() {
            assert!(
                rendered.lines().any(|l| l == line),
                "{line:?} not rendered as depmod wrote it"
            );
        }
        assert_eq!(rendered.lines().count(), DEP.lines().count());
        assert_eq!(parse_alias(&index.render_alias()).unwrap(), index.aliases);
        let soft = parse_softdep(&index.render_softdep()).unwrap();
        let ext4 = SoftDep {
            module: "ext4".into(),
            pre: vec!["crypto-crc32c".into()],
            post: vec![],
        };
        assert!(soft.contains(&ext4), "{soft:?}");
        assert_eq!(soft.len(), 5);
    }

    #[test]
    fn subset_keeps_only_the_named_modules_and_their_aliases() {
        let index = index();
        let sub = index.subset(&["virtio_blk".to_string()]);
        assert_eq!(sub.modules.keys().collect::<Vec<_>>(), ["virtio_blk"]);
        assert_eq!(
            sub.aliases,
            [Alias {
                pattern: "virtio:d00000002v*".into(),
                module: "virtio_blk".into()
            }]
        );
        assert_eq!(sub.builtin, index.builtin);
    }

    #[test]
    fn modinfo_fields_are_read_from_nul_separated_pairs() {
        let raw = b"license=GPL\0depends=mbcache,jbd2,crc16\0alias=fs-ext4\0alias=ext3\0softdep=pre: crc32c\0name=ext4\0\0\0";
        let info = parse_modinfo(raw);
        assert_eq!(info.name.as_deref(), Some("ext4"));
        assert_eq!(info.depends, ["mbcache", "jbd2", "crc16"]);
        assert_eq!(info.aliases, ["fs-ext4", "ext3"]);
        assert_eq!(info.softdep_pre, ["crc32c"]);
        assert!(info.softdep_post.is_empty());
        assert_eq!(
            parse_modinfo(b"depends=\0name=crc16\0").depends,
            Vec::<String>::new()
        );
    }

    #[test]
    fn malformed_lines_are_errors_naming_the_line() {
        let err = parse_dep("kernel/a.ko:\nno colon here\n").unwrap_err();
        assert!(err.to_string().contains("line 2"), "{err}");
        let err = parse_alias("alias only-two\n").unwrap_err();
        assert!(err.to_string().contains("line 1"), "{err}");
    }
}
