//! fstab(5) as text: a parser and renderer that give back any file byte for byte, and
//! field edits that touch only the field edited.
//!
//! Owns: the line grammar (comments, blank lines, fields separated by any run of spaces
//! and tabs, octal escapes such as `\040`, missing fields 5 and 6), source specs
//! (`UUID=`, `LABEL=`, `PARTUUID=`, `PARTLABEL=`, `ID=`, paths) and mount options.
//! Does not own: deciding what to change (`remap`), reading or writing the file
//! (`rootfs`). Lines that libmount would not accept as entries (fewer than three fields,
//! non-numeric fifth or sixth field) are kept verbatim as [`Line::Other`], as libmount
//! skips them too.

use std::fmt;
use std::ops::Range;

/// A whole fstab: its lines and whether the last one ends with a newline.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fstab {
    pub lines: Vec<Line>,
    /// False only for a non-empty file whose last line has no `\n`.
    pub final_newline: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Line {
    Entry(Entry),
    /// A comment, a blank line, or text that is not an entry; kept as is.
    Other(String),
}

/// One mount entry, kept as its raw text plus where each field lies in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    raw: String,
    fields: Vec<Range<usize>>,
}

/// Field indexes, as fstab(5) names them.
pub const SPEC: usize = 0;
pub const FILE: usize = 1;
pub const VFSTYPE: usize = 2;
pub const MNTOPS: usize = 3;
pub const FREQ: usize = 4;
pub const PASSNO: usize = 5;

fn is_separator(c: char) -> bool {
    // libmount skips blanks with isspace(); '\n' never reaches here.
    matches!(c, ' ' | '\t' | '\r' | '\x0b' | '\x0c')
}

impl Fstab {
    pub fn parse(text: &str) -> Fstab {
        let mut parts: Vec<&str> = text.split('\n').collect();
        // `split` leaves an empty last piece after a final newline (or for "").
        let final_newline = parts.last() == Some(&"");
        if final_newline {
            parts.pop();
        }
        Fstab {
            lines: parts.into_iter().map(Line::parse).collect(),
            final_newline,
        }
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        for (i, l) in self.lines.iter().enumerate() {
            if i > 0 {
                out.push('\n');
            }
            out.push_str(l.text());
        }
        if self.final_newline && !self.lines.is_empty() {
            out.push('\n');
        }
        out
    }

    /// The entries, with their 1-based line numbers.
    pub fn entries(&self) -> impl Iterator<Item = (usize, &Entry)> {
        self.lines.iter().enumerate().filter_map(|(i, l)| match l {
            Line::Entry(e) => Some((i + 1, e)),
            Line::Other(_) => None,
        })
    }
}

impl fmt::Display for Fstab {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.render())
    }
}

impl Line {
    pub fn parse(text: &str) -> Line {
        let body = text.trim_start_matches(is_separator);
        if body.is_empty() || body.starts_with('#') {
            return Line::Other(text.to_string());
        }
        match Entry::parse(text) {
            Some(e) => Line::Entry(e),
            None => Line::Other(text.to_string()),
        }
    }

    pub fn text(&self) -> &str {
        match self {
            Line::Entry(e) => &e.raw,
            Line::Other(s) => s,
        }
    }
}

impl Entry {
    /// An entry if libmount would read one: at least three fields, and a numeric fifth
    /// and sixth field when present (fields past the sixth are ignored, as libmount does).
    pub fn parse(text: &str) -> Option<Entry> {
        let mut fields = Vec::new();
        let mut start = None;
        for (i, c) in text.char_indices() {
            match (is_separator(c), start) {
                (true, Some(s)) => {
                    fields.push(s..i);
                    start = None;
                }
                (false, None) => start = Some(i),
                _ => {}
            }
        }
        if let Some(s) = start {
            fields.push(s..text.len());
        }
        let numeric = |r: &Range<usize>| text[r.clone()].bytes().all(|b| b.is_ascii_digit());
        if fields.len() < 3 || fields.iter().skip(4).take(2).any(|r| !numeric(r)) {
            return None;
        }
        Some(Entry {
            raw: text.to_string(),
            fields,
        })
    }

    /// The line as written.
    pub fn raw(&self) -> &str {
        &self.raw
    }

    /// Field `i` as written (escaped), if present.
    pub fn field_raw(&self, i: usize) -> Option<&str> {
        self.fields.get(i).map(|r| &self.raw[r.clone()])
    }

    /// Field `i` with octal escapes decoded.
    pub fn field(&self, i: usize) -> Option<String> {
        self.field_raw(i).map(unescape)
    }

    /// The source (`fs_spec`), decoded.
    pub fn spec(&self) -> String {
        self.field(SPEC).unwrap_or_default()
    }

    /// The mount point (`fs_file`), decoded.
    pub fn target(&self) -> String {
        self.field(FILE).unwrap_or_default()
    }

    pub fn fstype(&self) -> String {
        self.field(VFSTYPE).unwrap_or_default()
    }

    /// The options as written, `defaults` when the field is missing (as libmount reads it).
    pub fn options(&self) -> String {
        self.field(MNTOPS).unwrap_or_else(|| "defaults".into())
    }

    /// Whether option `name` (without a value) or `name=…` is present.
    pub fn has_option(&self, name: &str) -> bool {
        self.options()
            .split(',')
            .any(|o| o == name || o.strip_prefix(name).is_some_and(|r| r.starts_with('=')))
    }

    /// Fifth field, 0 when missing.
    pub fn freq(&self) -> u32 {
        self.field(FREQ).and_then(|f| f.parse().ok()).unwrap_or(0)
    }

    /// Sixth field, 0 when missing.
    pub fn passno(&self) -> u32 {
        self.field(PASSNO).and_then(|f| f.parse().ok()).unwrap_or(0)
    }

    /// The parsed source.
    pub fn source(&self) -> Spec {
        Spec::parse(&self.spec())
    }

    /// Replace field `i` (given decoded; escaped here), keeping every separator.
    /// A missing field is appended after a single space (fields 4 to 6 only follow
    /// the ones before them, so earlier missing ones are filled with their defaults).
    pub fn set_field(&mut self, i: usize, value: &str) {
        let value = escape(value);
        if let Some(r) = self.fields.get(i).cloned() {
            self.raw.replace_range(r.clone(), &value);
            let new_end = r.start + value.len();
            self.fields[i] = r.start..new_end;
            // Later fields keep their distance from the end of this one.
            for f in &mut self.fields[i + 1..] {
                *f = f.start - r.end + new_end..f.end - r.end + new_end;
            }
            return;
        }
        let defaults = ["", "", "", "defaults", "0", "0"];
        while self.fields.len() < i {
            let d = defaults.get(self.fields.len()).copied().unwrap_or("0");
            self.push_field(d);
        }
        self.push_field(&value);
    }

    fn push_field(&mut self, value: &str) {
        // Trailing blanks after the last field stay after the new one.
        let end = self.fields.last().map_or(0, |r| r.end);
        let tail = self.raw.split_off(end);
        self.raw.push(' ');
        let start = self.raw.len();
        self.raw.push_str(value);
        self.fields.push(start..self.raw.len());
        self.raw.push_str(&tail);
    }
}

/// Decode fstab octal escapes (`\040` space, `\011` tab, `\012` newline, `\134`
/// backslash, any `\ooo`); a backslash not followed by three octal digits stays.
pub fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = |j: usize| b.get(j).is_some_and(|c| (b'0'..=b'7').contains(c));
        if b[i] == b'\\' && octal(i + 1) && octal(i + 2) && octal(i + 3) && b[i + 1] <= b'3' {
            out.push((b[i + 1] - b'0') << 6 | (b[i + 2] - b'0') << 3 | (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Encode what cannot stand in a field as libmount does: space, tab, newline, backslash.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            ' ' => out.push_str("\\040"),
            '\t' => out.push_str("\\011"),
            '\n' => out.push_str("\\012"),
            '\\' => out.push_str("\\134"),
            c => out.push(c),
        }
    }
    out
}

/// A source as fstab(5) writes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Spec {
    Uuid(String),
    Label(String),
    PartUuid(String),
    PartLabel(String),
    /// `ID=` (a hardware block device id, since util-linux 2.36).
    Id(String),
    /// An absolute path: a device node (`/dev/sda1`, `/dev/mapper/vg-root`,
    /// `/dev/vg/root`), or a file or directory (swap file, bind mount source).
    Path(String),
    /// Anything else: `tmpfs`, `proc`, `host:/export`, `//server/share`, `none`.
    Other(String),
}

impl Spec {
    pub fn parse(s: &str) -> Spec {
        let tag = |prefix: &str| {
            s.strip_prefix(prefix).map(|v| {
                // libmount accepts a quoted tag value: UUID="…".
                let v = v
                    .strip_prefix('"')
                    .and_then(|v| v.strip_suffix('"'))
                    .unwrap_or(v);
                v.to_string()
            })
        };
        if let Some(v) = tag("UUID=") {
            Spec::Uuid(v)
        } else if let Some(v) = tag("LABEL=") {
            Spec::Label(v)
        } else if let Some(v) = tag("PARTUUID=") {
            Spec::PartUuid(v)
        } else if let Some(v) = tag("PARTLABEL=") {
            Spec::PartLabel(v)
        } else if let Some(v) = tag("ID=") {
            Spec::Id(v)
        } else if s.starts_with('/') && !s.starts_with("//") {
            Spec::Path(s.to_string())
        } else {
            Spec::Other(s.to_string())
        }
    }

    /// Names a block device: a tag, or a path under `/dev/`.
    pub fn is_block_device(&self) -> bool {
        match self {
            Spec::Uuid(_)
            | Spec::Label(_)
            | Spec::PartUuid(_)
            | Spec::PartLabel(_)
            | Spec::Id(_) => true,
            Spec::Path(p) => p.starts_with("/dev/"),
            Spec::Other(_) => false,
        }
    }

    /// The same source, allowing for how it was written: UUIDs compare without regard
    /// to case, quotes around tag values do not count, paths compare after removing
    /// repeated and trailing slashes.
    pub fn same_as(&self, other: &Spec) -> bool {
        match (self, other) {
            (Spec::Uuid(a), Spec::Uuid(b)) | (Spec::PartUuid(a), Spec::PartUuid(b)) => {
                a.eq_ignore_ascii_case(b)
            }
            (Spec::Path(a), Spec::Path(b)) => clean_path(a) == clean_path(b),
            (a, b) => a == b,
        }
    }
}

impl fmt::Display for Spec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Spec::Uuid(v) => write!(f, "UUID={v}"),
            Spec::Label(v) => write!(f, "LABEL={v}"),
            Spec::PartUuid(v) => write!(f, "PARTUUID={v}"),
            Spec::PartLabel(v) => write!(f, "PARTLABEL={v}"),
            Spec::Id(v) => write!(f, "ID={v}"),
            Spec::Path(v) | Spec::Other(v) => f.write_str(v),
        }
    }
}

/// A path with repeated and trailing slashes removed (`/` stays `/`).
pub fn clean_path(p: &str) -> String {
    let parts: Vec<&str> = p.split('/').filter(|c| !c.is_empty()).collect();
    format!("/{}", parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_split_on_any_run_of_blanks() {
        let e = Entry::parse("  UUID=abc \t /  ext4\terrors=remount-ro 0   1  ").unwrap();
        assert_eq!(e.spec(), "UUID=abc");
        assert_eq!(e.target(), "/");
        assert_eq!(e.fstype(), "ext4");
        assert_eq!(e.options(), "errors=remount-ro");
        assert_eq!((e.freq(), e.passno()), (0, 1));
    }

    #[test]
    fn missing_fields_take_libmount_defaults_and_short_lines_are_not_entries() {
        let e = Entry::parse("tmpfs /tmp tmpfs").unwrap();
        assert_eq!(
            (e.options().as_str(), e.freq(), e.passno()),
            ("defaults", 0, 0)
        );
        assert!(Entry::parse("tmpfs /tmp").is_none());
        assert!(Entry::parse("tmpfs /tmp tmpfs defaults 0 x").is_none());
        assert!(Entry::parse("proc /proc proc defaults 0 0 extra").is_some());
    }

    #[test]
    fn octal_escapes_decode_and_encode() {
        assert_eq!(unescape(r"/mnt/my\040disk\011x\134y"), "/mnt/my disk\tx\\y");
        assert_eq!(unescape(r"a\9b\04"), r"a\9b\04");
        assert_eq!(escape("/mnt/my disk\\"), r"/mnt/my\040disk\134");
    }

    #[test]
    fn set_field_keeps_separators_and_escapes() {
        let mut e = Entry::parse("/dev/sda1\t\t/   ext4  defaults 0 1  ").unwrap();
        e.set_field(SPEC, "LABEL=new root");
        assert_eq!(e.raw(), "LABEL=new\\040root\t\t/   ext4  defaults 0 1  ");
        assert_eq!(e.passno(), 1);
        e.set_field(MNTOPS, "ro");
        assert_eq!(e.raw(), "LABEL=new\\040root\t\t/   ext4  ro 0 1  ");
        let mut short = Entry::parse("tmpfs /t tmpfs ").unwrap();
        short.set_field(PASSNO, "2");
        assert_eq!(short.raw(), "tmpfs /t tmpfs defaults 0 2 ");
    }

    #[test]
    fn specs_parse_and_compare_as_mount_would() {
        assert_eq!(Spec::parse("UUID=\"AB-cd\""), Spec::Uuid("AB-cd".into()));
        assert!(Spec::parse("UUID=ab-CD").same_as(&Spec::parse("UUID=\"AB-cd\"")));
        assert!(Spec::parse("/dev//mapper/vg-root/").same_as(&Spec::parse("/dev/mapper/vg-root")));
        assert!(!Spec::parse("LABEL=a").same_as(&Spec::parse("LABEL=A")));
        assert_eq!(
            Spec::parse("//server/share"),
            Spec::Other("//server/share".into())
        );
        assert_eq!(
            Spec::parse("nas:/export"),
            Spec::Other("nas:/export".into())
        );
        assert!(Spec::parse("/dev/VolGroup00/LogVol00").is_block_device());
        assert!(!Spec::parse("/srv/data").is_block_device());
        assert!(!Spec::parse("tmpfs").is_block_device());
    }

    #[test]
    fn odd_files_round_trip() {
        for text in [
            "",
            "\n",
            "\n\n",
            "a b c",
            "a b c\n",
            "# only\n\n\t\n",
            "x\r\ny z w\r\n",
            "tmpfs /t tmpfs",
        ] {
            assert_eq!(Fstab::parse(text).render(), text, "{text:?}");
        }
    }

    #[test]
    fn has_option_matches_names_and_name_value() {
        let e = Entry::parse("a /b nfs rw,noauto,x-systemd.automount,size=1G 0 0").unwrap();
        assert!(
            e.has_option("noauto")
                && e.has_option("size")
                && !e.has_option("auto")
                && !e.has_option("x")
        );
    }
}
