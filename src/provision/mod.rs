//! `understudy provision`: lay out the secondary disk (docs/provision.md). Gathers
//! the inputs (inventory, the primary's layout, the identities recorded before),
//! asks [`plan::plan`] what to do, shows it, wants the serial number typed, and has
//! [`execute::execute`] do it.
//!
//! Does not own: the decisions (`plan`), the writing (`execute`), the formats (`boot`,
//! `partition`, `layout`, `init::recorded`).

pub mod execute;
pub mod plan;

use std::io::{self, BufRead, Write};
use std::path::PathBuf;

use anyhow::{Context, Result, bail};

pub use execute::{RecoverySource, SystemPaths};
pub use plan::{Mode, ProvisionPlan, Refusal, Request, Role};

use crate::disk::{self, Recorded};

/// The command's options.
#[derive(Clone, Debug, Default)]
pub struct Options {
    pub request: Request,
    /// No confirmation.
    pub yes: bool,
    /// Show the plan, change nothing.
    pub dry_run: bool,
    pub json: bool,
    /// The recovery kernel [default: /boot/vmlinuz-$(uname -r)].
    pub kernel: Option<PathBuf>,
    /// Kernel release of the recovery initramfs [default: uname -r].
    pub kernel_version: Option<String>,
    /// Module directory [default: /lib/modules/VERSION].
    pub modules: Option<PathBuf>,
    /// A ready recovery initramfs to install instead of building one.
    pub initrd: Option<PathBuf>,
    /// Where /etc/understudy, /etc/grub.d and /boot/grub are [default: the system's].
    pub system: Option<SystemPaths>,
}

/// Why the command stopped without changing anything: the plan refused, or the
/// confirmation did not match.
#[derive(Debug, thiserror::Error)]
pub enum Stopped {
    #[error("refusing to provision: {0}")]
    Refused(Refusal),
    #[error("the typed text does not match {0}: nothing was changed")]
    NotConfirmed(String),
}

fn uname_r() -> Result<String> {
    let u = nix::sys::utsname::uname().context("reading the kernel release (uname)")?;
    Ok(u.release().to_string_lossy().into_owned())
}

/// The identities recorded by an earlier run, if the file is there and reads.
fn recorded(sys: &SystemPaths) -> Result<Option<Recorded>> {
    let path = sys.config_dir.join("disks.json");
    match std::fs::read_to_string(&path) {
        Ok(text) => crate::init::recorded::parse(&text)
            .with_context(|| format!("reading {}", path.display()))
            .map(Some),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// What the technician must type: the secondary's serial number, or its name when it
/// has none.
fn confirmation_word(plan: &ProvisionPlan) -> String {
    plan.secondary
        .serial
        .clone()
        .unwrap_or_else(|| plan.secondary.name.clone())
}

/// Runs the whole command: plan, show, confirm, execute.
pub fn provision(opts: &Options) -> Result<()> {
    let sys = opts.system.clone().unwrap_or_else(SystemPaths::system);
    let inv = disk::inventory(&disk::Sources::system());
    let refused = |r: Refusal| -> Result<()> {
        if opts.json {
            println!("{}", serde_json::to_string(&r)?);
        }
        Err(Stopped::Refused(r).into())
    };
    // Refusals that need no layout come before capturing it (a capture can fail).
    if plan::find_disk(&inv, &opts.request.secondary).is_none() {
        return refused(Refusal::NoSuchDisk {
            disk: opts.request.secondary.clone(),
        });
    }
    let primary = match plan::primary_disk(&inv, &opts.request) {
        Ok(d) => d.path.clone(),
        Err(r) => return refused(r),
    };
    let layout = crate::layout::capture_live(&primary)
        .with_context(|| format!("capturing the layout of the primary {}", primary.display()))?;
    let rec = recorded(&sys)?;
    let mut new_uuid = uuid::Uuid::new_v4;
    let plan = match plan::plan(&inv, &opts.request, &layout, rec.as_ref(), &mut new_uuid) {
        Ok(p) => p,
        Err(r) => return refused(r),
    };
    if opts.json {
        println!("{}", serde_json::to_string(&plan)?);
    } else {
        print!("{plan}");
    }
    let version = match &opts.kernel_version {
        Some(v) => v.clone(),
        None => uname_r()?,
    };
    let src = RecoverySource {
        kernel: opts
            .kernel
            .clone()
            .unwrap_or_else(|| PathBuf::from(format!("/boot/vmlinuz-{version}"))),
        initrd: opts.initrd.clone(),
        modules: opts
            .modules
            .clone()
            .unwrap_or_else(|| PathBuf::from(format!("/lib/modules/{version}"))),
        kernel_version: version,
        init: std::env::current_exe().context("finding the running binary")?,
    };
    let missing = execute::missing(&src);
    if opts.dry_run {
        for m in &missing {
            eprintln!("provision: this system lacks {m}");
        }
        return Ok(());
    }
    if !missing.is_empty() {
        bail!(
            "nothing was changed: this system lacks {}",
            missing.join("; ")
        );
    }
    if !opts.yes {
        let word = confirmation_word(&plan);
        let what = match plan.mode {
            Mode::Fresh => format!("EVERYTHING on {} will be erased", plan.secondary),
            Mode::Update => format!(
                "GRUB, the recovery system and the configuration on {} will be rewritten (images kept)",
                plan.secondary
            ),
        };
        eprint!("{what}.\nType {word} to go ahead: ");
        io::stderr().flush().ok();
        let mut line = String::new();
        io::stdin()
            .lock()
            .read_line(&mut line)
            .context("reading the confirmation")?;
        if line.trim() != word {
            return Err(Stopped::NotConfirmed(word).into());
        }
    }
    let mut log = |s: &str| eprintln!("provision: {s}");
    let result = execute::execute(&plan, &src, &sys, &mut log);
    if let Err(e) = &result {
        eprintln!(
            "provision: FAILED on {}: {e:#}\nprovision: nothing after this step was done; \
             run `understudy provision` again once the cause is fixed",
            plan.secondary.path.display()
        );
    }
    result?;
    eprintln!(
        "provision: {} is the secondary disk ({})",
        plan.secondary.path.display(),
        match plan.mode {
            Mode::Fresh => "laid out afresh",
            Mode::Update => "updated, images kept",
        }
    );
    Ok(())
}
