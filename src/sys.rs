//! The only place with `unsafe`: thin wrappers over system calls that neither std
//! nor nix offers. Each wrapper takes safe types and says why its call is sound.

use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::sync::atomic::{AtomicU64, Ordering};

use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};

/// Start writeback of all dirty pages of `fd` without waiting for it
/// (`sync_file_range(fd, 0, 0, SYNC_FILE_RANGE_WRITE)`), so the disk works while the
/// caller goes on. It promises nothing about durability; that is a later sync's job.
pub fn start_writeback(fd: impl AsFd) -> io::Result<()> {
    let raw = fd.as_fd().as_raw_fd();
    // SAFETY: `raw` comes from a live `BorrowedFd`, so it is an open descriptor for
    // the duration of the call; the call takes no pointers and only reads its
    // integer arguments.
    let rc = unsafe { libc::sync_file_range(raw, 0, 0, libc::SYNC_FILE_RANGE_WRITE) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// A terminal's window size as `TIOCGWINSZ` reports it: (columns, rows). A serial
/// line reports 0x0 (nothing tells the kernel the far end's size).
pub fn window_size(fd: impl AsFd) -> io::Result<(u16, u16)> {
    let raw = fd.as_fd().as_raw_fd();
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: `raw` is open for the call (it comes from a live `BorrowedFd`), and
    // TIOCGWINSZ writes exactly one `struct winsize` through the pointer, which
    // points at a local of that type that outlives the call.
    let rc = unsafe { libc::ioctl(raw, libc::TIOCGWINSZ, &mut ws) };
    if rc == 0 {
        Ok((ws.ws_col, ws.ws_row))
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Signals caught by [`catch_as_flags`] and not yet taken, one bit per number.
static PENDING_SIGNALS: AtomicU64 = AtomicU64::new(0);

/// The handler: one atomic OR, which is async-signal-safe (no allocation, no lock).
extern "C" fn raise_flag(sig: libc::c_int) {
    if let Ok(bit) = u32::try_from(sig)
        && bit < 64
    {
        PENDING_SIGNALS.fetch_or(1 << bit, Ordering::SeqCst);
    }
}

/// Makes each of `signals` only raise a flag that [`take_signals`] reads later, so
/// the work happens outside the handler. `SA_RESTART`: reads and waits in progress go
/// on rather than fail with `EINTR` (poll still returns early, which wakes the loop).
pub fn catch_as_flags(signals: &[Signal]) -> nix::Result<()> {
    let action = SigAction::new(
        SigHandler::Handler(raise_flag),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for &sig in signals {
        // SAFETY: the handler only does an atomic OR on a static, which is
        // async-signal-safe; it touches no state the interrupted code could hold.
        unsafe { sigaction(sig, &action) }?;
    }
    Ok(())
}

/// The signals caught since the last call, clearing them.
pub fn take_signals() -> Vec<Signal> {
    let bits = PENDING_SIGNALS.swap(0, Ordering::SeqCst);
    (1..64)
        .filter(|b| bits & (1u64 << b) != 0)
        .filter_map(|b| Signal::try_from(b).ok())
        .collect()
}

/// Sets an environment variable of this process, for PID 1 at its start (the kernel
/// gives init no `PATH`). Must be called before any thread exists: the environment is
/// not protected against concurrent readers (`getenv` in another thread).
pub fn set_env_before_threads(key: &str, value: &str) {
    // SAFETY: the caller is PID 1 at start-up, before it has spawned any thread, so
    // nothing can read the environment concurrently.
    unsafe { std::env::set_var(key, value) };
}

/// Sets the calling thread's nice value (`setpriority(PRIO_PROCESS, gettid(), nice)`;
/// on Linux the nice value is per thread, and threads it then creates inherit it).
pub fn set_thread_nice(nice: i32) -> io::Result<()> {
    let tid = nix::unistd::gettid().as_raw() as libc::id_t;
    // SAFETY: setpriority takes plain integers and touches no memory of ours. (A raw
    // system call: in the static build, glibc's wrapper came out as a null pointer.)
    let rc = unsafe {
        libc::syscall(
            libc::SYS_setpriority,
            libc::PRIO_PROCESS as libc::c_long,
            tid as libc::c_long,
            nice as libc::c_long,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Restarts the machine at once, without syncing: what a power cut does to the page
/// cache, for the failpoints of the power-cut tests. Returns only if the kernel refused
/// (not root, or not allowed in this namespace).
pub fn reboot_without_sync() -> io::Error {
    // `reboot(2)` with LINUX_REBOOT_CMD_RESTART does not sync (only the `reboot`
    // program does, before calling it); nix's wrapper is safe and adds nothing.
    match nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_AUTOBOOT) {
        Ok(never) => match never {},
        Err(e) => io::Error::from(e),
    }
}

/// Loads the kernel and initrd open on `kernel` and `initrd` with `cmdline` for a
/// later `reboot(RB_KEXEC)` (`kexec_file_load(2)`: the kernel reads and checks the
/// files itself, so no image is parsed here).
pub fn kexec_file_load(
    kernel: impl AsFd,
    initrd: impl AsFd,
    cmdline: &std::ffi::CStr,
) -> io::Result<()> {
    let k = kernel.as_fd().as_raw_fd();
    let i = initrd.as_fd().as_raw_fd();
    let bytes = cmdline.to_bytes_with_nul();
    let flags: libc::c_ulong = 0;
    // SAFETY: both descriptors come from live `BorrowedFd`s, so they stay open for the
    // call; the command line pointer and length (which counts the NUL, as the system
    // call requires) come from one `CStr` borrowed for the call, and the kernel only
    // reads that many bytes through it.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_kexec_file_load,
            libc::c_long::from(k),
            libc::c_long::from(i),
            bytes.len(),
            bytes.as_ptr(),
            flags,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// Field 19 of `/proc/thread-self/stat`: the calling thread's nice value.
    fn own_nice() -> i32 {
        let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
        let after_name = &stat[stat.rfind(')').unwrap() + 2..];
        after_name.split(' ').nth(16).unwrap().parse().unwrap()
    }

    #[test]
    fn nice_applies_to_the_calling_thread_only() {
        let before = own_nice();
        let target = (before + 3).min(19);
        let (in_thread, child_of_it) = std::thread::spawn(move || {
            set_thread_nice(target).unwrap();
            let child = std::thread::spawn(own_nice).join().unwrap();
            (own_nice(), child)
        })
        .join()
        .unwrap();
        assert_eq!(in_thread, target);
        assert_eq!(child_of_it, target, "threads it creates inherit it");
        assert_eq!(own_nice(), before, "the other threads keep theirs");
    }

    #[test]
    fn writeback_accepts_a_regular_file_and_rejects_a_pipe() {
        let dir = std::env::temp_dir().join(format!("understudy-sys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("f");
        let mut f = std::fs::File::create(&path).unwrap();
        f.write_all(&[1u8; 100_000]).unwrap();
        start_writeback(&f).unwrap();
        let (r, _w) = std::io::pipe().unwrap();
        // sync_file_range on a pipe is ESPIPE: proof the call really reaches the kernel.
        assert_eq!(
            start_writeback(&r).unwrap_err().raw_os_error(),
            Some(libc::ESPIPE)
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn kexec_refuses_what_is_not_a_kernel_file() {
        // A pipe is no kernel image: the call reaches the kernel, which refuses it
        // (EPERM without CAP_SYS_BOOT, EBADF/EINVAL for the pipe, ENOSYS without
        // kexec). Nothing is loaded either way, so the host is untouched.
        let (r, _w) = std::io::pipe().unwrap();
        let (r2, _w2) = std::io::pipe().unwrap();
        let err = kexec_file_load(&r, &r2, c"console=ttyS0").unwrap_err();
        assert!(
            [
                libc::EPERM,
                libc::EBADF,
                libc::EINVAL,
                libc::ENOSYS,
                libc::ESPIPE,
                libc::ENOEXEC
            ]
            .contains(&err.raw_os_error().unwrap()),
            "{err}"
        );
    }

    #[test]
    fn a_pipe_has_no_window_size() {
        let (r, _w) = std::io::pipe().unwrap();
        assert_eq!(
            window_size(&r).unwrap_err().raw_os_error(),
            Some(libc::ENOTTY)
        );
    }

    #[test]
    fn a_caught_signal_is_a_flag_taken_once() {
        catch_as_flags(&[Signal::SIGUSR2]).unwrap();
        nix::sys::signal::raise(Signal::SIGUSR2).unwrap();
        assert!(take_signals().contains(&Signal::SIGUSR2));
        assert!(!take_signals().contains(&Signal::SIGUSR2));
    }
}
