//! The only place with `unsafe`: thin wrappers over system calls that neither std
//! nor nix offers. Each wrapper takes safe types and says why its call is sound.

use std::io;
use std::os::fd::{AsFd, AsRawFd};

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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

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
}
