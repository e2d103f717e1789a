//! The kernel's device events (uevents) as they come, on a netlink socket: how the
//! driver loader learns of the devices a module has just brought (virtio_pci's
//! disks, a SCSI host's disks) without reading `/sys` again after every module.
//! Each read of `/sys` costs about 55 ms under emulation, and the loader used to do
//! it ten times before the first screen.
//!
//! Does not own: the first reading of `/sys` (`modload::collect_modaliases`; a
//! device there before the socket was opened sends no event), or matching aliases to
//! modules (`initramfs::modules`).

use std::os::fd::{AsRawFd, OwnedFd};

use anyhow::{Context, Result};
use nix::errno::Errno;
use nix::sys::socket::{
    AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, bind, recv, setsockopt,
    socket, sockopt,
};

/// The multicast group the kernel sends its uevents to (udev listens to group 2, for
/// the events it has processed).
const KERNEL_GROUP: u32 = 1;
/// Larger than any uevent (the kernel caps them at 2 KiB of environment).
const MESSAGE_MAX: usize = 8192;
/// Socket buffer asked for; when the kernel still drops events, [`Uevents::drain`]
/// says so and the caller reads `/sys` again.
const RECEIVE_BUFFER: usize = 1 << 20;

/// A listening socket; events sent after [`Uevents::open`] wait in it.
pub struct Uevents {
    fd: OwnedFd,
}

/// What [`Uevents::drain`] found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Drained {
    /// The `MODALIAS` of every device added, in order.
    pub aliases: Vec<String>,
    /// Events were dropped (the buffer overflowed) or the socket failed: read `/sys`.
    pub lost: bool,
}

impl Uevents {
    pub fn open() -> Result<Uevents> {
        let fd = socket(
            AddressFamily::Netlink,
            SockType::Datagram,
            SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
            SockProtocol::NetlinkKObjectUEvent,
        )
        .context("opening a netlink socket for kernel uevents")?;
        // A smaller buffer only means a fallback to reading /sys: not worth failing.
        let _ = setsockopt(&fd, sockopt::RcvBuf, &RECEIVE_BUFFER);
        bind(fd.as_raw_fd(), &NetlinkAddr::new(0, KERNEL_GROUP))
            .context("joining the kernel's uevent group")?;
        Ok(Uevents { fd })
    }

    /// Every event waiting, without blocking.
    pub fn drain(&self) -> Drained {
        let mut out = Drained::default();
        let mut buf = vec![0u8; MESSAGE_MAX];
        loop {
            match recv(self.fd.as_raw_fd(), &mut buf, MsgFlags::empty()) {
                Ok(n) => out.aliases.extend(added_alias(&buf[..n])),
                Err(Errno::EAGAIN) => return out,
                Err(Errno::EINTR) => continue,
                // ENOBUFS: the kernel dropped events for us.
                Err(_) => {
                    out.lost = true;
                    return out;
                }
            }
        }
    }
}

/// The `MODALIAS` of a kernel uevent that adds a device: `add@DEVPATH`, then
/// `KEY=VALUE` fields, each ending in a NUL byte. Other actions (`bind`, `change`,
/// `remove`), devices without an alias, and udev's own messages (`libudev` header)
/// give none.
pub fn added_alias(message: &[u8]) -> Option<String> {
    let mut fields = message.split(|&b| b == 0).map(String::from_utf8_lossy);
    let header = fields.next()?;
    if !header.starts_with("add@") {
        return None;
    }
    fields.find_map(|f| {
        f.strip_prefix("MODALIAS=")
            .filter(|a| !a.is_empty())
            .map(str::to_string)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(fields: &[&str]) -> Vec<u8> {
        fields
            .iter()
            .flat_map(|f| [f.as_bytes(), b"\0"].concat())
            .collect()
    }

    #[test]
    fn an_added_device_gives_its_alias() {
        let m = message(&[
            "add@/devices/pci0000:00/0000:00:04.0/virtio1",
            "ACTION=add",
            "DEVPATH=/devices/pci0000:00/0000:00:04.0/virtio1",
            "SUBSYSTEM=virtio",
            "MODALIAS=virtio:d00000002v00001AF4",
            "SEQNUM=1234",
        ]);
        assert_eq!(
            added_alias(&m).as_deref(),
            Some("virtio:d00000002v00001AF4")
        );
    }

    #[test]
    fn other_actions_and_devices_without_an_alias_give_none() {
        let bind = message(&[
            "bind@/devices/pci0000:00/0000:00:04.0/virtio1",
            "ACTION=bind",
            "MODALIAS=virtio:d00000002v00001AF4",
        ]);
        assert_eq!(added_alias(&bind), None);
        let block = message(&[
            "add@/devices/pci0000:00/0000:00:04.0/virtio1/block/vda",
            "ACTION=add",
            "SUBSYSTEM=block",
            "DEVNAME=vda",
        ]);
        assert_eq!(added_alias(&block), None);
        assert_eq!(added_alias(b"libudev\0\xfe\xed\xca\xfe"), None);
        assert_eq!(added_alias(b""), None);
    }
}
