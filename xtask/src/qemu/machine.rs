//! One QEMU machine: its command line (built as a pure function of a
//! [`MachineSpec`]), starting it paused so no early console output is lost,
//! the console and QMP sockets, power and disk operations, bounded waits for
//! it to stop, and killing it when dropped so no QEMU outlives its test.
//! What the guest should do is the scenario's business (`vmtest.rs`).

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use super::accel::Accel;
use super::disk::{DiskBus, DiskSpec};
use super::qmp::Qmp;
use super::serial::{Console, Key, Pattern};
use crate::run::Cmd;

/// Where Debian's `ovmf` package puts the firmware.
const OVMF_DIR: &str = "/usr/share/OVMF";

/// (code, variables template) pairs, preferred first: Debian 12 ships the
/// 4 MiB flash layout and keeps the 2 MiB one for old VMs.
const OVMF_FILES: [(&str, &str); 2] = [
    ("OVMF_CODE_4M.fd", "OVMF_VARS_4M.fd"),
    ("OVMF_CODE.fd", "OVMF_VARS.fd"),
];

/// How long QEMU may take to create its sockets, and to answer QMP.
const STARTUP: Duration = Duration::from_secs(10);
const QMP_REPLY: Duration = Duration::from_secs(10);
/// How long QEMU may take to exit once told to quit.
const EXIT_AFTER_QUIT: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Firmware {
    SeaBios,
    /// OVMF from `/usr/share/OVMF`: code read-only, a fresh writable copy of
    /// the variables template per start.
    Ovmf,
}

impl Firmware {
    pub fn name(self) -> &'static str {
        match self {
            Firmware::SeaBios => "seabios",
            Firmware::Ovmf => "ovmf",
        }
    }
}

/// Linux booted by QEMU itself (`-kernel`), skipping firmware boot order.
#[derive(Clone, Debug)]
pub struct DirectBoot {
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub append: String,
}

/// Everything that decides a machine's QEMU command line.
#[derive(Clone, Debug)]
pub struct MachineSpec {
    /// Names the run in logs (`-name`, the console log's header).
    pub label: String,
    /// Where `console.log`, `qmp.log`, `qemu.log`, `qemu-cmdline.txt` and the OVMF
    /// variables go; logs are appended to, so several boots of one scenario
    /// leave one story.
    pub run_dir: PathBuf,
    pub firmware: Firmware,
    pub accel: Accel,
    pub memory_mib: u32,
    pub cpus: u32,
    /// In bus order: the first virtio disk is `/dev/vda`.
    pub disks: Vec<DiskSpec>,
    pub direct_boot: Option<DirectBoot>,
    /// A guest reboot ends QEMU instead (so `panic=-1` ends the run).
    pub no_reboot: bool,
    /// Tells the firmware there is no screen (`graphics=off`), so SeaBIOS
    /// prints its messages ("Booting from Hard Disk...", "No bootable
    /// device.") on the serial console too. Off by default: GRUB's `console`
    /// terminal would then show up twice next to its `serial` one.
    pub bios_on_serial: bool,
    /// No wait of this machine goes past this instant (the scenario's bound).
    pub deadline: Option<Instant>,
    /// Appended as they are, for what this spec does not model.
    pub extra_args: Vec<String>,
}

impl MachineSpec {
    pub fn new(label: &str, run_dir: &Path, firmware: Firmware, accel: Accel) -> MachineSpec {
        MachineSpec {
            label: label.to_string(),
            run_dir: run_dir.to_path_buf(),
            firmware,
            accel,
            memory_mib: 1024,
            cpus: 1,
            disks: Vec::new(),
            direct_boot: None,
            no_reboot: false,
            bios_on_serial: false,
            deadline: None,
            extra_args: Vec::new(),
        }
    }
}

/// The files a started machine's command line names.
struct RunFiles {
    serial_socket: PathBuf,
    qmp_socket: PathBuf,
    /// OVMF code and this run's copy of the variables.
    ovmf: Option<(PathBuf, PathBuf)>,
}

/// `path` as a QEMU option value: commas doubled, as its option parser wants.
fn opt_path(path: &Path) -> String {
    path.to_string_lossy().replace(',', ",,")
}

/// The QEMU arguments (after the program name) for `spec`, started paused.
fn qemu_args(spec: &MachineSpec, files: &RunFiles) -> Result<Vec<String>> {
    let mut a: Vec<String> = Vec::new();
    let mut push = |items: &[&str]| a.extend(items.iter().map(|s| s.to_string()));
    push(&["-name", &spec.label, "-nodefaults", "-no-user-config"]);
    push(&[
        "-machine",
        if spec.bios_on_serial {
            "pc,graphics=off"
        } else {
            "pc"
        },
    ]);
    push(&[
        "-m",
        &spec.memory_mib.to_string(),
        "-smp",
        &spec.cpus.to_string(),
    ]);
    push(spec.accel.args());
    // The VGA console exists (the guest may use it) but nobody looks at it;
    // no network: the firmware must not spend time on PXE.
    push(&["-display", "none", "-vga", "std", "-nic", "none"]);
    push(&[
        "-chardev",
        &format!(
            "socket,id=ser0,path={},server=on,wait=off",
            opt_path(&files.serial_socket)
        ),
        "-serial",
        "chardev:ser0",
    ]);
    push(&[
        "-chardev",
        &format!(
            "socket,id=qmp0,path={},server=on,wait=off",
            opt_path(&files.qmp_socket)
        ),
        "-mon",
        "chardev=qmp0,mode=control",
    ]);
    match (spec.firmware, &files.ovmf) {
        (Firmware::SeaBios, _) => {}
        (Firmware::Ovmf, Some((code, vars))) => push(&[
            "-drive",
            &format!(
                "if=pflash,format=raw,unit=0,readonly=on,file={}",
                opt_path(code)
            ),
            "-drive",
            &format!("if=pflash,format=raw,unit=1,file={}", opt_path(vars)),
        ]),
        (Firmware::Ovmf, None) => bail!("OVMF chosen but no OVMF files given"),
    }
    if spec.disks.iter().any(|d| d.bus == DiskBus::ScsiHd) {
        push(&["-device", "virtio-scsi-pci,id=scsi0"]);
    }
    for d in &spec.disks {
        push(&[
            "-blockdev",
            &d.blockdev().to_string(),
            "-device",
            &d.device()?,
        ]);
    }
    if let Some(boot) = &spec.direct_boot {
        push(&["-kernel", &boot.kernel.to_string_lossy()]);
        if let Some(initrd) = &boot.initrd {
            push(&["-initrd", &initrd.to_string_lossy()]);
        }
        push(&["-append", &boot.append]);
    }
    if spec.no_reboot {
        push(&["-no-reboot"]);
    }
    // Paused until the console is attached: `wait=off` drops output that
    // comes before a client connects.
    push(&["-S"]);
    a.extend(spec.extra_args.iter().cloned());
    Ok(a)
}

/// The OVMF code and variables template in `dir`, preferred layout first.
fn ovmf_files(dir: &Path) -> Result<(PathBuf, PathBuf)> {
    OVMF_FILES
        .iter()
        .map(|(c, v)| (dir.join(c), dir.join(v)))
        .find(|(c, v)| c.is_file() && v.is_file())
        .with_context(|| {
            format!(
                "finding OVMF in {} (none of {OVMF_FILES:?}; install the `ovmf` package)",
                dir.display()
            )
        })
}

/// How a machine stopped.
#[derive(Debug)]
pub struct Shutdown {
    /// QMP's SHUTDOWN reason (`guest-shutdown`, `guest-reset`,
    /// `host-qmp-quit`, ...), or `None` if QEMU exited without one.
    pub reason: Option<String>,
    pub status: ExitStatus,
    /// Since the machine started.
    pub at: Duration,
}

/// A running QEMU. Dropping it kills QEMU.
pub struct Machine {
    child: Child,
    console: Console,
    qmp: Qmp,
    socket_dir: PathBuf,
    started: Instant,
    deadline: Option<Instant>,
    shutdown_reason: Option<String>,
}

impl Machine {
    /// Starts QEMU paused, attaches the console and QMP, then lets it run.
    pub fn start(spec: &MachineSpec) -> Result<Machine> {
        static STARTS: AtomicU32 = AtomicU32::new(0);
        std::fs::create_dir_all(&spec.run_dir)
            .with_context(|| format!("creating run directory {}", spec.run_dir.display()))?;
        // Unix socket paths are limited to 108 bytes, which a deep checkout
        // would exceed: the sockets live in a short directory of their own.
        let socket_dir = std::env::temp_dir().join(format!(
            "understudy-vm-{}-{}",
            std::process::id(),
            STARTS.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&socket_dir)
            .with_context(|| format!("creating socket directory {}", socket_dir.display()))?;
        let ovmf = match spec.firmware {
            Firmware::SeaBios => None,
            Firmware::Ovmf => {
                let (code, template) = ovmf_files(Path::new(OVMF_DIR))?;
                let vars = spec.run_dir.join("ovmf-vars.fd");
                std::fs::copy(&template, &vars).with_context(|| {
                    format!("copying {} to {}", template.display(), vars.display())
                })?;
                Some((code, vars))
            }
        };
        let files = RunFiles {
            serial_socket: socket_dir.join("serial.sock"),
            qmp_socket: socket_dir.join("qmp.sock"),
            ovmf,
        };
        let cmd = Cmd::new("qemu-system-x86_64").args(qemu_args(spec, &files)?);
        let qemu_log = spec.run_dir.join("qemu.log");
        let console_log = spec.run_dir.join("console.log");
        append(
            &spec.run_dir.join("qemu-cmdline.txt"),
            &format!("{}: {cmd}\n", spec.label),
        )?;
        append(
            &console_log,
            &format!("\n----- understudy vm: {} -----\n", spec.label),
        )?;
        let started = Instant::now();
        let mut child = cmd.spawn_logged(&qemu_log)?;
        // From here on a failure must not leave QEMU running.
        let attached = (|| -> Result<(Console, Qmp)> {
            let deadline = started + STARTUP;
            let serial = connect(&files.serial_socket, &mut child, deadline, &qemu_log)?;
            let console = Console::attach(serial, &console_log)?;
            let qmp = connect(&files.qmp_socket, &mut child, deadline, &qemu_log)?;
            let mut qmp = Qmp::handshake(qmp, &spec.run_dir.join("qmp.log"), QMP_REPLY)?;
            qmp.execute("cont", Value::Null, QMP_REPLY)?;
            Ok((console, qmp))
        })();
        let (console, qmp) = match attached {
            Ok(a) => a,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                let _ = std::fs::remove_dir_all(&socket_dir);
                return Err(e.context(format!("starting QEMU for {}", spec.label)));
            }
        };
        Ok(Machine {
            child,
            console,
            qmp,
            socket_dir,
            started,
            deadline: spec.deadline,
            shutdown_reason: None,
        })
    }

    /// `timeout`, cut short by the spec's deadline.
    fn bound(&self, timeout: Duration) -> Duration {
        match self.deadline {
            Some(d) => timeout.min(d.saturating_duration_since(Instant::now())),
            None => timeout,
        }
    }

    /// Time since QEMU was started.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    pub fn console(&self) -> &Console {
        &self.console
    }

    /// See [`Console::wait_for_text`]; also bounded by the spec's deadline.
    pub fn wait_for_text(&self, pattern: impl Into<Pattern>, timeout: Duration) -> Result<()> {
        self.console.wait_for_text(pattern, self.bound(timeout))
    }

    pub fn screen_text(&self) -> String {
        self.console.screen_text()
    }

    /// See [`Console::clear_screen`].
    pub fn clear_screen(&self) {
        self.console.clear_screen();
    }

    pub fn send_keys(&self, text: &str) -> Result<()> {
        self.console.send_keys(text)
    }

    pub fn send_key(&self, key: Key) -> Result<()> {
        self.console.send_key(key)
    }

    /// The kernel's panic line, if the guest kernel panicked.
    pub fn detect_kernel_panic(&self) -> Option<String> {
        self.console.kernel_panic()
    }

    /// A QMP command, for what the methods here do not cover.
    pub fn qmp(&mut self, command: &str, arguments: Value) -> Result<Value> {
        let timeout = self.bound(QMP_REPLY);
        self.qmp.execute(command, arguments, timeout)
    }

    /// `running`, `paused`, `shutdown`, ... from `query-status`.
    pub fn status(&mut self) -> Result<String> {
        let r = self.qmp("query-status", Value::Null)?;
        Ok(r["status"].as_str().unwrap_or("unknown").to_string())
    }

    /// Pulls the plug: QEMU quits at once, nothing is flushed by the guest.
    /// Returns how long QEMU took to go away.
    pub fn power_cut(&mut self) -> Result<Duration> {
        let asked = Instant::now();
        self.qmp
            .try_execute("quit", Value::Null, self.bound(QMP_REPLY))?;
        match wait_child(&mut self.child, EXIT_AFTER_QUIT)? {
            Some(_) => Ok(asked.elapsed()),
            None => bail!("QEMU still running {EXIT_AFTER_QUIT:?} after `quit`"),
        }
    }

    /// The reset button.
    pub fn reset(&mut self) -> Result<()> {
        self.qmp("system_reset", Value::Null).map(drop)
    }

    /// The power button (an ACPI event the guest may ignore).
    pub fn powerdown(&mut self) -> Result<()> {
        self.qmp("system_powerdown", Value::Null).map(drop)
    }

    /// Unplugs disk `id` and waits until QEMU reports it gone, which on the
    /// `pc` machine needs the guest to acknowledge the ACPI eject request.
    pub fn remove_disk(&mut self, id: &str, timeout: Duration) -> Result<()> {
        self.qmp("device_del", json!({ "id": id }))?;
        let timeout = self.bound(timeout);
        let deleted = self.qmp.wait_event(
            "DEVICE_DELETED",
            |e| e["data"]["device"].as_str() == Some(id),
            timeout,
        )?;
        if deleted.is_none() {
            let why = if self.qmp.is_closed() {
                "QEMU exited first".to_string()
            } else {
                format!("not within {timeout:.1?}; did the guest handle the ACPI eject?")
            };
            bail!(
                "disk {id}: no DEVICE_DELETED ({why})\nthe screen:\n{}",
                self.console.framed_screen()
            );
        }
        Ok(())
    }

    /// Waits until QEMU exits (after a guest power-off, or a reboot with
    /// `no_reboot`), noting the SHUTDOWN event's reason. Fails early on a
    /// kernel panic.
    pub fn wait_shutdown(&mut self, timeout: Duration) -> Result<Shutdown> {
        let deadline = Instant::now() + self.bound(timeout);
        loop {
            self.note_shutdown();
            if let Some(status) = self
                .child
                .try_wait()
                .context("checking whether QEMU exited")?
            {
                // Events QEMU sent just before exiting are still in the socket.
                let _ = self.qmp.pump(Duration::from_millis(200));
                self.note_shutdown();
                return Ok(Shutdown {
                    reason: self.shutdown_reason.clone(),
                    status,
                    at: self.started.elapsed(),
                });
            }
            if let Some(line) = self.console.kernel_panic() {
                bail!(
                    "the kernel panicked: {line}\nconsole log: {}",
                    self.console.log_path().display()
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "QEMU did not exit within {timeout:.1?}\nthe screen:\n{}\nconsole log: {}",
                    self.console.framed_screen(),
                    self.console.log_path().display()
                );
            }
            if self.qmp.is_closed() {
                std::thread::sleep(Duration::from_millis(20));
            } else {
                self.qmp.pump(Duration::from_millis(100))?;
            }
        }
    }

    fn note_shutdown(&mut self) {
        if let Some(e) = self.qmp.take_event("SHUTDOWN", |_| true) {
            self.shutdown_reason = e["data"]["reason"].as_str().map(str::to_string);
        }
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.socket_dir);
    }
}

/// Waits up to `timeout` for `child` to exit; `None` if it is still running.
pub(super) fn wait_child(child: &mut Child, timeout: Duration) -> Result<Option<ExitStatus>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().context("checking whether QEMU exited")? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Connects to the socket QEMU is about to create at `path`.
fn connect(
    path: &Path,
    child: &mut Child,
    deadline: Instant,
    qemu_log: &Path,
) -> Result<UnixStream> {
    loop {
        if let Ok(s) = UnixStream::connect(path) {
            return Ok(s);
        }
        if let Some(status) = child.try_wait().context("checking whether QEMU exited")? {
            bail!(
                "QEMU exited ({status}) before opening {}: {}",
                path.display(),
                tail(qemu_log, 10)
            );
        }
        if Instant::now() >= deadline {
            bail!(
                "QEMU did not open {} within {STARTUP:?}: {}",
                path.display(),
                tail(qemu_log, 10)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The last `n` lines of a log, or a note that there are none.
fn tail(log: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    if lines.is_empty() {
        return format!("{} is empty", log.display());
    }
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn append(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .with_context(|| format!("appending to {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::qemu::ImageFormat;

    fn files() -> RunFiles {
        RunFiles {
            serial_socket: "/s/serial.sock".into(),
            qmp_socket: "/s/qmp.sock".into(),
            ovmf: None,
        }
    }

    /// The arguments after `flag`, each time it occurs.
    fn values<'a>(args: &'a [String], flag: &str) -> Vec<&'a str> {
        args.windows(2)
            .filter(|w| w[0] == flag)
            .map(|w| w[1].as_str())
            .collect()
    }

    #[test]
    fn a_direct_boot_with_two_disks() {
        let mut spec = MachineSpec::new("t", Path::new("/r"), Firmware::SeaBios, Accel::Tcg);
        spec.disks
            .push(DiskSpec::virtio("a", "/i/a.img", ImageFormat::Raw, "A1"));
        let mut b = DiskSpec::virtio("b", "/i/b.qcow2", ImageFormat::Qcow2, "B2");
        b.bootindex = Some(2);
        spec.disks.push(b);
        spec.direct_boot = Some(DirectBoot {
            kernel: "/k/vmlinuz".into(),
            initrd: Some("/k/initrd".into()),
            append: "console=ttyS0".into(),
        });
        spec.no_reboot = true;
        let args = qemu_args(&spec, &files()).unwrap();
        assert_eq!(values(&args, "-machine"), ["pc"]);
        assert_eq!(values(&args, "-accel"), ["tcg"]);
        assert_eq!(
            values(&args, "-device"),
            [
                "virtio-blk-pci,id=a,drive=a-drive,serial=A1",
                "virtio-blk-pci,id=b,drive=b-drive,serial=B2,bootindex=2"
            ]
        );
        assert_eq!(values(&args, "-kernel"), ["/k/vmlinuz"]);
        assert_eq!(values(&args, "-initrd"), ["/k/initrd"]);
        assert_eq!(values(&args, "-append"), ["console=ttyS0"]);
        assert_eq!(
            values(&args, "-chardev")[0],
            "socket,id=ser0,path=/s/serial.sock,server=on,wait=off"
        );
        assert!(args.contains(&"-no-reboot".to_string()));
        assert!(args.contains(&"-S".to_string()));
        assert!(values(&args, "-drive").is_empty());
    }

    #[test]
    fn ovmf_is_read_only_code_and_writable_vars_and_scsi_gets_a_controller() {
        let mut spec = MachineSpec::new("t", Path::new("/r"), Firmware::Ovmf, Accel::Kvm);
        let mut d = DiskSpec::virtio("s", "/i/a,b.img", ImageFormat::Raw, "S1");
        d.bus = DiskBus::ScsiHd;
        spec.disks.push(d);
        let mut f = files();
        f.ovmf = Some(("/o/CODE.fd".into(), "/r/vars,1.fd".into()));
        let args = qemu_args(&spec, &f).unwrap();
        assert_eq!(
            values(&args, "-drive"),
            [
                "if=pflash,format=raw,unit=0,readonly=on,file=/o/CODE.fd",
                "if=pflash,format=raw,unit=1,file=/r/vars,,1.fd"
            ]
        );
        assert_eq!(values(&args, "-accel"), ["kvm"]);
        assert_eq!(values(&args, "-cpu"), ["host"]);
        spec.bios_on_serial = true;
        let args = qemu_args(&spec, &f).unwrap();
        assert_eq!(values(&args, "-machine"), ["pc,graphics=off"]);
        assert_eq!(values(&args, "-device")[0], "virtio-scsi-pci,id=scsi0");
        // JSON needs no comma escaping.
        assert!(values(&args, "-blockdev")[0].contains("\"/i/a,b.img\""));
        assert!(qemu_args(&spec, &files()).is_err());
    }

    #[test]
    fn ovmf_prefers_the_4m_layout() {
        let dir = std::env::temp_dir().join(format!("ovmf-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for f in ["OVMF_CODE.fd", "OVMF_VARS.fd"] {
            std::fs::write(dir.join(f), b"").unwrap();
        }
        assert_eq!(ovmf_files(&dir).unwrap().0, dir.join("OVMF_CODE.fd"));
        for f in ["OVMF_CODE_4M.fd", "OVMF_VARS_4M.fd"] {
            std::fs::write(dir.join(f), b"").unwrap();
        }
        assert_eq!(ovmf_files(&dir).unwrap().1, dir.join("OVMF_VARS_4M.fd"));
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(ovmf_files(&dir).is_err());
    }
}
