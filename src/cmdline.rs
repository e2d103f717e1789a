//! Kernel command lines as text, and the places a Debian system keeps them: the
//! `linux` lines of `grub.cfg`, `GRUB_CMDLINE_LINUX*` in `/etc/default/grub`, and
//! initramfs-tools' `RESUME=` setting. Edits keep everything they do not change
//! byte for byte.
//!
//! Owns: splitting a command line as the kernel does (`lib/cmdline.c` `next_arg`:
//! blanks separate arguments except inside double quotes, a value may be quoted,
//! `--` ends the kernel's arguments and starts init's), and the remap edit
//! ([`remap`]: `root=` set, `resume=` removed, `noresume` added).
//! Does not own: which files to edit or reading them (`remap`, `rootfs`); GRUB script
//! quoting beyond double quotes (generated `linux` lines use none).

use std::ops::Range;

/// A command line, kept as its text plus where each argument lies in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cmdline {
    text: String,
    args: Vec<Range<usize>>,
}

/// One argument, split as the kernel splits it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Arg<'a> {
    /// As written, quotes included.
    pub raw: &'a str,
    /// The name: everything before the first `=` (without a leading quote).
    pub key: &'a str,
    /// The value with its surrounding quotes removed, `None` for a bare flag.
    pub value: Option<&'a str>,
}

impl<'a> Arg<'a> {
    fn parse(raw: &'a str) -> Arg<'a> {
        let body = raw.strip_prefix('"').unwrap_or(raw);
        match body.split_once('=') {
            None => Arg {
                raw,
                key: body.strip_suffix('"').unwrap_or(body),
                value: None,
            },
            Some((key, v)) => {
                let v = v.strip_prefix('"').unwrap_or(v);
                let v = v.strip_suffix('"').unwrap_or(v);
                Arg {
                    raw,
                    key,
                    value: Some(v),
                }
            }
        }
    }
}

fn is_blank(c: char) -> bool {
    c.is_ascii_whitespace()
}

impl Cmdline {
    pub fn parse(text: &str) -> Cmdline {
        let mut args = Vec::new();
        let mut start = None;
        let mut in_quote = false;
        for (i, c) in text.char_indices() {
            match start {
                None if is_blank(c) => continue,
                None => {
                    start = Some(i);
                    in_quote = c == '"';
                }
                Some(s) if is_blank(c) && !in_quote => {
                    args.push(s..i);
                    start = None;
                }
                Some(_) => {
                    if c == '"' {
                        in_quote = !in_quote;
                    }
                }
            }
        }
        if let Some(s) = start {
            args.push(s..text.len());
        }
        Cmdline {
            text: text.to_string(),
            args,
        }
    }

    pub fn render(&self) -> &str {
        &self.text
    }

    /// Every argument, `--` and init's arguments included.
    pub fn args(&self) -> impl Iterator<Item = Arg<'_>> {
        self.args.iter().map(|r| Arg::parse(&self.text[r.clone()]))
    }

    /// How many arguments belong to the kernel (those before a bare `--`).
    fn kernel_len(&self) -> usize {
        self.args
            .iter()
            .position(|r| &self.text[r.clone()] == "--")
            .unwrap_or(self.args.len())
    }

    /// The value of the last `key=` (the one the kernel uses), or `Some("")` for a bare
    /// `key` flag.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.args()
            .take(self.kernel_len())
            .filter(|a| a.key == key)
            .last()
            .map(|a| a.value.unwrap_or(""))
    }

    pub fn has(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// Set every `key=` to `value` in place (quoted if it holds blanks); append it if
    /// absent. Init's arguments after `--` are not touched.
    pub fn set(&mut self, key: &str, value: &str) {
        let arg = if value.chars().any(is_blank) {
            format!("{key}=\"{value}\"")
        } else {
            format!("{key}={value}")
        };
        let hits = self.positions(key);
        if hits.is_empty() {
            self.insert(&arg);
            return;
        }
        for i in hits.into_iter().rev() {
            self.replace_arg(i, &arg);
        }
    }

    /// Remove every `key` and `key=…` before `--`, with the blanks before each (or
    /// after it, for the first argument). Returns how many were removed.
    pub fn remove(&mut self, key: &str) -> usize {
        let hits = self.positions(key);
        for &i in hits.iter().rev() {
            let r = self.args[i].clone();
            let cut = if i > 0 {
                self.args[i - 1].end..r.end
            } else if let Some(next) = self.args.get(1) {
                r.start..next.start
            } else {
                r.clone()
            };
            self.text.replace_range(cut.clone(), "");
            self.args.remove(i);
            let n = cut.len();
            for a in &mut self.args[i..] {
                *a = a.start - n..a.end - n;
            }
        }
        hits.len()
    }

    /// Add a bare flag (`noresume`) before `--` unless it is there already.
    pub fn add_flag(&mut self, flag: &str) {
        if !self.has(flag) {
            self.insert(flag);
        }
    }

    fn positions(&self, key: &str) -> Vec<usize> {
        let n = self.kernel_len();
        self.args()
            .enumerate()
            .take(n)
            .filter(|(_, a)| a.key == key)
            .map(|(i, _)| i)
            .collect()
    }

    fn replace_arg(&mut self, i: usize, arg: &str) {
        let r = self.args[i].clone();
        self.text.replace_range(r.clone(), arg);
        let new_end = r.start + arg.len();
        self.args[i] = r.start..new_end;
        for a in &mut self.args[i + 1..] {
            *a = a.start - r.end + new_end..a.end - r.end + new_end;
        }
    }

    /// Insert an argument after the last kernel argument, separated by one space.
    fn insert(&mut self, arg: &str) {
        let n = self.kernel_len();
        let at = if n > 0 { self.args[n - 1].end } else { 0 };
        let needs_space_before = n > 0;
        let needs_space_after = n == 0 && !self.args.is_empty();
        let piece = format!(
            "{}{arg}{}",
            if needs_space_before { " " } else { "" },
            if needs_space_after { " " } else { "" }
        );
        self.text.insert_str(at, &piece);
        let start = at + usize::from(needs_space_before);
        for a in &mut self.args[n..] {
            *a = a.start + piece.len()..a.end + piece.len();
        }
        self.args.insert(n, start..start + arg.len());
    }
}

/// The emergency copy's edit: `root=` set (when given), `resume=` and
/// `resume_offset=` removed, and `noresume` added, so neither the kernel nor
/// initramfs-tools (its `local-premount/resume` script honours `noresume`) waits for
/// a swap device that is not there.
pub fn remap(c: &mut Cmdline, root: Option<&str>) {
    if let Some(root) = root {
        if c.has("root") {
            c.set("root", root);
        }
    }
    c.remove("resume");
    c.remove("resume_offset");
    c.add_flag("noresume");
}

/// Apply `edit` to the command line of every `linux`/`linux16`/`linuxefi` line of a
/// grub.cfg, or only of those inside the menu entry titled `entry`. Returns the new
/// text and how many lines were edited.
pub fn edit_grub_cfg(
    text: &str,
    entry: Option<&str>,
    edit: impl Fn(&mut Cmdline),
) -> (String, usize) {
    let mut out = String::with_capacity(text.len());
    let mut titles: Vec<Option<String>> = Vec::new();
    let mut edited = 0;
    for line in text.split_inclusive('\n') {
        let body = line.trim_start();
        let word = body
            .split(|c: char| c.is_ascii_whitespace())
            .next()
            .unwrap_or("");
        match word {
            "menuentry" | "submenu" => {
                if body.trim_end().ends_with('{') {
                    titles.push(first_quoted(body));
                }
                out.push_str(line);
            }
            "}" => {
                titles.pop();
                out.push_str(line);
            }
            "linux" | "linux16" | "linuxefi" => {
                let inside = titles.iter().rev().flatten().next().map(String::as_str);
                if entry.is_none() || entry == inside {
                    out.push_str(&edit_linux_line(line, &edit));
                    edited += 1;
                } else {
                    out.push_str(line);
                }
            }
            _ => out.push_str(line),
        }
    }
    (out, edited)
}

/// The title of a `menuentry 'Title' …` or `menuentry "Title" …` line.
fn first_quoted(line: &str) -> Option<String> {
    let start = line.find(['\'', '"'])?;
    let q = line[start..].chars().next()?;
    let rest = &line[start + 1..];
    rest.find(q).map(|end| rest[..end].to_string())
}

/// `linux PATH ARGS…`: edit ARGS, keep the indentation, the command, the path and the
/// line ending.
fn edit_linux_line(line: &str, edit: &impl Fn(&mut Cmdline)) -> String {
    let (content, eol) = match line.strip_suffix('\n') {
        Some(c) => (c, "\n"),
        None => (line, ""),
    };
    let mut idx = 0;
    // Skip indentation, the command word, blanks, the kernel path, one blank.
    let skip_blank = |s: &str, i: usize| i + s[i..].len() - s[i..].trim_start().len();
    let skip_word = |s: &str, i: usize| {
        s[i..]
            .find(|c: char| c.is_ascii_whitespace())
            .map_or(s.len(), |n| i + n)
    };
    idx = skip_blank(content, idx);
    idx = skip_word(content, idx);
    idx = skip_blank(content, idx);
    idx = skip_word(content, idx);
    let (head, args) = content.split_at(idx);
    let (sep, args) = match args.chars().next() {
        Some(c) if c.is_ascii_whitespace() => args.split_at(c.len_utf8()),
        _ => ("", args),
    };
    let mut c = Cmdline::parse(args);
    edit(&mut c);
    let sep = if sep.is_empty() && !c.render().is_empty() {
        " "
    } else {
        sep
    };
    format!("{head}{sep}{}{eol}", c.render())
}

/// The variables of `/etc/default/grub` that hold kernel arguments.
pub const GRUB_DEFAULT_VARS: [&str; 2] = ["GRUB_CMDLINE_LINUX", "GRUB_CMDLINE_LINUX_DEFAULT"];

/// Edit the assignments of `var` in a shell file such as `/etc/default/grub`, keeping
/// the quoting style (a bare value that gains a blank gets double quotes). `edit`
/// gets the raw text between the quotes, so `$OTHER` expansions stay expansions.
/// Returns the new text and how many assignments were edited.
pub fn edit_shell_var(
    text: &str,
    var: &str,
    mut edit: impl FnMut(&mut Cmdline),
) -> (String, usize) {
    let mut out = String::with_capacity(text.len());
    let mut edited = 0;
    for line in text.split_inclusive('\n') {
        match shell_assignment(line, var) {
            Some((prefix, quote, value, rest)) => {
                let mut c = Cmdline::parse(value);
                edit(&mut c);
                let new = c.render();
                let quote = if quote.is_empty() && new.chars().any(is_blank) {
                    "\""
                } else {
                    quote
                };
                out.push_str(&format!("{prefix}{quote}{new}{quote}{rest}"));
                edited += 1;
            }
            None => out.push_str(line),
        }
    }
    (out, edited)
}

/// Split `[export ]VAR=VALUE…` into (up to and including `=`, quote, value, rest).
fn shell_assignment<'a>(
    line: &'a str,
    var: &str,
) -> Option<(&'a str, &'static str, &'a str, &'a str)> {
    let body = line.trim_start();
    let after_export = body.strip_prefix("export ").map_or(body, str::trim_start);
    let value = after_export.strip_prefix(var)?.strip_prefix('=')?;
    let prefix = &line[..line.len() - value.len()];
    if let Some(inner) = value.strip_prefix('\'') {
        let end = inner.find('\'')?;
        return Some((prefix, "'", &inner[..end], &inner[end + 1..]));
    }
    if let Some(inner) = value.strip_prefix('"') {
        // The closing quote is the first one not escaped by a backslash.
        let mut escaped = false;
        for (i, c) in inner.char_indices() {
            match c {
                '"' if !escaped => return Some((prefix, "\"", &inner[..i], &inner[i + 1..])),
                '\\' => escaped = !escaped,
                _ => escaped = false,
            }
        }
        return None;
    }
    let end = value
        .find(|c: char| c.is_ascii_whitespace() || c == ';' || c == '#')
        .unwrap_or(value.len());
    Some((prefix, "", &value[..end], &value[end..]))
}

/// `/etc/default/grub` for the emergency copy: [`remap`] on `GRUB_CMDLINE_LINUX_DEFAULT`
/// (without adding `noresume` there) and on `GRUB_CMDLINE_LINUX`, which gets
/// `noresume` so recovery-mode entries have it too; a missing `GRUB_CMDLINE_LINUX`
/// line is appended.
pub fn remap_default_grub(text: &str, root: Option<&str>) -> String {
    let (text, _) = edit_shell_var(text, "GRUB_CMDLINE_LINUX_DEFAULT", |c| {
        if let Some(root) = root {
            if c.has("root") {
                c.set("root", root);
            }
        }
        c.remove("resume");
        c.remove("resume_offset");
    });
    let (mut text, n) = edit_shell_var(&text, "GRUB_CMDLINE_LINUX", |c| remap(c, root));
    if n == 0 {
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        text.push_str("GRUB_CMDLINE_LINUX=\"noresume\"\n");
    }
    text
}

/// initramfs-tools' `conf.d/resume` with every `RESUME=` set to `none` (comments and
/// other settings kept); `RESUME=none` appended when there was none.
pub fn resume_none(text: Option<&str>) -> String {
    let text = text.unwrap_or("");
    let mut out = String::with_capacity(text.len() + 12);
    let mut found = false;
    for line in text.split_inclusive('\n') {
        if let Some((prefix, quote, _, rest)) = shell_assignment(line, "RESUME") {
            found = true;
            out.push_str(&format!("{prefix}{quote}none{quote}{rest}"));
        } else {
            out.push_str(line);
        }
    }
    if !found {
        if !out.is_empty() && !out.ends_with('\n') {
            out.push('\n');
        }
        out.push_str("RESUME=none\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(c: &Cmdline) -> Vec<(String, Option<String>)> {
        c.args()
            .map(|a| (a.key.to_string(), a.value.map(str::to_string)))
            .collect()
    }

    #[test]
    fn splits_like_the_kernel() {
        let c = Cmdline::parse(
            r#"  root=UUID=ab ro quiet "dyndbg=file x.c +p" foo="bar baz"  -- single  "#,
        );
        assert_eq!(
            keys(&c),
            vec![
                ("root".into(), Some("UUID=ab".into())),
                ("ro".into(), None),
                ("quiet".into(), None),
                ("dyndbg".into(), Some("file x.c +p".into())),
                ("foo".into(), Some("bar baz".into())),
                ("--".into(), None),
                ("single".into(), None),
            ]
        );
    }

    #[test]
    fn the_last_repeated_key_wins_and_init_args_do_not_count() {
        let c = Cmdline::parse(
            "root=/dev/sda1 console=tty0 console=ttyS0,115200 root=/dev/sda2 -- root=x",
        );
        assert_eq!(c.get("root"), Some("/dev/sda2"));
        assert_eq!(c.get("console"), Some("ttyS0,115200"));
        assert_eq!(c.get("ro"), None);
    }

    #[test]
    fn set_replaces_in_place_and_quotes_blanks() {
        let mut c = Cmdline::parse("BOOT_IMAGE=/vmlinuz root=/dev/sda1 ro  quiet");
        c.set("root", "UUID=1234");
        assert_eq!(c.render(), "BOOT_IMAGE=/vmlinuz root=UUID=1234 ro  quiet");
        c.set("label", "a b");
        assert_eq!(
            c.render(),
            "BOOT_IMAGE=/vmlinuz root=UUID=1234 ro  quiet label=\"a b\""
        );
    }

    #[test]
    fn remove_takes_every_occurrence_and_its_blanks() {
        let mut c = Cmdline::parse("resume=UUID=1 root=/dev/sda1 resume=/dev/sda5  quiet resume");
        assert_eq!(c.remove("resume"), 3);
        assert_eq!(c.render(), "root=/dev/sda1  quiet");
        let mut only = Cmdline::parse("resume=x");
        only.remove("resume");
        assert_eq!(only.render(), "");
    }

    #[test]
    fn remap_sets_root_drops_resume_and_adds_noresume_before_init_args() {
        let mut c = Cmdline::parse(
            "root=/dev/mapper/vg-root ro resume=UUID=5 resume_offset=34816 quiet -- single",
        );
        remap(&mut c, Some("UUID=feed"));
        assert_eq!(c.render(), "root=UUID=feed ro quiet noresume -- single");
        // Idempotent.
        let again = c.clone();
        remap(&mut c, Some("UUID=feed"));
        assert_eq!(c, again);
        let mut empty = Cmdline::parse("");
        remap(&mut empty, Some("UUID=feed"));
        assert_eq!(empty.render(), "noresume");
        let mut init_only = Cmdline::parse("-- single");
        remap(&mut init_only, None);
        assert_eq!(init_only.render(), "noresume -- single");
    }

    const GRUB_CFG: &str = "\
menuentry 'Debian GNU/Linux' --class debian $menuentry_id_option 'gnulinux-simple-1' {
\tload_video
\tinsmod gzio
\tlinux\t/vmlinuz-6.1.0-18-amd64 root=/dev/mapper/debian--vg-root ro  quiet resume=UUID=5
\tinitrd\t/initrd.img-6.1.0-18-amd64
}
submenu 'Advanced options for Debian GNU/Linux' $menuentry_id_option 'gnulinux-advanced-1' {
\tmenuentry 'Debian GNU/Linux, with Linux 6.1.0-18-amd64 (recovery mode)' {
\t\tlinux\t/vmlinuz-6.1.0-18-amd64 root=/dev/mapper/debian--vg-root ro single
\t}
}
";

    #[test]
    fn grub_cfg_linux_lines_are_edited_and_nothing_else() {
        let (out, n) = edit_grub_cfg(GRUB_CFG, None, |c| remap(c, Some("UUID=e1")));
        assert_eq!(n, 2);
        let expected = GRUB_CFG
            .replace(
                "root=/dev/mapper/debian--vg-root ro  quiet resume=UUID=5",
                "root=UUID=e1 ro  quiet noresume",
            )
            .replace(
                "root=/dev/mapper/debian--vg-root ro single",
                "root=UUID=e1 ro single noresume",
            );
        assert_eq!(out, expected);
    }

    #[test]
    fn grub_cfg_edit_can_target_one_entry() {
        let title = "Debian GNU/Linux, with Linux 6.1.0-18-amd64 (recovery mode)";
        let (out, n) = edit_grub_cfg(GRUB_CFG, Some(title), |c| c.add_flag("noresume"));
        assert_eq!(n, 1);
        assert_eq!(out, GRUB_CFG.replace("ro single", "ro single noresume"));
    }

    #[test]
    fn default_grub_keeps_quoting_and_expansions() {
        let text = "\
GRUB_DEFAULT=0
GRUB_CMDLINE_LINUX_DEFAULT=\"quiet resume=UUID=5\"
GRUB_CMDLINE_LINUX=''
# GRUB_CMDLINE_LINUX=\"resume=commented\"
export GRUB_CMDLINE_LINUX=\"$GRUB_CMDLINE_LINUX console=ttyS0\" # serial
";
        let out = remap_default_grub(text, Some("UUID=e1"));
        assert_eq!(
            out,
            "\
GRUB_DEFAULT=0
GRUB_CMDLINE_LINUX_DEFAULT=\"quiet\"
GRUB_CMDLINE_LINUX='noresume'
# GRUB_CMDLINE_LINUX=\"resume=commented\"
export GRUB_CMDLINE_LINUX=\"$GRUB_CMDLINE_LINUX console=ttyS0 noresume\" # serial
"
        );
    }

    #[test]
    fn default_grub_without_the_variable_gets_it_and_bare_values_get_quotes() {
        assert_eq!(
            remap_default_grub("GRUB_TIMEOUT=5", None),
            "GRUB_TIMEOUT=5\nGRUB_CMDLINE_LINUX=\"noresume\"\n"
        );
        assert_eq!(
            remap_default_grub("GRUB_CMDLINE_LINUX=quiet\n", None),
            "GRUB_CMDLINE_LINUX=\"quiet noresume\"\n"
        );
    }

    #[test]
    fn initramfs_resume_becomes_none() {
        assert_eq!(resume_none(Some("RESUME=UUID=5 \n")), "RESUME=none \n");
        assert_eq!(
            resume_none(Some("# from the installer\nRESUME=/dev/mapper/vg-swap_1")),
            "# from the installer\nRESUME=none"
        );
        assert_eq!(resume_none(None), "RESUME=none\n");
        assert_eq!(
            resume_none(Some("RESUME=\"UUID=5\"\n")),
            "RESUME=\"none\"\n"
        );
    }
}
