//! The QEMU harness for VM tests and demos: machines with SeaBIOS or OVMF,
//! several disks in a chosen boot order (qcow2 overlays, `blkdebug` read
//! errors), direct kernel boot, the serial console read through a `vt100`
//! screen, QMP for power cuts, resets and disk removal, and every wait
//! bounded. It knows nothing of understudy or of any scenario (`vmtest.rs`).
//!
//! ```text
//! let accel = qemu::accel::choose(&kernel, &target.join("vm"));
//! let mut spec = MachineSpec::new("boot", &run_dir, Firmware::SeaBios, accel);
//! spec.disks.push(DiskSpec::virtio("primary", &image, ImageFormat::Qcow2, "US-PRIMARY"));
//! let mut vm = Machine::start(&spec)?;
//! vm.wait_for_text("login:", Duration::from_secs(60))?;
//! vm.power_cut()?;
//! ```

pub mod accel;
mod disk;
mod machine;
pub mod pvh;
mod qmp;
mod serial;

pub use accel::Accel;
pub use disk::{DiskBus, DiskSpec, ImageFormat, create_blank, create_overlay};
pub use machine::{DirectBoot, Firmware, Machine, MachineSpec};
pub use serial::Key;
