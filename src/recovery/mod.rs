//! What the recovery console knows about the machine and decides from it: the
//! primary's state and why, the emergency copy, the images, the restore targets
//! ([`situation`], pure); the emergency copy's boot entry as GRUB has it
//! ([`emergency`], pure); and gathering those facts from the disks ([`gather`], the
//! only part here that touches the world).
//!
//! Does not own: the inventory and identity matching (`disk`), the environment block
//! format (`boot`), the image format and its reading (`image`; [`images`] only
//! projects what the screens show), the screens (`console`), restoring (`restore`).

pub mod emergency;
pub mod gather;
pub mod images;
pub mod situation;
